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
Everything is computed raw and centred (:func:`twotower.preference.centred_preference`:
global gap, difficulty and frequency regressed out).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import RunConfig, read_run_config
from .errors import require
from .pipeline import read_results
from .preference import centred_preference, half_assignment, token_preference
from .readouts import TokenScores

ALIGNMENTS = ("r", "gap", "none")


# --- runs on disk ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RunPreference:
    """What the stability analysis needs from a finished run (main or control).

    ``preference`` is ``preference.csv`` indexed by token id; ``variant`` is what
    :func:`twotower.notebook.run_path` appended to the directory name ("" for a main
    run, the control's name, or e.g. ``width0.5``).
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
        """Mean over scored positions of ``ll_A - ll_B`` (nats)."""
        return float((self.scores.ll[0].astype(np.float64) - self.scores.ll[1]).mean())


def load_preference_run(path: str | Path) -> RunPreference:
    """Read a finished run directory without loading any model."""
    path = Path(path)
    require((path / "results.json").exists(), f"{path} is not a finished run (no "
            "results.json); train it first (twotower.notebook.ensure_run)")
    cfg = read_run_config(path)
    pref = pd.read_csv(path / "preference.csv", keep_default_na=False,
                       na_values=[""]).set_index("id")
    stem = f"-seed{cfg.train.seed}"
    variant = path.name.split(stem, 1)[1].lstrip("-") if stem in path.name else ""
    return RunPreference(path, cfg, read_results(path), pref,
                         TokenScores.load(path / "scores.npz"), variant)


def collect_runs(runs_dir: str | Path, preset: str) -> list[RunPreference]:
    """Every finished run of ``preset`` in ``runs_dir`` (by variant, family, seed).

    Relies on the naming of :func:`twotower.notebook.run_path`.
    """
    found = [load_preference_run(p) for p in sorted(Path(runs_dir).glob(f"{preset}-*"))
             if (p / "results.json").exists()]
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


def _row_r(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row of (S, N) arrays (vectorised over S)."""
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))


def _row_cov(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Covariance (ddof 1) of each row of (S, N) arrays."""
    n = x.shape[-1]
    return ((x - x.mean(-1, keepdims=True)) * (y - y.mean(-1, keepdims=True))
            ).sum(-1) / max(n - 1, 1)


def bootstrap_interval(n: int, statistic: Callable[[np.ndarray], np.ndarray],
                       n_boot: int = 1000, seed: int = 0, level: float = 0.95
                       ) -> tuple[float, float]:
    """Percentile interval of ``statistic(idx)`` over token resamples.

    ``statistic`` maps an (S, N) array of token indices to S values (vectorised).
    """
    if n < 3 or n_boot < 1:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    values = statistic(idx)
    lo, hi = np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def null_abs_r(x: np.ndarray, y: np.ndarray, n_perm: int = 1000, seed: int = 0,
               level: float = 0.95) -> float:
    """The ``level`` quantile of ``|r|`` when ``y`` is shuffled against ``x``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3:
        return float("nan")
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(y) for _ in range(n_perm)])  # (S, N)
    return float(np.nanquantile(np.abs(_row_r(np.broadcast_to(x, shuffled.shape),
                                              shuffled)), level))


# --- within a run: reliability and spread ---------------------------------------------


def preference_values(df: pd.DataFrame, centred: bool) -> pd.Series:
    """``pref`` by token id, raw or centred (NaN rows dropped)."""
    values = centred_preference(df) if centred else df["pref"]
    return values.dropna()


def half_preferences(run: RunPreference, centred: bool = True, seed: int = 0
                     ) -> pd.DataFrame:
    """``pref`` measured on each half of every token's occurrences.

    Returns:
        DataFrame indexed by id with columns ``half0``, ``half1``: only tokens with
        at least ``min_count`` occurrences in both halves.
    """
    scores, vocab = run.scores, run.config.model.vocab_size
    half = half_assignment(scores.target.astype(np.int64), seed)
    columns = {}
    for h in (0, 1):
        keep = half == h
        part = TokenScores(scores.target[keep], scores.ll[:, keep], scores.joint[keep])
        df = token_preference(part, vocab, run.config.min_count)
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


def _ceiling(r: float) -> float:
    return float(2 * r / (1 + r)) if np.isfinite(r) and r > -1 else float("nan")


def _spread(cov: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(cov, 0.0))


def reliability(run: RunPreference, centred: bool = True, seed: int = 0,
                n_boot: int = 1000) -> Reliability:
    """Split-half reliability and replicable spread of ``run``'s preference."""
    halves = half_preferences(run, centred, seed)
    x, y = halves["half0"].to_numpy(), halves["half1"].to_numpy()
    n = x.size
    r = float(_row_r(x[None], y[None])[0]) if n >= 3 else float("nan")
    lo, hi = bootstrap_interval(n, lambda i: _row_r(x[i], y[i]), n_boot, seed)
    s_lo, s_hi = bootstrap_interval(n, lambda i: _spread(_row_cov(x[i], y[i])),
                                    n_boot, seed)
    spread = float(_spread(_row_cov(x[None], y[None]))[0]) if n >= 3 else float("nan")
    return Reliability(centred, r, lo, hi, _ceiling(r), spread, s_lo, s_hi, n)


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
    """Correlation of two runs' preferences over their shared tokens."""

    a: str
    b: str
    centred: bool
    align: str
    flipped: bool  # the second run's sign was flipped before correlating
    r: float
    low: float
    high: float
    n_tokens: int
    ceiling: float  # sqrt(rel_a * rel_b), NaN if either reliability is not positive
    null95: float  # 95th percentile of |r| with tokens shuffled

    @property
    def r_over_ceiling(self) -> float:
        """r as a share of the best it could be (the disattenuated correlation)."""
        return self.r / self.ceiling if self.ceiling > 0 else float("nan")


