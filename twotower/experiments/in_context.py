"""Claim 4 in context: does a token's preference move with its syntax in the sentence?

Introduced in chapter 10 (*Syntax or semantics?*).

The type-level test (:mod:`twotower.analysis.syntax`) gives each word type its dominant
tag, so "the" is always a determiner and "run" always whatever it mostly is. Here each
occurrence counts. Both readouts of a run score every subword of gold UD sentences
(:func:`score_sentences`); the per-position difference ``ll_A - ll_B`` minus its type's
mean over those sentences (what the type explains is taken out, so only the context is
left) is regressed on the position's word's gold UPOS, dependency relation, arc length
and depth, each demeaned within the type too, and everything within the sentence as well
(type and sentence fixed effects; :func:`context_regression`). If one tower specialises
in syntax, the preference of one type should move with the role the word plays in each
sentence.

Per run: the share of that within-type variance the four explain (R²), each group's own
share (the R² lost without it), and a permutation p (the differences shuffled among the
positions of each type, the whole fit repeated). Across runs: the correlation of two
runs' fitted context effects over the same positions, sign-aligned over seeds as for the
preferences (:mod:`twotower.analysis.across_seeds`), with its interval over seeds; the
untrained-towers control gives what random towers' readouts reach.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotower.analysis.across_seeds import align_signs, aligned_mean, jackknife
from twotower.analysis.stats import permutation_p
from twotower.analysis.tower_probes import encode_sentences, pad_sentences
from twotower.errors import require
from twotower.experiments.pipeline import make_objective
from twotower.experiments.store import load_run
from twotower.models.tower_lm import IGNORE
from twotower.data.objectives import Batch, Objective, step_generator
from twotower.data.ud import Sentence, tree_depths
from twotower.training.readouts import score_readouts
from twotower.training.trainer import SCORE_SEED

GROUPS = ("upos", "deprel", "arc", "depth")
MIN_LEVEL = 20  # a tag or relation seen fewer times joins "other"


def score_sentences(model, readouts, tokenizer, objective: Objective,
                    sentences: Sequence[Sentence], *, batch_size: int = 32,
                    device: str = "auto") -> pd.DataFrame:
    """Both readouts' log-probability of every subword target of gold sentences.

    The sentences are tokenized as in training
    (:func:`twotower.analysis.tower_probes.encode_sentences`; longer than the window:
    left out) and scored as a run is
    (:meth:`twotower.data.objectives.Objective.scoring_batches`:
    every target once, fixed masks).

    Returns:
        One row per scored subword whose word is a UD word: ``sentence`` (index among
        the kept sentences), ``word`` (0-based), ``target`` (id), ``ll_a``, ``ll_b``,
        ``diff`` (``ll_a - ll_b``), the word's ``upos``, ``deprel`` (subtype dropped),
        ``arc`` (``|head - position|``, 0 at the root) and ``depth``.
    """
    kept, ids, word_ids = encode_sentences(sentences, tokenizer, model.cfg.max_len)
    require(kept, "no sentence fits the model's window; use shorter sentences")
    batches, where = [], []  # where: (sentence, token) of each target, in score order
    for start in range(0, len(kept), batch_size):
        chunk = ids[start:start + batch_size]
        rows = pad_sentences(chunk, model.cfg.pad_id)
        for batch in objective.scoring_batches(rows, start,
                                               step_generator(SCORE_SEED, start, 3)):
            batches.append(Batch(batch.input_ids, batch.targets))
            b, t = (batch.targets != IGNORE).nonzero(as_tuple=True)
            shift = 1 if objective.family == "causal" else 0  # causal: the next token
            where += list(zip((b + start).tolist(), (t + shift).tolist()))
    scores = score_readouts(model, readouts, batches, device)
    out = []
    for k, (s, t) in enumerate(where):
        w = word_ids[s][t]
        if w is None:  # [SEP] or [CLS]
            continue
        out.append((s, w, int(scores.target[k]), float(scores.ll[0, k]),
                    float(scores.ll[1, k])))
    frame = pd.DataFrame(out, columns=["sentence", "word", "target", "ll_a", "ll_b"])
    frame["diff"] = frame["ll_a"] - frame["ll_b"]
    depths = [tree_depths(s.heads) for s in kept]
    sent, word = frame["sentence"].to_numpy(), frame["word"].to_numpy()
    frame["upos"] = [kept[s].upos[w] for s, w in zip(sent, word)]
    frame["deprel"] = [(kept[s].deprel or ["?"] * len(kept[s]))[w].split(":")[0]
                       for s, w in zip(sent, word)]
    frame["arc"] = [0 if kept[s].heads[w] == 0 else abs(int(kept[s].heads[w]) - (w + 1))
                    for s, w in zip(sent, word)]
    frame["depth"] = [int(depths[s][w]) for s, w in zip(sent, word)]
    return frame


def score_run(path, sentences: Sequence[Sentence], *, device: str = "auto",
              batch_size: int = 32) -> pd.DataFrame:
    """:func:`score_sentences` for a finished run folder, main run or control."""
    run = load_run(path)
    return score_sentences(run.model, run.readouts, run.data.tokenizer,
                           make_objective(run.config, run.data), sentences,
                           batch_size=batch_size, device=device)


def _design(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each group's columns: one-hot tags/relations (rare ones pooled), log arc,
    depth."""
    out = {}
    for group in ("upos", "deprel"):
        counts = frame[group].value_counts()
        levels = frame[group].where(frame[group].map(counts) >= MIN_LEVEL, "other")
        dummies = pd.get_dummies(levels).to_numpy(float)
        out[group] = dummies[:, 1:] if dummies.shape[1] > 1 else dummies[:, :0]
    out["arc"] = np.log1p(frame["arc"].to_numpy(float))[:, None]
    out["depth"] = frame["depth"].to_numpy(float)[:, None]
    return out


