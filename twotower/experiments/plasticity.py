"""The tokenizer matters: fertility, and how fast a model takes up a new language.

Introduced in chapter 14 (*The tokenizer matters*), a small version of the universal
tokenizer experiment of Abagyan et al. 2025: a model pretrained on English with a
tokenizer that did or did not see German (or French) continues training on English and
German, and the speed at which its German loss per character falls measures its
plasticity. Data and runs come from :mod:`twotower.experiments.bilingual`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from twotower.experiments.bilingual import (BilingualData, loss_per_character,
                                            objective_for)
from twotower.config import RunConfig
from twotower.errors import require
from twotower.models.tower_lm import TwoTowerLM
from twotower.data.objectives import Objective
from twotower.training.runtime import seed_everything
from twotower.training.trainer import WindowBatches, train


def fertility(tokenizer: Tokenizer, sentences: Sequence[str]) -> tuple[float, float]:
    """Tokens per word, and the share of tokens that are ``[UNK]``.

    Words are what the tokenizer's own normaliser and pre-tokenizer make of the text
    (words and punctuation marks), so a fertility of 1 means no word was split.
    """
    unk = tokenizer.token_to_id("[UNK]")
    words = tokens = unknown = 0
    for sentence, enc in zip(sentences, tokenizer.encode_batch(
            list(sentences), add_special_tokens=False)):
        normal = tokenizer.normalizer.normalize_str(sentence)
        words += len(tokenizer.pre_tokenizer.pre_tokenize_str(normal))
        tokens += len(enc.ids)
        unknown += enc.ids.count(unk)
    require(words > 0, "no words in the sentences")
    return tokens / words, unknown / max(tokens, 1)



class _EvalAt:
    """Training callback: loss per character of every language at chosen steps."""

    def __init__(self, model, data: BilingualData, objective: Objective, steps):
        self.model, self.data, self.objective = model, data, objective
        self.steps = {int(s) for s in steps}
        self.curve: dict[str, list[tuple[int, float]]] = {l: [] for l in data.languages}

    def on_step_end(self, state: dict) -> None:
        if state["step"] in self.steps:
            for k, lang in enumerate(self.data.languages):
                self.curve[lang].append((state["step"], loss_per_character(
                    self.model, self.data.val.of(k), self.objective)))


def adaptation_curve(cfg: RunConfig, data: BilingualData, *, source: str = "en",
                     pretrain_steps: int, adapt_steps: int, n_points: int = 4,
                     progress: bool = False) -> dict:
    """Pretrain on one language, then continue on all of ``data.languages``.

    The second phase trains on the windows of every language (the new one and the
    old one, so the old one is not simply forgotten), as continued pretraining that
    adds a language would. How fast the new language's loss per character falls is
    the model's plasticity; with several tokenizers, it tells which one helps.

    Args:
        cfg: run config (model and optimiser; the steps are replaced).
        data: windows of every language, cut by one tokenizer.
        source: the pretraining language.
        pretrain_steps, adapt_steps: optimiser steps of each phase (each phase has its
            own warm-up and decay, as a fresh run would).
        n_points: evaluations during the second phase (plus its step 0).

    Returns:
        ``{"curve": {lang: [(step, loss/char), ...]}, "final": {lang: loss/char}}`` on
        the validation split; steps count from the start of the second phase.
    """
    objective = objective_for(data)
    seed_everything(cfg.train.seed)
    model = TwoTowerLM(cfg.model)

    def phase(windows: np.ndarray, steps: int, callbacks=()):
        t = dataclasses.replace(cfg.train, steps=steps, checkpoint_every=0,
                                warmup_steps=max(1, steps // 10))
        batches = WindowBatches(windows, objective, t.batch_size, t.seed)
        train(model, model.loss, batches, t,
              phase="adapt", callbacks=callbacks, progress=progress)

    phase(data.train.of(data.languages.index(source)).windows, pretrain_steps)
    marks = np.unique(np.linspace(0, adapt_steps, n_points + 1).round().astype(int))
    watch = _EvalAt(model, data, objective, marks)
    watch.on_step_end({"step": 0})
    phase(data.train.windows, adapt_steps, [watch])
    model.eval()
    return {"curve": watch.curve,
            "final": {lang: points[-1][1] for lang, points in watch.curve.items()}}


def steps_to_reach(curve: Sequence[tuple[int, float]], level: float) -> float:
    """First step at which a loss curve reaches ``level`` (linear interpolation).

    Args:
        curve: ``(step, loss)`` points in step order.
        level: the loss to reach.

    Returns:
        0.0 if the curve starts at or below ``level``; NaN if it never gets there.
    """
    points = [(float(s), float(v)) for s, v in curve]
    require(len(points) >= 1, "the curve has no points")
    if points[0][1] <= level:
        return 0.0
    for (s0, v0), (s1, v1) in itertools.pairwise(points):
        if v0 > level >= v1:
            return s0 + (v0 - level) / (v0 - v1) * (s1 - s0)
    return float("nan")
