"""twotower: two language models side by side through one head, and what each learns.

A teaching and replication package for He & Toyoizumi (2022), "Spontaneous Emerging
Preference in Two-tower Language Model". The book in ``book/`` introduces every piece;
each docstring names the chapter that does.
"""

from twotower.config import (FAMILIES, PRESETS, DataConfig, ModelConfig, RunConfig, TrainConfig,
                     get_preset)
from twotower.errors import TwotowerError
from twotower.models.tower_lm import (SingleTowerLM, TowerLM, TwoTowerLM, count_parameters,
                    matched_single_tower_config)

__version__ = "0.1.0"

__all__ = [
    "FAMILIES", "PRESETS", "DataConfig", "ModelConfig", "RunConfig", "TrainConfig",
    "get_preset", "TwotowerError", "SingleTowerLM", "TowerLM", "TwoTowerLM",
    "count_parameters", "matched_single_tower_config", "__version__",
]