def _demean(values: np.ndarray, groupings: Sequence[np.ndarray],
            iterations: int = 30) -> np.ndarray:
    """``values`` (rows: positions) minus their fixed effects of every grouping: the
    means within each group, removed in turn until they stop moving (alternating
    projections; one pass for a single grouping)."""
    flat = np.asarray(values, float).reshape(len(values), -1).copy()
    for _ in range(iterations if len(groupings) > 1 else 1):
        for codes in groupings:
            n = int(codes.max()) + 1
            sums = np.zeros((n, flat.shape[1]))
            np.add.at(sums, codes, flat)
            flat -= (sums / np.bincount(codes, minlength=n)[:, None])[codes]
    return flat.reshape(np.shape(values))


def _basis(x: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of ``x`` (rank-deficient columns dropped)."""
    if x.shape[1] == 0:
        return x
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, s > s.max() * max(x.shape) * np.finfo(float).eps]


def _r2(y: np.ndarray, basis: np.ndarray) -> tuple[float, np.ndarray]:
    """R² of the least-squares fit of y (demeaned) on the columns ``basis`` spans."""
    fit = basis @ (basis.T @ y)
    return float(fit @ fit / (y @ y)), fit


@dataclass(frozen=True)
class ContextFit:
    """One run's regression of within-type preference on context.

    ``r2``: share of the within-type variance of the preference the four groups
    explain; ``partial``: each group's own share (R² lost without it); ``p_value``:
    share of ``n_perm`` within-type shuffles of the preference with an R² at least as
    large; ``fitted``: the fitted context effect at every position (for comparing runs).
    """

    n_positions: int
    n_types: int
    r2: float
    partial: dict[str, float]
    p_value: float
    fitted: np.ndarray


def context_regression(frame: pd.DataFrame, n_perm: int = 200, seed: int = 0
                       ) -> ContextFit:
    """Regress ``diff`` on the context groups with type and sentence fixed effects.

    Every column and the difference are demeaned within type (what the type explains
    goes) and within sentence (a tower better on a whole sentence is not a syntactic
    role of its words). Types seen once are left out. The permutation shuffles the
    differences among the positions of each type and repeats the demeaning and fit.
    """
    counts = frame["target"].map(frame["target"].value_counts())
    frame = frame[counts >= 2].reset_index(drop=True)
    require(len(frame) > 10, "too few repeated types to separate type from context; "
            "score more sentences")
    codes, types = pd.factorize(frame["target"])
    groupings = (codes, pd.factorize(frame["sentence"])[0])
    raw = frame["diff"].to_numpy(float)
    y = _demean(raw, groupings)
    design = {g: _demean(x, groupings) for g, x in _design(frame).items()}
    basis = _basis(np.hstack([design[g] for g in GROUPS]))
    r2, fitted = _r2(y, basis)
    partial = {g: r2 - _r2(y, _basis(np.hstack([design[o] for o in GROUPS
                                                if o != g])))[0] for g in GROUPS}
    rng = np.random.default_rng(seed)
    by_type = np.argsort(codes, kind="stable")  # positions grouped by type
    null = np.empty(n_perm)
    for k in range(n_perm):  # each type's differences shuffled among its positions
        shuffled = np.empty_like(raw)
        shuffled[by_type] = raw[np.lexsort((rng.random(len(raw)), codes))]
        null[k] = _r2(_demean(shuffled, groupings), basis)[0]
    return ContextFit(len(frame), len(types), r2, partial,
                      permutation_p(r2, null, "greater", tolerance=0.0), fitted)


@dataclass(frozen=True)
class ContextAgreement:
    """How alike the runs' fitted context effects are (sign-aligned over seeds)."""

    label: str
    matrix: np.ndarray  # (R, R) correlation of fitted effects, NaN diagonal
    signs: np.ndarray
    mean: float
    low: float
    high: float


def context_agreement(fits: Sequence[ContextFit], label: str = "") -> ContextAgreement:
    """Correlations of every pair of runs' fitted effects over the same positions
    (the same sentences and tokenizer), aligned and summarised as in
    :func:`twotower.analysis.across_seeds.seed_stability` (mean over pairs, jackknife t
    interval over seeds)."""
    require(len(fits) >= 2, "agreement needs at least two runs")
    n = {f.n_positions for f in fits}
    require(len(n) == 1, f"the runs scored different positions ({sorted(n)}); use one "
            "tokenizer and the same sentences")
    fitted = np.stack([f.fitted for f in fits])
    matrix = np.corrcoef(fitted)
    np.fill_diagonal(matrix, np.nan)
    signs = align_signs(matrix)
    _, low, high = jackknife(matrix, signs)
    return ContextAgreement(label, matrix, signs, aligned_mean(matrix, signs), low,
                            high)


CONDITIONS = {"two-tower": "", "independent": "independent", "untrained": "untrained"}


def fit_conditions(runs, sentences: Sequence[Sentence], *, n_perm: int = 200,
                   seed: int = 0, device: str = "auto",
                   conditions: dict[str, str] = CONDITIONS
                   ) -> dict[tuple[str, int], ContextFit]:
    """:func:`context_regression` of every causal run of each condition (name ->
    the run's variant, as in :class:`twotower.training.run_folder.RunSpec`), keyed by
    ``(condition, seed)``; ``runs`` are chapter 9's
    :class:`twotower.analysis.stability.RunPreference` objects."""
    fits = {}
    for name, variant in conditions.items():
        for run in runs:
            if run.family == "causal" and run.variant == variant:
                frame = score_run(run.path, sentences, device=device)
                fits[name, run.config.train.seed] = context_regression(frame, n_perm,
                                                                       seed)
    return fits


def agreement_table(fits: dict[tuple[str, int], ContextFit]) -> pd.DataFrame:
    """Per condition with two seeds or more: seeds, mean R² and the agreement of its
    runs' context effects (:func:`context_agreement`) with its interval."""
    rows = []
    for name in dict.fromkeys(cond for cond, _ in fits):
        group = [fit for (cond, _), fit in fits.items() if cond == name]
        if len(group) > 1:
            a = context_agreement(group, name)
            rows.append({"condition": name, "seeds": len(group),
                         "mean R²": float(np.mean([f.r2 for f in group])),
                         "agreement": a.mean, "low": a.low, "high": a.high})
    return pd.DataFrame(rows)


def context_table(fits: dict[str, ContextFit]) -> pd.DataFrame:
    """One row per run: positions, types, R², each group's share, permutation p."""
    return pd.DataFrame({name: {"positions": f.n_positions, "types": f.n_types,
                                "R²": f.r2,
                                **{f"ΔR² {g}": f.partial[g] for g in GROUPS},
                                "p": f.p_value} for name, f in fits.items()}).T


__all__ = ["CONDITIONS", "ContextAgreement", "ContextFit", "GROUPS",
           "agreement_table", "context_agreement", "context_regression",
           "context_table", "fit_conditions", "score_run", "score_sentences"]
