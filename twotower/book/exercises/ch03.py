"""Exercise checks of chapter 3 (*Data and tokens*).

Introduced in chapter 3 (*Data and tokens*): the rank-frequency curve of a corpus, the
fertility of WordPiece (tokens per word), and windows that cross an article boundary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twotower.book.exercises.framework import Attempt, exercise
from twotower.data.tokenizer import SpecialIds, train_wordpiece
from twotower.data.windows import TokenStream, make_windows

# --- rank frequency -------------------------------------------------------------------


def reference_rank_frequency(ids, special_ids=()):
    """The exercise's solution: counts of the non-special ids seen, most frequent
    first."""
    ids = np.asarray(ids, dtype=np.int64).ravel()
    counts = np.bincount(ids)
    special = np.asarray(special_ids, dtype=np.int64)
    counts[special[special < counts.size]] = 0
    return np.sort(counts[counts > 0])[::-1]


def _rank_frequency_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(30)
    cases = []
    for n, vocab, special in ((2000, 50, (0, 1, 2, 3, 4)), (500, 300, ()),
                              (5000, 1000, (0, 100, 101, 102, 103))):
        ids = np.minimum(rng.zipf(1.3, n), vocab) - 1  # ids 0 .. vocab-1, Zipf-like
        cases.append(dict(ids=ids, special_ids=special))
    windows = rng.integers(5, 40, size=(8, 16))  # 2-D windows with [CLS] and PAD
    windows[:, 0], windows[:, 12:] = 2, 0
    cases.append(dict(ids=windows, special_ids=(0, 1, 2, 3, 4)))
    return cases


@exercise(reference_rank_frequency, hint=(
    "Hint: np.bincount counts every id (flatten 2-D windows first); set the counts of "
    "the special ids to 0, drop the zeros (ids never seen) and sort in descending "
    "order: element r-1 is the frequency of rank r."))
def check_rank_frequency(attempt: Attempt) -> str:
    """Check ``rank_frequency(ids, special_ids)``: how often each token id occurs,
    special ids left out, sorted from the most to the least frequent, without zeros.
    """
    return attempt.compare(
        _rank_frequency_cases(),
        lambda c: f"ids of shape {c['ids'].shape}, special ids {c['special_ids']}",
        "cases, special ids and unseen ids left out", atol=0)


# --- fertility ------------------------------------------------------------------------

_FERTILITY_TEXT = (
    "the european lobster is a species of clawed lobster from the eastern atlantic "
    "ocean . it is closely related to the american lobster . lobsters are blue in life "
    "and become red on cooking . the female carries the eggs for up to a year . "
)


def reference_fertility(words, tokenizer):
    """The exercise's solution: WordPiece tokens per word, without [CLS] and [SEP]."""
    encodings = tokenizer.encode_batch(list(words), add_special_tokens=False)
    return np.array([len(encoding.ids) for encoding in encodings], dtype=np.int64)


def _fertility_cases() -> list[dict[str, Any]]:
    tokenizer = train_wordpiece([_FERTILITY_TEXT] * 5, vocab_size=120)
    return [dict(words=["the", "lobster", "lobsters", "Cooking", "eggs"],
                 tokenizer=tokenizer),
            dict(words=["homarus", "gammarus", "ζ", "carapace", "a", "hard-shelled"],
                 tokenizer=tokenizer),
            dict(words=_FERTILITY_TEXT.split()[:30], tokenizer=tokenizer)]


@exercise(reference_fertility, hint=(
    "Hint: tokenizer.encode(word, add_special_tokens=False).ids holds the word's "
    "pieces (encode adds [CLS] and [SEP] unless told not to); return one count per "
    "word, in order (encode_batch does all words at once)."))
def check_fertility(attempt: Attempt) -> str:
    """Check ``fertility(words, tokenizer)``: the number of WordPiece tokens of each
    word, without ``[CLS]`` and ``[SEP]``.
    """
    return attempt.compare(_fertility_cases(), lambda c: f"words {c['words'][:4]}...",
                           "word lists, unknown and split words included", atol=0)


# --- windows crossing articles --------------------------------------------------------


def reference_windows_crossing_articles(label_windows, special_ids):
    """The exercise's solution: True for a window whose real tokens come from more
    than one article."""
    windows = np.asarray(label_windows, dtype=np.int64)
    real = ~np.isin(windows, np.asarray(special_ids, dtype=np.int64))
    big = np.iinfo(np.int64).max
    lowest = np.where(real, windows, big).min(axis=1)
    highest = np.where(real, windows, -big).max(axis=1)
    return real.any(axis=1) & (highest > lowest)


def _crossing_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(31)
    special = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)
    cases = []
    for n_articles, max_len in ((12, 16), (40, 9)):
        lengths = rng.integers(1, 60, n_articles)
        offsets = np.r_[0, np.cumsum(lengths)]
        labels = np.repeat(np.arange(n_articles), lengths) + 10  # article of each token
        windows = make_windows(TokenStream(labels, offsets), max_len, special)
        cases.append(dict(label_windows=windows, special_ids=special.all))
        body = max_len - 1  # the authors' packing: cut the stream, ignore articles
        packed = labels[: labels.size // body * body].reshape(-1, body)
        packed = np.c_[np.full(len(packed), special.cls), packed]
        cases.append(dict(label_windows=packed, special_ids=special.all))
    return cases


@exercise(reference_windows_crossing_articles, hint=(
    "Hint: in label_windows every real token is the number of its article; ignore the "
    "special ids ([CLS], PAD, ...) and flag a row whose remaining labels are not all "
    "equal (compare the row's min and max over real tokens)."))
def check_windows_crossing_articles(attempt: Attempt) -> str:
    """Check ``windows_crossing_articles(label_windows, special_ids)``: one bool per
    window, True when its non-special tokens come from more than one article.
    """
    return attempt.compare(_crossing_cases(),
                           lambda c: f"{len(c['label_windows'])} windows",
                           "window sets, ours and naively packed ones", atol=0)
