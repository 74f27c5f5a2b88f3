"""twotower: two language models side by side through one head, and what each learns.

A teaching and replication package for He & Toyoizumi (2022), "Spontaneous Emerging
Preference in Two-tower Language Model". The book in ``book/`` introduces every piece;
each docstring names the chapter that does.

The folders are the layers, lowest first; a module imports only its own layer or lower
ones (``tests/test_layers.py`` keeps it so):

* foundations, here: :mod:`twotower.config`, :mod:`twotower.errors`,
  :mod:`twotower.atomic`;
* :mod:`twotower.data`: corpora, tokenizers, windows, objectives;
* :mod:`twotower.models`: the layers, the towers and the language models;
* :mod:`twotower.training`: the training loop, readouts, checkpoints, run folders;
* :mod:`twotower.analysis`: the instruments and their statistics;
* :mod:`twotower.experiments`: the runs the book needs (one run cache) and what they
  show;
* :mod:`twotower.book`: what a chapter needs beside them, and the book's build.

Chapters use one namespace::

    import twotower as tt

    PRESET, device = tt.setup(PRESET, SEED, DEVICE)
    run = tt.ensure(tt.RunSpec(PRESET, "causal", SEED), RUNS_DIR)
    tt.plotting.hist(...)

``tt.<name>`` is one of the names in :data:`NAMES`, and ``tt.<module>`` is any module of
the package by its own name (:data:`MODULES`: ``tt.syntax``, ``tt.plotting``). Both are
imported on first use, so ``import twotower`` itself does not import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: The names a reader calls most, each from the module that defines it.
NAMES = {
    # foundations
    **dict.fromkeys(("get_preset", "PRESETS", "FAMILIES", "CONTROLS", "RunConfig",
                     "ModelConfig", "DataConfig", "TrainConfig"), "twotower.config"),
    "TwotowerError": "twotower.errors",
    # data and models
    "prepare_data": "twotower.data.windows",
    "TokenScores": "twotower.data.scores",
    **dict.fromkeys(("TwoTowerLM", "SingleTowerLM", "TowerLM", "FusedHead",
                     "count_parameters", "matched_single_tower_config"),
                    "twotower.models.tower_lm"),
    # training
    **dict.fromkeys(("train", "evaluate", "WindowBatches"),
                    "twotower.training.trainer"),
    **dict.fromkeys(("load_metrics", "read_results", "is_finished"),
                    "twotower.training.run_folder"),
    # analysis
    **dict.fromkeys(("token_preference", "centred_preference"),
                    "twotower.analysis.preference"),
    "bootstrap_means": "twotower.analysis.stats",
    # experiments: the one run cache
    **dict.fromkeys(("RunSpec", "ensure", "load_run"), "twotower.experiments.store"),
    **dict.fromkeys(("make_objective", "resolve_config"),
                    "twotower.experiments.pipeline"),
    # book: a chapter's set-up and displays
    **dict.fromkeys(("setup", "runs_on_drive"), "twotower.book.setup"),
    "LiveLossPlot": "twotower.book.live",
    **dict.fromkeys(("lookup_token", "token_explorer"), "twotower.book.widgets"),
    "learning_rates": "twotower.book.schedule",
    "format_duration": "twotower.book.durations",
}

#: Every module of the package by its own name (``tt.syntax``), except ``setup``, whose
#: name ``tt.setup`` is the chapter's set-up function.
MODULES = {
    "across_seeds": "twotower.analysis.across_seeds",
    "diagram": "twotower.analysis.diagram",
    "lape": "twotower.analysis.lape",
    "neuron_stats": "twotower.analysis.neuron_stats",
    "planted_split": "twotower.analysis.planted_split",
    "plotting": "twotower.analysis.plotting",
    "alt_text": "twotower.analysis.alt_text",
    "preference": "twotower.analysis.preference",
    "probes": "twotower.analysis.probes",
    "rare_neurons": "twotower.analysis.rare_neurons",
    "regimes": "twotower.analysis.regimes",
    "stability": "twotower.analysis.stability",
    "stats": "twotower.analysis.stats",
    "syntax": "twotower.analysis.syntax",
    "tower_gap": "twotower.analysis.tower_gap",
    "tower_probes": "twotower.analysis.tower_probes",
    "tree_baselines": "twotower.analysis.tree_baselines",
    "tree_metrics": "twotower.analysis.tree_metrics",
    "build": "twotower.book.build",
    "copies": "twotower.book.copies",
    "durations": "twotower.book.durations",
    "execution": "twotower.book.execution",
    "live": "twotower.book.live",
    "manifest": "twotower.book.manifest",
    "notebooks": "twotower.book.notebooks",
    "present": "twotower.book.present",
    "teaching": "twotower.book.teaching",
    "schedule": "twotower.book.schedule",
    "vendor": "twotower.book.vendor",
    "widgets": "twotower.book.widgets",
    "corpus": "twotower.data.corpus",
    "objectives": "twotower.data.objectives",
    "scores": "twotower.data.scores",
    "sources": "twotower.data.sources",
    "synthetic": "twotower.data.synthetic",
    "tokenizer": "twotower.data.tokenizer",
    "ud": "twotower.data.ud",
    "windows": "twotower.data.windows",
    "answers": "twotower.experiments.answers",
    "bench": "twotower.experiments.bench",
    "bilingual": "twotower.experiments.bilingual",
    "controls": "twotower.experiments.controls",
    "gpucheck": "twotower.experiments.gpucheck",
    "history": "twotower.experiments.history",
    "in_context": "twotower.experiments.in_context",
    "learning_curve": "twotower.experiments.learning_curve",
    "pipeline": "twotower.experiments.pipeline",
    "planted": "twotower.experiments.planted",
    "plasticity": "twotower.experiments.plasticity",
    "power": "twotower.experiments.power",
    "replication": "twotower.experiments.replication",
    "scorecard": "twotower.experiments.scorecard",
    "authors_bugs": "twotower.experiments.authors_bugs",
    "store": "twotower.experiments.store",
    "flops": "twotower.models.flops",
    "hooks": "twotower.models.hooks",
    "layers": "twotower.models.layers",
    "tower_lm": "twotower.models.tower_lm",
    "towers": "twotower.models.towers",
    "checkpoint": "twotower.training.checkpoint",
    "distributed": "twotower.training.distributed",
    "faults": "twotower.training.faults",
    "metrics_log": "twotower.training.metrics_log",
    "optim": "twotower.training.optim",
    "readouts": "twotower.training.readouts",
    "run_folder": "twotower.training.run_folder",
    "runtime": "twotower.training.runtime",
    "stacked": "twotower.training.stacked",
    "trainer": "twotower.training.trainer",
}

__all__ = sorted(NAMES) + sorted(MODULES) + ["__version__"]


def __getattr__(name: str):
    """Import ``tt.<name>`` on first use (PEP 562), then keep it."""
    if name in NAMES:
        value = getattr(importlib.import_module(NAMES[name]), name)
    elif name in MODULES:
        value = importlib.import_module(MODULES[name])
    else:
        raise AttributeError(f"module 'twotower' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
