"""Is the preference stable? Correlations across runs against a ceiling and a null.

Introduced in chapter 9 (*Is the preference stable?*).

Three numbers go with every correlation of ``pref`` between two runs:

* the **noise ceiling** ``sqrt(rel_a * rel_b)``: the highest correlation two noisy
  measurements can reach when the true preferences are identical, where ``rel`` is a
  run's split-half reliability stepped up to full length (Spearman-Brown);
* a **bootstrap interval** over tokens;
* a **null**: the 95th percentile of ``|r|`` when the tokens of one run are shuffled.

Tower labels are arbitrary (A is whichever tower got the first slot), so the second
run's preference is *sign-aligned* before correlating: ``align="r"`` flips it when the
full-data correlation is negative, so the reported r is ``|r|`` and its interval is that
of the aligned pair (this selection inflates ``|r|`` under the null, which is why the
null is reported as well); ``align="gap"`` flips it when its global gap (tower A better
on average) has the other sign, a convention that does not look at the correlation.
Everything is computed raw and centred
(:func:`twotower.analysis.preference.centred_preference`: global gap, difficulty and
frequency regressed out).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from twotower.config import RunConfig, read_run_config
from twotower.errors import require
from twotower.analysis.preference import (HALF_SEED, centred_preference, global_gap,
                                          text_halves, token_preference)
from twotower.analysis.stats import (bootstrap_interval, row_pearson, shuffled_labels,
                                     spearman_brown)
from twotower.data.scores import TokenScores
from twotower.training.run_folder import (CONFIG, RESULTS, RunSpec, is_finished,
                                          read_preference, read_results, read_scores)

ALIGNMENTS = ("r", "gap", "none")


# --- runs on disk ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RunPreference:
    """What the stability analysis needs from a finished run (main or control).

    ``preference`` is ``preference.csv`` indexed by token id; ``variant`` is the
    variant of the folder's :class:`~twotower.training.run_folder.RunSpec` ("" for a
    main run, the control's name, or e.g. ``width0.5``).
    """

    path: Path
    config: RunConfig
    results: dict
    preference: pd.DataFrame
    scores: TokenScores
    variant: str

    @property
    def family(self) -> str:
        return self.config.model.family

    @property
    def seed(self) -> int:
        return self.config.train.seed

    @property
    def label(self) -> str:
        return f"{self.family} seed {self.seed}" + (f" {self.variant}"
                                                    if self.variant else "")

    @property
    def global_gap(self) -> float:
        """The run's :func:`twotower.analysis.preference.global_gap` (nats)."""
        return global_gap(self.scores)


def load_preference_run(path: str | Path) -> RunPreference:
    """Read a finished run directory without loading any model.

    Raises:
        TwotowerError: when it is not a finished run, or its preference table or
            scores are missing, damaged or not the files its results record (one
            line naming the file and the fix: ``book/when_things_go_wrong.md``).
    """
    path = Path(path)
    require(is_finished(path), f"{path} is not a finished run (no {RESULTS}); train "
            "it first (twotower.experiments.store.ensure)")
    cfg = read_run_config(path)
    results = read_results(path)
    variant = RunSpec.parse(path.name).variant if RunSpec.matches(path.name) else ""
    return RunPreference(path, cfg, results, read_preference(path, results),
                         read_scores(path, results), variant)


def collect_runs(runs_dir: str | Path, preset: str) -> list[RunPreference]:
    """Every finished run of ``preset`` in ``runs_dir`` (by variant, family, seed).

    Relies on the naming of :class:`~twotower.training.run_folder.RunSpec`. Folders
    of other kinds that share the naming (chapter 13's bilingual run, chapter 12's
    checkpoints) have no ``config.json`` of a :class:`~twotower.config.RunConfig` and
    are left out.
    """
    found = [load_preference_run(p) for p in sorted(Path(runs_dir).glob(f"{preset}-*"))
             if is_finished(p) and (p / CONFIG).exists()]
    return sorted(found, key=lambda r: (r.variant, r.family, r.seed))


