"""Syntax or semantics? Part of speech against pref, and a structural probe per tower.

Introduced in chapter 10 (*Syntax or semantics?*).

Two questions, two instruments:

* Do function words (ADP, DET, PRON, AUX, CCONJ, SCONJ, PART, PUNCT) prefer one tower
  and content words (NOUN, VERB, ADJ, ADV, PROPN, NUM) the other? Each WordPiece id
  gets its dominant UPOS from UD English EWT
  (:func:`twotower.data.ud.dominant_upos`); the two classes' ``pref`` are compared by
  Cohen's d and the rank-biserial correlation
  (:func:`twotower.analysis.stats.effect_size`), with a permutation test; and again
  *within frequency bins*, because function words are frequent and frequency alone
  moves ``pref``.
* Does one tower hold more of the parse tree? That half lives in
  :mod:`twotower.analysis.tower_probes` (structural probes per tower and layer, chosen
  on a dev split, against a chain and a random tree); its names are re-exported here,
  so ``syntax.probe_towers`` and ``syntax.probe_summary`` keep working.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from twotower.analysis.across_seeds import seed_stability
from twotower.analysis.preference import centred_preference
from twotower.analysis.stats import (effect_size, permutation_p, pooled_sd,
                                     shuffled_labels)
from twotower.data.ud import word_class
from twotower.errors import require
# chapter 10 and the scorecard call these as syntax.*
from twotower.analysis.tower_probes import (  # noqa: F401
    PROBE_REPORT,
    TOWER_INPUT,
    ProbeResult,
    choose_layer,
    describe_probe_summary,
    encode_sentences,
    load_probe_report,
    micro_uuas,
    probe_layers,
    probe_summary,
    probe_towers,
    probe_uuas_table,
    save_probe_report,
    sentence_uuas_counts,
    split_probe_train,
    tower_layer_vectors,
    uuas_difference,
)
from twotower.analysis.tree_baselines import tree_baselines  # noqa: F401


# --- part of speech ---------------------------------------------------------------


def pos_table(preference: pd.DataFrame, upos: dict[int, tuple[str, float, int]],
              values: pd.Series | None = None) -> pd.DataFrame:
    """Tokens with a preference and a UD tag, with their word class and frequency.

    Args:
        preference: a run's ``preference.csv`` indexed by id.
        upos: ``id -> (tag, share, count)`` from :func:`twotower.data.ud.dominant_upos`.
        values: the preference to use (e.g. centred), by id; default ``pref``.

    Returns:
        DataFrame indexed by id: ``token, count, log_count, pref, upos, upos_share,
        word_class`` ("function", "content" or "other").
    """
    pref = (preference["pref"] if values is None else values).dropna()
    ids = [i for i in pref.index if i in upos]
    out = pd.DataFrame({
        "token": preference.loc[ids, "token"] if "token" in preference else "",
        "count": preference.loc[ids, "count"],
        "pref": pref.loc[ids],
        "upos": [upos[i][0] for i in ids],
        "upos_share": [upos[i][1] for i in ids],
    }, index=pd.Index(ids, name="id"))
    out.insert(2, "log_count", np.log(out["count"].astype(float)))
    out["word_class"] = [word_class(t) for t in out["upos"]]
    return out


def frequency_bins(log_count: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index (0..n_bins-1) of each token by quantiles of its log frequency."""
    log_count = np.asarray(log_count, float)
    edges = np.unique(np.quantile(log_count, np.linspace(0, 1, n_bins + 1))[1:-1])
    return np.searchsorted(edges, log_count, side="right")


