"""Does the preference follow the planted line? Scores of pref against known labels.

Introduced in chapter 2 (*A language with a planted division*).

The planted language (:mod:`twotower.data.synthetic`) labels every id ``local`` or
``topic``; a model that divides its work along that line gives the local tokens one
sign of ``pref`` and the topic tokens the other. These scores read the split off a
:func:`twotower.analysis.preference.token_preference` table:

* :func:`planted_split_score` -- |point-biserial r| between pref and the label, with a
  bootstrap interval over tokens and a permutation p (:mod:`twotower.analysis.stats`);
* :func:`split_shares` -- which tower took the local tokens, and how cleanly;
* :func:`local_topic_gap` -- by how much: the mean pref of the local tokens minus that
  of the topic tokens, in nats.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from twotower.analysis.stats import (bootstrap_correlation, permutation_p,
                                     shuffled_labels)


class SplitScore(NamedTuple):
    """``r``: |point-biserial r| between pref and the local/topic label; ``ci``: its
    bootstrap interval (tokens resampled, sign aligned); ``p``: permutation p-value."""

    r: float
    ci: tuple[float, float]
    p: float


def point_biserial(values: np.ndarray, in_group: np.ndarray) -> float:
    """Pearson r between ``values (n,)`` and a 0/1 group indicator ``(n,)``."""
    values, in_group = np.asarray(values, float), np.asarray(in_group, float)
    if values.size < 3 or values.std() == 0 or in_group.std() == 0:
        return float("nan")
    return float(np.corrcoef(values, in_group)[0, 1])


def permutation_test(values: np.ndarray, in_group: np.ndarray, n_perm: int = 2000,
                     seed: int = 0) -> tuple[float, np.ndarray]:
    """Two-sided permutation test of the point-biserial r (labels shuffled).

    Returns:
        ``(p, null)``: p-value ``(1 + #{|r_perm| >= |r|}) / (1 + n_perm)`` and the
        ``(n_perm,)`` null |r| values.
    """
    values, in_group = np.asarray(values, float), np.asarray(in_group, float)
    shuffled = shuffled_labels(in_group, n_perm, seed)  # (n_perm, n)
    v = (values - values.mean()) / values.std()
    g = shuffled - shuffled.mean(1, keepdims=True)
    null = np.abs(g @ v / (values.size * g.std(1)))
    return permutation_p(point_biserial(values, in_group), null), null


def local_topic_prefs(pref_df: pd.DataFrame, labels: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Finite prefs of the local and topic tokens ``(n,)``, and their 0/1 "is local"
    label ``(n,)``."""
    labels = np.asarray(labels)
    ids = pref_df.index.to_numpy()
    pref = pref_df["pref"].to_numpy(float)
    keep = np.isfinite(pref) & np.isin(labels[ids], ("local", "topic"))
    return pref[keep], (labels[ids][keep] == "local").astype(float)


def planted_split_score(pref_df: pd.DataFrame, labels: np.ndarray, n_boot: int = 1000,
                        n_perm: int = 2000, seed: int = 0) -> SplitScore:
    """How well the preference separates the local from the topic tokens.

    Args:
        pref_df: from :func:`twotower.analysis.preference.token_preference` (index =
            id).
        labels: ``(V,)`` per-id labels,
            ``labels`` of :class:`twotower.data.synthetic.PlantedLanguage`.

    Returns:
        :class:`SplitScore` ``(r, ci, p)``. Tower labels are arbitrary, so ``r`` is
        |r| and the interval is of the sign-aligned r.
    """
    pref, is_local = local_topic_prefs(pref_df, labels)
    r, low, high = bootstrap_correlation(pref, is_local, n_boot=n_boot, seed=seed)
    p, _ = permutation_test(pref, is_local, n_perm=n_perm, seed=seed)
    if r < 0:
        low, high = -high, -low
    return SplitScore(abs(r), (float(low), float(high)), p)


def _local_minus_topic(pref: np.ndarray, is_local: np.ndarray) -> float:
    return float(pref[is_local == 1].mean() - pref[is_local == 0].mean())


def local_topic_gap(pref_df: pd.DataFrame, labels: np.ndarray) -> float:
    """Mean pref of the local tokens minus that of the topic tokens (nats): > 0 when
    tower A took the local process. Its size is :func:`split_shares`' ``separation``."""
    return _local_minus_topic(*local_topic_prefs(pref_df, labels))


def split_shares(pref_df: pd.DataFrame, labels: np.ndarray) -> dict:
    """Which tower took the local tokens, how cleanly, and by how much.

    Returns:
        ``local_tower`` (``"A"`` or ``"B"``: the tower that prefers more local tokens),
        ``share_local`` (share of the local tokens it prefers), ``share_topic`` (share
        of the topic tokens the other tower prefers), ``balanced``: the balanced
        accuracy of the sign of pref as a guess of the label, either way round (0.5 is
        chance; a global gap alone cannot raise it), and ``separation``: the absolute
        difference between the mean pref of the local and of the topic tokens, in nats
        (the size of :func:`local_topic_gap`).
    """
    pref, is_local = local_topic_prefs(pref_df, labels)
    a_local = float((pref[is_local == 1] > 0).mean())
    a_topic = float((pref[is_local == 0] > 0).mean())
    tower = "A" if a_local >= 0.5 else "B"
    share_local = a_local if tower == "A" else 1 - a_local
    share_topic = 1 - a_topic if tower == "A" else a_topic
    accuracy = (a_local + 1 - a_topic) / 2
    return {"local_tower": tower, "share_local": share_local,
            "share_topic": share_topic, "balanced": max(accuracy, 1 - accuracy),
            "separation": abs(_local_minus_topic(pref, is_local))}
