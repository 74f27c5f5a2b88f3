"""Which tower predicts a labelled set of positions better: the mean of
``ll_A - ll_B`` per label, with its standard error over windows.

Introduced in chapter 12 (*Rare-token neurons in each tower*), where the labels are the
frequency halves of the targets, and used again in chapter 13 (*One language per
tower*), where they are the languages of the text.
"""

from __future__ import annotations

import numpy as np

from twotower.analysis.neuron_stats import clustered_means
from twotower.data.scores import TokenScores
from twotower.errors import require


def _clustered_gaps(scores: TokenScores, labels: np.ndarray, n_labels: int,
                    groups: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """:func:`twotower.analysis.neuron_stats.clustered_means` of ``ll_A - ll_B`` per
    label."""
    require(groups is not None,
            "no window per scored position (groups is None): these scores were saved "
            "by an older twotower; score the run again to get TokenScores.window")
    labels = np.asarray(labels)
    require(labels.shape == scores.target.shape,
            f"{labels.size} labels for {scores.target.size} scored positions")
    diff = scores.ll[0].astype(np.float64) - scores.ll[1]
    return clustered_means(diff, labels, groups, n_labels)


def gap_by_label(scores: TokenScores, labels: np.ndarray, n_labels: int,
                 groups: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean ``ll_A - ll_B`` over the scored positions of each label, with its SE.

    The standard error treats each group (window) as one independent draw: positions
    of one passage share their context, and an SE over positions would be too small
    (:func:`twotower.analysis.neuron_stats.clustered_means`).

    Args:
        scores: paired per-position readout scores.
        labels: (N,) label of each scored position (-1: none), e.g. the frequency half
            of its target or the language of its text.
        n_labels: number of labels.
        groups: (N,) window (or other cluster) of each scored position, e.g.
            ``scores.window``.

    Returns:
        ``(gap, se, count)``, each (n_labels,); gap > 0 means tower A is better there.
        The SE is NaN for a label held by fewer than two windows.

    Raises:
        TwotowerError: ``groups`` is None (scores saved before windows were kept).
    """
    gap, cov, count = _clustered_gaps(scores, labels, n_labels, groups)
    return gap, np.sqrt(np.diag(cov)), count


def gap_difference(scores: TokenScores, labels: np.ndarray, groups: np.ndarray | None,
                   first: int = 0, second: int = 1) -> tuple[float, float]:
    """Gap of label ``first`` minus gap of label ``second``, with its SE over windows.

    Rare and common targets share windows, so their gaps are correlated; the SE comes
    from their joint covariance over windows, not from ``hypot`` of the two SEs.

    Args:
        scores, labels, groups: as for :func:`gap_by_label`.
        first, second: the two labels.

    Returns:
        ``(difference, se)``.
    """
    n_labels = max(first, second) + 1
    gap, cov, _ = _clustered_gaps(scores, labels, n_labels, groups)
    variance = cov[first, first] + cov[second, second] - 2 * cov[first, second]
    return float(gap[first] - gap[second]), float(np.sqrt(variance))