def class_difference(values: np.ndarray, labels: np.ndarray,
                     strata: np.ndarray | None = None) -> np.ndarray:
    """Mean of ``values`` where the label is True minus where it is False.

    With ``strata``, the differences within each stratum that holds both labels are
    averaged with weights ``n1 n0 / (n1 + n0)`` (the Cochran-Mantel-Haenszel weights).

    Args:
        values: (N,) numbers.
        labels: (N,) or (S, N) booleans: S labellings are scored at once.
        strata: (N,) stratum of each value, or None for one stratum.

    Returns:
        (S,) differences, or a 0-d array for (N,) labels.
    """
    values = np.asarray(values, float)
    labels = np.asarray(labels, bool)
    single = labels.ndim == 1
    labels = np.atleast_2d(labels)
    strata = np.zeros(values.size, int) if strata is None else np.asarray(strata)
    total = np.zeros(labels.shape[0])
    weight = np.zeros(labels.shape[0])
    for s in np.unique(strata):
        inside = strata == s
        lab, v = labels[:, inside], values[inside]
        n1 = lab.sum(1)
        n0 = inside.sum() - n1
        ok = (n1 > 0) & (n0 > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = (lab @ v) / n1 - ((~lab) @ v) / n0
            w = n1 * n0 / (n1 + n0)
        total += np.where(ok, w * diff, 0.0)
        weight += np.where(ok, w, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / weight
    return out[0] if single else out


def class_difference_p(values: np.ndarray, labels: np.ndarray,
                       strata: np.ndarray | None = None, n_perm: int = 2000,
                       seed: int = 0) -> float:
    """Two-sided permutation p-value of :func:`class_difference`.

    Labels are shuffled within each stratum (so the frequency profile of each class is
    kept when the strata are frequency bins), by
    :func:`twotower.analysis.stats.shuffled_labels` and
    :func:`twotower.analysis.stats.permutation_p`.
    """
    labels = np.asarray(labels, bool)
    strata_ = np.zeros(labels.size, int) if strata is None else np.asarray(strata)
    observed = float(class_difference(values, labels, strata_))
    shuffled = shuffled_labels(labels, n_perm, seed, strata_)
    return permutation_p(observed, class_difference(values, shuffled, strata_))


@dataclass(frozen=True)
class ClassEffect:
    """Function against content words, raw and within frequency bins.

    ``mean_diff`` > 0: function words have the higher pref (prefer tower A).
    """

    n_function: int
    n_content: int
    mean_function: float
    mean_content: float
    mean_diff: float
    cohens_d: float
    rank_biserial: float
    p_value: float
    n_bins: int
    binned_diff: float  # frequency-stratified mean difference (nats)
    binned_d: float  # binned_diff / pooled standard deviation
    p_binned: float  # labels permuted within frequency bins

    @property
    def function_tower(self) -> str:
        """The tower function words prefer ("A" or "B")."""
        return "A" if self.mean_diff > 0 else "B"


def _function_content(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["word_class"].isin(("function", "content"))]


def function_content_effect(table: pd.DataFrame, n_perm: int = 2000, n_bins: int = 5,
                            seed: int = 0) -> ClassEffect:
    """Compare ``pref`` of function and content tokens of a :func:`pos_table`."""
    sub = _function_content(table)
    values = sub["pref"].to_numpy(float)
    is_function = (sub["word_class"] == "function").to_numpy()
    require(is_function.any() and (~is_function).any(), "the table needs function "
            "and content tokens; is the UD tokenizer the run's tokenizer?")
    effect = effect_size(values[is_function], values[~is_function])
    bins = frequency_bins(sub["log_count"].to_numpy(), n_bins)
    binned = float(class_difference(values, is_function, bins))
    pooled = pooled_sd(values[is_function], values[~is_function])
    return ClassEffect(
        n_function=int(is_function.sum()), n_content=int((~is_function).sum()),
        mean_function=float(values[is_function].mean()),
        mean_content=float(values[~is_function].mean()), **effect,
        p_value=class_difference_p(values, is_function, None, n_perm, seed),
        n_bins=int(bins.max() + 1), binned_diff=binned,
        binned_d=float(binned / pooled) if pooled else float("nan"),
        p_binned=class_difference_p(values, is_function, bins, n_perm, seed))


def binned_effects(table: pd.DataFrame, n_bins: int = 5) -> pd.DataFrame:
    """Per frequency bin: token counts, mean pref of each class, their difference."""
    sub = _function_content(table)
    bins = frequency_bins(sub["log_count"].to_numpy(), n_bins)
    rows = []
    for b in range(bins.max() + 1):
        part = sub[bins == b]
        f, c = (part.loc[part["word_class"] == k, "pref"] for k in ("function",
                                                                    "content"))
        rows.append({"bin": b, "min count": int(part["count"].min()),
                     "max count": int(part["count"].max()), "n function": len(f),
                     "n content": len(c), "mean function": f.mean(),
                     "mean content": c.mean(), "difference": f.mean() - c.mean()})
    return pd.DataFrame(rows)


def class_effect_dict(effect: ClassEffect) -> dict:
    """A :class:`ClassEffect` as plain JSON-able numbers."""
    return {**asdict(effect), "function_tower": effect.function_tower}


# --- the pre-registered test of claim 4 -----------------------------------------------


@dataclass(frozen=True)
class PosTest:
    """Chapter 10's pre-registered part-of-speech test on one run.

    Function against content words, on the *centred* preference (global gap,
    difficulty and log frequency regressed out,
    :func:`twotower.analysis.preference.centred_preference`), over word-initial pieces
    only (a ``##`` continuation inherits its word's tag without being that word),
    compared within strata of frequency x difficulty (quantile bins of log count and of
    mean loss), with the labels permuted within strata. ``diff`` > 0: function words
    have the higher centred pref (they lean to tower A).
    """

    n_function: int
    n_content: int
    diff: float  # stratified mean difference (nats)
    d: float  # diff / pooled standard deviation
    p_value: float
    n_strata: int


def pos_test(preference: pd.DataFrame, upos: dict[int, tuple[str, float, int]],
             n_perm: int = 2000, n_bins: int = 5, n_difficulty: int = 3,
             seed: int = 0) -> PosTest:
    """:class:`PosTest` of one run's ``preference.csv`` (indexed by id)."""
    table = pos_table(preference, upos, values=centred_preference(preference))
    if "token" in table:
        table = table[~table["token"].astype(str).str.startswith("##")]
    sub = _function_content(table)
    values = sub["pref"].to_numpy(float)
    is_function = (sub["word_class"] == "function").to_numpy()
    require(is_function.sum() >= 2 and (~is_function).sum() >= 2, "the test needs "
            "function and content words; is the UD tokenizer the run's tokenizer?")
    loss = -(preference.loc[sub.index, "ll_a"] + preference.loc[sub.index, "ll_b"]) / 2
    strata = frequency_bins(sub["log_count"].to_numpy(), n_bins) * n_difficulty + \
        frequency_bins(loss.to_numpy(float), n_difficulty)
    diff = float(class_difference(values, is_function, strata))
    pooled = pooled_sd(values[is_function], values[~is_function])
    return PosTest(int(is_function.sum()), int((~is_function).sum()), diff,
                   diff / pooled if pooled else float("nan"),
                   class_difference_p(values, is_function, strata, n_perm, seed),
                   int(np.unique(strata).size))


@dataclass(frozen=True)
class PosVerdict:
    """The pre-registered test over the seeds of one condition.

    It *holds* when every seed's :class:`PosTest` has p < ``alpha`` and the difference
    points the same way in every seed once the seeds' tower labels are aligned by
    their preferences (:func:`twotower.analysis.across_seeds.seed_stability`).
    ``p_value`` is the largest seed's p (an intersection-union test: all must reject);
    ``value`` the mean aligned d, ``low``/``high`` the smallest and largest aligned d.
    """

    seeds: tuple[int, ...]
    tests: tuple[PosTest, ...]
    signs: tuple[float, ...]
    value: float
    low: float
    high: float
    p_value: float
    holds: bool


def pos_verdict(runs, upos: dict[int, tuple[str, float, int]], n_perm: int = 2000,
                seed: int = 0, alpha: float = 0.05) -> PosVerdict:
    """:class:`PosVerdict` of ``runs`` (RunPreference, one per seed)."""
    signs = seed_stability(runs, n_perm=0).signs if len(runs) > 1 else np.ones(1)
    tests = tuple(pos_test(run.preference, upos, n_perm, seed=seed) for run in runs)
    aligned = np.array([s * t.d for s, t in zip(signs, tests)])
    p = max(t.p_value for t in tests)
    same_way = bool(np.all(aligned > 0) or np.all(aligned < 0))
    return PosVerdict(tuple(r.seed for r in runs), tests, tuple(map(float, signs)),
                      float(aligned.mean()), float(aligned.min()),
                      float(aligned.max()), float(p), bool(p < alpha and same_way))