def paired_values(a: RunPreference, b: RunPreference, centred: bool = True,
                  key: str = "id") -> pd.DataFrame:
    """Both runs' preferences on their shared tokens: columns ``a``, ``b``.

    ``key="token"`` joins on the token string instead of the id (runs with different
    tokenizers, e.g. two presets).
    """
    series = []
    for run in (a, b):
        values = preference_values(run.preference, centred)
        if key == "token":
            values.index = run.preference.loc[values.index, "token"].to_numpy()
            values = values[~values.index.duplicated()]
        series.append(values)
    return pd.DataFrame({"a": series[0], "b": series[1]}).dropna()


def compare_runs(a: RunPreference, b: RunPreference, *, centred: bool = True,
                 align: str = "r", key: str = "id", n_boot: int = 1000,
                 seed: int = 0) -> Comparison:
    """Sign-aligned correlation of two runs' preferences, with interval, ceiling, null.

    Args:
        align: ``"r"`` (flip b when r < 0: reports ``|r|``), ``"gap"`` (flip b when its
            global gap has the other sign than a's) or ``"none"``.
        key: ``"id"`` or ``"token"`` (see :func:`paired_values`).
    """
    require(align in ALIGNMENTS, f"align must be one of {ALIGNMENTS}, got {align!r}")
    both = paired_values(a, b, centred, key)
    x, y = both["a"].to_numpy(), both["b"].to_numpy()
    n = x.size
    r = float(_row_r(x[None], y[None])[0]) if n >= 3 else float("nan")
    flip = (align == "r" and r < 0) or \
        (align == "gap" and np.sign(a.global_gap) != np.sign(b.global_gap))
    if flip:
        y, r = -y, -r
    lo, hi = bootstrap_interval(n, lambda i: _row_r(x[i], y[i]), n_boot, seed)
    rel = [reliability(run, centred, seed, n_boot=0).ceiling for run in (a, b)]
    ceiling = float(np.sqrt(rel[0] * rel[1])) if min(rel) > 0 else float("nan")
    return Comparison(a.label, b.label, centred, align, bool(flip), r, lo, hi, n,
                      ceiling, null_abs_r(x, y, seed=seed))


def comparison_table(pairs: Sequence[tuple[str, RunPreference, RunPreference]], *,
                     centred: Sequence[bool] = (False, True), **kwargs) -> pd.DataFrame:
    """One row per ``(kind, run a, run b)`` and raw/centred, by :func:`compare_runs`.

    Keyword arguments go to :func:`compare_runs`.
    """
    rows = []
    for (kind, a, b), c in itertools.product(pairs, centred):
        cmp_ = compare_runs(a, b, centred=c, **kwargs)
        rows.append({"kind": kind, "pref": "centred" if c else "raw",
                     **dataclasses.asdict(cmp_), "r / ceiling": cmp_.r_over_ceiling})
    return pd.DataFrame(rows)


def seed_pairs(runs: Sequence[RunPreference], variant: str = ""
               ) -> list[tuple[str, RunPreference, RunPreference]]:
    """Every pair of seeds within each family (runs of one ``variant``)."""
    out = []
    chosen = [r for r in runs if r.variant == variant]
    for family in dict.fromkeys(r.family for r in chosen):
        same = sorted((r for r in chosen if r.family == family), key=lambda r: r.seed)
        label = f"seeds ({family}{', ' + variant if variant else ''})"
        out += [(label, a, b) for a, b in itertools.combinations(same, 2)]
    return out


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


def compare_stability(pair: tuple[RunPreference, RunPreference],
                      control: tuple[RunPreference, RunPreference], *,
                      centred: bool = True, n_boot: int = 1000, seed: int = 0
                      ) -> tuple[float, float, float]:
    """Aligned cross-run r of ``pair`` minus that of the ``control`` pair.

    Both correlations are taken on the tokens all four runs measure, each sign-aligned
    on the full data (``align="r"``), and the interval resamples those tokens jointly.

    Returns:
        ``(difference, low, high)``.
    """
    frames = [paired_values(*pair, centred), paired_values(*control, centred)]
    shared = frames[0].index.intersection(frames[1].index)
    (xa, ya), (xb, yb) = [(f.loc[shared, "a"].to_numpy(), f.loc[shared, "b"].to_numpy())
                          for f in frames]
    whole = np.arange(shared.size)[None]
    sign_a = np.sign(_row_r(xa[whole], ya[whole])[0]) or 1.0
    sign_b = np.sign(_row_r(xb[whole], yb[whole])[0]) or 1.0

    def diff(i: np.ndarray) -> np.ndarray:
        return sign_a * _row_r(xa[i], ya[i]) - sign_b * _row_r(xb[i], yb[i])

    if shared.size < 3:
        return float("nan"), float("nan"), float("nan")
    lo, hi = bootstrap_interval(shared.size, diff, n_boot, seed)
    return float(diff(whole)[0]), lo, hi