def run_table(runs: Sequence[RunPreference]) -> pd.DataFrame:
    """One row per run: losses, global gap, preference spread and split-half ceiling."""
    rows = []
    for run in runs:
        s, p, h = run.results["scores"], run.results["preference"], \
            run.results["split_half"]
        rows.append({"run": run.label, "family": run.family, "seed": run.seed,
                     "variant": run.variant or "two-tower",
                     "tokens with pref": p["n_tokens"], "joint loss": s["joint_loss"],
                     "readout A loss": s["readout_a_loss"],
                     "readout B loss": s["readout_b_loss"],
                     "global gap": run.global_gap, "pref sd": p.get("sd", np.nan),
                     "split-half r": h["r"], "ceiling": h["ceiling"]})
    return pd.DataFrame(rows)


# --- bootstrap helpers ----------------------------------------------------------------


def _row_cov(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Covariance (ddof 1) of each row of (S, N) arrays."""
    n = x.shape[-1]
    return ((x - x.mean(-1, keepdims=True)) * (y - y.mean(-1, keepdims=True))
            ).sum(-1) / max(n - 1, 1)


def null_abs_r(x: np.ndarray, y: np.ndarray, n_perm: int = 1000, seed: int = 0,
               level: float = 0.95) -> float:
    """The ``level`` quantile of ``|r|`` when ``y`` is shuffled against ``x``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3:
        return float("nan")
    shuffled = shuffled_labels(y, n_perm, seed, method="shuffle")  # (S, N)
    return float(np.nanquantile(np.abs(row_pearson(np.broadcast_to(x, shuffled.shape),
                                                   shuffled)), level))


# --- within a run: reliability and spread ---------------------------------------------


def preference_values(df: pd.DataFrame, centred: bool) -> pd.Series:
    """``pref`` by token id, raw or centred (NaN rows dropped)."""
    values = centred_preference(df) if centred else df["pref"]
    return values.dropna()


def half_preferences(run: RunPreference, centred: bool = True, seed: int = HALF_SEED
                     ) -> pd.DataFrame:
    """``pref`` measured on each half of the scored text (:func:`text_halves`: whole
    articles go to one half, the same halves for every run of one text).

    Returns:
        DataFrame indexed by id with columns ``half0``, ``half1``: only tokens with
        at least ``min_count`` occurrences in both halves.
    """
    scores, vocab = run.scores, run.config.model.vocab_size
    half, _ = text_halves(scores, seed)
    columns = {}
    for h in (0, 1):
        df = token_preference(scores.subset(half == h), vocab, run.config.min_count)
        columns[f"half{h}"] = preference_values(df, centred)
    return pd.DataFrame(columns).dropna()


@dataclass(frozen=True)
class Reliability:
    """Split-half reliability and spread of one run's preference.

    ``r`` correlates the two halves (interval over tokens); ``ceiling`` is its
    Spearman-Brown step-up ``2r / (1 + r)``, the reliability of full-length pref;
    ``spread`` is ``sqrt(cov(half0, half1))`` in nats: the standard deviation of the
    part of pref that replicates across halves (noise is independent between halves,
    so it drops out of the covariance).
    """

    centred: bool
    r: float
    low: float
    high: float
    ceiling: float
    spread: float
    spread_low: float
    spread_high: float
    n_tokens: int


def _spread(cov: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(cov, 0.0))


def reliability(run: RunPreference, centred: bool = True, seed: int = 0,
                n_boot: int = 1000) -> Reliability:
    """Split-half reliability and replicable spread of ``run``'s preference."""
    halves = half_preferences(run, centred, seed)
    x, y = halves["half0"].to_numpy(), halves["half1"].to_numpy()
    n = x.size
    r = float(row_pearson(x[None], y[None])[0]) if n >= 3 else float("nan")
    lo, hi = bootstrap_interval(n, lambda i: row_pearson(x[i], y[i]), n_boot, seed)
    s_lo, s_hi = bootstrap_interval(n, lambda i: _spread(_row_cov(x[i], y[i])),
                                    n_boot, seed)
    spread = float(_spread(_row_cov(x[None], y[None]))[0]) if n >= 3 else float("nan")
    return Reliability(centred, r, lo, hi, spearman_brown(r), spread, s_lo, s_hi, n)


def compare_spread(a: RunPreference, b: RunPreference, centred: bool = True,
                   seed: int = 0, n_boot: int = 1000) -> tuple[float, float, float]:
    """``spread(a) - spread(b)`` on the tokens both measure, with a paired interval.

    Returns:
        ``(difference, low, high)`` in nats.
    """
    ha, hb = half_preferences(a, centred, seed), half_preferences(b, centred, seed)
    shared = ha.index.intersection(hb.index)
    xa, ya = ha.loc[shared, "half0"].to_numpy(), ha.loc[shared, "half1"].to_numpy()
    xb, yb = hb.loc[shared, "half0"].to_numpy(), hb.loc[shared, "half1"].to_numpy()

    def diff(i: np.ndarray) -> np.ndarray:
        return _spread(_row_cov(xa[i], ya[i])) - _spread(_row_cov(xb[i], yb[i]))

    whole = np.arange(shared.size)[None]
    lo, hi = bootstrap_interval(shared.size, diff, n_boot, seed)
    return (float(diff(whole)[0]) if shared.size >= 3 else float("nan")), lo, hi


# --- across runs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """How far two runs agree on which tower predicts which token.

    Both runs are measured on the same two halves of the text (:func:`text_halves`)
    and on the tokens that reach ``min_count`` in both halves of both runs. The cross
    correlations ``r(a0, b1)`` and ``r(a1, b0)`` pair halves with *different* text,
    so no position's noise is shared between the two sides, and dividing their mean by
    ``sqrt(r(a0, a1) * r(b0, b1))`` (each run's own split-half r on the same tokens)
    estimates the correlation of the two runs' noise-free preferences (``r_x``,
    Spearman's disattenuation). 1 means the same preference up to noise, 0 none.
    """

    a: str
    b: str
    centred: bool
    align: str
    flipped: bool  # the second run's sign was flipped before correlating
    r_x: float  # the disattenuated cross-run correlation
    low: float  # token-bootstrap interval of r_x (conditional on these two runs)
    high: float
    r_cross: float  # mean of r(a0, b1) and r(a1, b0), before disattenuation
    r_aa: float  # split-half r of run a on the same tokens
    r_bb: float
    n_tokens: int
    null95: float  # 95th percentile of |r_x| with one run's tokens shuffled


def paired_halves(a: RunPreference, b: RunPreference, centred: bool = True,
                  key: str = "id") -> pd.DataFrame:
    """Both runs' half preferences on the tokens both measure in both halves:
    columns ``a0``, ``a1``, ``b0``, ``b1``.

    ``key="token"`` joins on the token string instead of the id (runs with different
    tokenizers, e.g. two presets).
    """
    frames = []
    for name, run in (("a", a), ("b", b)):
        halves = half_preferences(run, centred)
        if key == "token":
            halves.index = run.preference.loc[halves.index, "token"].to_numpy()
            halves = halves[~halves.index.duplicated()]
        frames.append(halves.rename(columns={"half0": f"{name}0", "half1": f"{name}1"}))
    return pd.concat(frames, axis=1, join="inner")


def half_correlations(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cross, r_aa, r_bb)`` of two runs' half preferences, over the last axis and
    broadcasting the others: the mean of ``r(a0, b1)`` and ``r(a1, b0)`` (halves of
    different text) and each run's split-half r."""
    return ((row_pearson(a0, b1) + row_pearson(a1, b0)) / 2, row_pearson(a0, a1),
            row_pearson(b0, b1))


def disattenuated(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray
                  ) -> np.ndarray:
    """r_x of two runs from their half preferences (:func:`half_correlations`, over
    the last axis and broadcasting the others); NaN where a split-half r is not
    positive."""
    cross, r_aa, r_bb = half_correlations(a0, a1, b0, b1)
    ok = (r_aa > 0) & (r_bb > 0)  # a run with no reliable preference: no r_x
    with np.errstate(invalid="ignore"):
        return np.where(ok, cross / np.sqrt(np.where(ok, r_aa * r_bb, 1.0)), np.nan)


def compare_runs(a: RunPreference, b: RunPreference, *, centred: bool = True,
                 align: str = "r", key: str = "id", n_boot: int = 1000,
                 seed: int = 0, n_perm: int = 500) -> Comparison:
    """The :class:`Comparison` of two runs, with a token interval and a null.

    Args:
        align: ``"r"`` (flip b when the cross correlation is negative: reports
            ``|r_x|``), ``"gap"`` (flip b when its global gap has the other sign than
            a's) or ``"none"``.
        key: ``"id"`` or ``"token"`` (see :func:`paired_halves`).
        n_boot, n_perm: token resamples for the interval and shuffles for the null.
    """
    require(align in ALIGNMENTS, f"align must be one of {ALIGNMENTS}, got {align!r}")
    h = paired_halves(a, b, centred, key).to_numpy().T  # (4, T): a0, a1, b0, b1
    n = h.shape[-1]
    if n < 3:
        return Comparison(a.label, b.label, centred, align, False, *[np.nan] * 6, n,
                          np.nan)
    cross, r_aa, r_bb = (float(v) for v in half_correlations(*h))
    flip = (align == "r" and cross < 0) or \
        (align == "gap" and np.sign(a.global_gap) != np.sign(b.global_gap))
    if flip:
        h = h * np.array([1, 1, -1, -1])[:, None]
    r_x = float(disattenuated(*h))

    def resampled(i: np.ndarray) -> np.ndarray:  # (S, N) token indices -> (S,) r_x
        return disattenuated(*h[:, i])

    lo, hi = bootstrap_interval(n, resampled, n_boot, seed)
    null = np.array([np.nan])
    if n_perm:
        order = shuffled_labels(np.arange(n), n_perm, seed, method="shuffle")
        null = np.abs(disattenuated(h[0], h[1], h[2][order], h[3][order]))
    null95 = float(np.nanquantile(null, 0.95)) if np.isfinite(null).any() else np.nan
    return Comparison(a.label, b.label, centred, align, bool(flip), r_x, lo, hi,
                      abs(cross), r_aa, r_bb, n, null95)


def comparison_table(pairs: Sequence[tuple[str, RunPreference, RunPreference]], *,
                     centred: Sequence[bool] = (False, True), **kwargs) -> pd.DataFrame:
    """One row per ``(kind, run a, run b)`` and raw/centred, by :func:`compare_runs`.

    Keyword arguments go to :func:`compare_runs`.
    """
    rows = []
    for (kind, a, b), c in itertools.product(pairs, centred):
        cmp_ = compare_runs(a, b, centred=c, **kwargs)
        rows.append({"kind": kind, "pref": "centred" if c else "raw",
                     **dataclasses.asdict(cmp_)})
    return pd.DataFrame(rows)


def seed_pairs(runs: Sequence[RunPreference], variant: str = ""
               ) -> list[tuple[str, RunPreference, RunPreference]]:
    """Every pair of seeds within each family (runs of one ``variant``)."""
    out = []
    for family, same in seed_groups(runs, variant).items():
        label = f"seeds ({family}{', ' + variant if variant else ''})"
        out += [(label, a, b) for a, b in itertools.combinations(same, 2)]
    return out


def seed_groups(runs: Sequence[RunPreference], variant: str = ""
                ) -> dict[str, list[RunPreference]]:
    """The runs of one ``variant`` by family, each list ordered by seed."""
    chosen = [r for r in runs if r.variant == variant]
    return {family: sorted((r for r in chosen if r.family == family),
                           key=lambda r: r.seed)
            for family in dict.fromkeys(r.family for r in chosen)}


def family_pairs(runs: Sequence[RunPreference], seed: int = 0
                 ) -> list[tuple[str, RunPreference, RunPreference]]:
    """Every pair of families among the main runs: the first at ``seed``, the second
    at ``seed + 1``.

    Never two runs of one seed: they share initial weights wherever their shapes agree
    (always the readouts', and the embedding's for the two transformer families), and
    an initialisation that leaves a mark on pref makes such runs agree for nothing.
    """
    first = [r for r in runs if r.variant == "" and r.seed == seed]
    second = {r.family: r for r in runs if r.variant == "" and r.seed == seed + 1}
    return [(f"families ({a.family}/{b.family})", a, second[b.family])
            for a, b in itertools.combinations(first, 2) if b.family in second]
