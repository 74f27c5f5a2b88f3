"""A planted experiment small enough for a test: a few ids, a window of 16, towers of
width 16, fp32. The tests that train on the planted language start from it."""

from __future__ import annotations

import dataclasses

from twotower.experiments.planted import PlantedRunConfig
from twotower.data.synthetic import PlantedLanguageConfig


def tiny_planted(joint: dict, readout: dict, **fields) -> PlantedRunConfig:
    """The tiny planted config with ``joint``/``readout`` fields of its two training
    phases and other :class:`PlantedRunConfig` fields replaced."""
    base = PlantedRunConfig()
    return dataclasses.replace(
        base, language=PlantedLanguageConfig(n_local=8, n_topic_words=12, n_topics=3,
                                             topic_core=4, window=16),
        model=dataclasses.replace(base.model, d_model=16, d_ff=32),
        joint=dataclasses.replace(base.joint, precision="fp32", **joint),
        readout=dataclasses.replace(base.readout, precision="fp32", **readout),
        **fields)
