"""Tokens out: token cache, windows, batches.

Introduced in chapter 3 (*Data and tokens*).

The pipeline is :func:`~twotower.data.corpus.load_corpus` -> ``split_articles``
(validation held out by article) -> a WordPiece tokenizer trained on the training
articles -> ``tokenize_articles`` (ids cached on disk as a memmap, so a corpus is
tokenized once) -> ``make_windows`` (``[CLS]`` + ``max_len - 1`` tokens of one article,
PAD at the end). :func:`prepare_data` runs all of it from a
:class:`~twotower.config.DataConfig`. The authors' windows cross document boundaries
(bug 6 of chapter 11's audit); ours never do.
"""

from __future__ import annotations

import array
import functools
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from twotower import atomic
from twotower.config import DataConfig
from twotower.errors import TwotowerError
from twotower.data.tokenizer import SpecialIds, fingerprint, get_tokenizer
from twotower.data.tokenizer import padded_vocab_size, piece_spans

from twotower.data.corpus import (Corpus, default_cache_dir, load_corpus,  # noqa: F401
                                  split_articles, clean_wikitext, wikitext_articles)

log = logging.getLogger(__name__)

MIN_TAIL_TOKENS = 8  # a shorter last window of an article is mostly padding: dropped
BATCH_CHARS = 2**17  # characters of text handed to encode_batch at once (about)
_STREAM_VERSION = "stream-v1"  # bump when tokenize_articles changes its output


@dataclass(frozen=True, eq=False)
class TokenStream:
    """Articles' ids end to end; article ``i`` is ``ids[offsets[i]:offsets[i + 1]]``.

    Every paragraph is followed by ``[SEP]``, so a window shows where paragraphs end.
    """

    ids: np.ndarray  # (N,) uint16 or uint32, usually a read-only np.memmap
    offsets: np.ndarray  # (n_articles + 1,) int64

    @property
    def n_articles(self) -> int:
        return len(self.offsets) - 1


@dataclass(frozen=True, eq=False)
class PreparedData:
    """Everything training needs from the data side."""

    tokenizer: Tokenizer
    special: SpecialIds
    vocab_size: int  # tokenizer size padded up to a multiple of 64: the model's V
    train: np.ndarray  # (N_train, T) int64 windows
    val: np.ndarray  # (N_val, T) int64 windows, in corpus order
    corpus_name: str
    source: str  # "online", "bundled" or "local"
    n_train_tokens: int  # non-PAD tokens in train ([CLS] included)
    n_val_tokens: int  # non-PAD tokens in val
    val_article: np.ndarray | None = None  # (N_val,) article of each val window


def tokenize_articles(
    articles: Sequence[str],
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike | None = None,
) -> TokenStream:
    """Tokenize articles once; later calls with the same texts and tokenizer memmap it.

    Files live in ``cache_dir/tokens``, named by a hash of the texts and the
    tokenizer's JSON. Each file is written under a temporary name and renamed, and the
    small ``.json`` that marks an entry complete is renamed last, so a crash never
    leaves a cache entry that looks valid. Paragraphs reach the tokenizer in batches of
    about :data:`BATCH_CHARS` characters, a long one cut between words into pieces
    (:func:`~twotower.data.tokenizer.piece_spans`, the same ids as whole), and ids go
    to the file batch by batch: memory stays bounded however long a paragraph is.
    """
    sep = SpecialIds.from_tokenizer(tokenizer).sep
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = np.dtype(np.uint16 if vocab < 2**16 else np.uint32)
    folder = Path(cache_dir or default_cache_dir()) / "tokens"
    key = fingerprint([_STREAM_VERSION, tokenizer.to_str(), *articles])[:32]
    ids_path, offsets_path, meta_path = (folder / f"{key}{ext}"
                                         for ext in (".ids", ".offsets.npy", ".json"))
    cached = _read_stream(ids_path, offsets_path, meta_path, dtype)
    if cached is not None:
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    literals = _special_literals(tokenizer)
    lengths = np.zeros(len(articles), dtype=np.int64)
    paragraph_has_ids = False
    with atomic.replacing(ids_path) as tmp_ids, open(tmp_ids, "wb") as out:
        for batch in _batches(_pieces(articles), BATCH_CHARS):
            texts = [_defuse(articles[a][i:j], literals) for a, i, j, _ in batch]
            encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
            ids = array.array("H" if dtype == np.uint16 else "I")  # 2 or 4 bytes
            for (article, _, _, ends_paragraph), encoding in zip(batch, encodings):
                before = len(ids)
                ids.extend(encoding.ids)
                paragraph_has_ids |= len(ids) > before
                if ends_paragraph and paragraph_has_ids:
                    ids.append(sep)
                if ends_paragraph:
                    paragraph_has_ids = False
                lengths[article] += len(ids) - before
            out.write(ids)  # machine order, as np.memmap reads it back
    offsets = np.zeros(len(articles) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    with atomic.replacing(offsets_path) as tmp, open(tmp, "wb") as f:
        np.save(f, offsets)
    meta = {"n_tokens": int(offsets[-1]), "dtype": dtype.name}
    atomic.write_text(meta_path, json.dumps(meta))
    return _read_stream(ids_path, offsets_path, meta_path, dtype)


def _pieces(articles: Sequence[str]) -> Iterator[tuple[int, int, int, bool]]:
    """``(article, start, end, ends_paragraph)`` for every piece of every paragraph:
    each paragraph cut by :func:`~twotower.data.tokenizer.piece_spans` (an empty one
    gives no piece), never copied whole."""
    for a, article in enumerate(articles):
        start = 0
        while start <= len(article):
            end = article.find("\n", start)
            end = len(article) if end == -1 else end
            spans = list(piece_spans(article, start, end))
            for k, (i, j) in enumerate(spans):
                yield a, i, j, k == len(spans) - 1
            start = end + 1


def _batches(pieces: Iterator[tuple[int, int, int, bool]], chars: int
             ) -> Iterator[list[tuple[int, int, int, bool]]]:
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += piece[2] - piece[1]
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _special_literals(tokenizer: Tokenizer) -> tuple[str, ...]:
    special = SpecialIds.from_tokenizer(tokenizer)
    return tuple(tokenizer.id_to_token(i) for i in special.all if i != special.unk)


def _defuse(text: str, literals: tuple[str, ...]) -> str:
    # A literal "[SEP]" or "[PAD]" in the text would become a special id and fake a
    # paragraph end or padding; split it so it is tokenized as plain punctuation + word.
    if "[" in text:
        for literal in literals:
            text = text.replace(literal, f"{literal[0]} {literal[1:]}")
    return text


def _read_stream(ids_path: Path, offsets_path: Path, meta_path: Path,
                 dtype: np.dtype) -> TokenStream | None:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        offsets = np.load(offsets_path)
        n_tokens = int(meta["n_tokens"])
        complete = (meta["dtype"] == dtype.name and offsets[-1] == n_tokens
                    and ids_path.stat().st_size == n_tokens * dtype.itemsize)
    except (OSError, ValueError, KeyError, IndexError):
        return None
    if not complete:
        return None
    if n_tokens == 0:  # mmap cannot map an empty file
        return TokenStream(np.zeros(0, dtype=dtype), offsets)
    return TokenStream(np.memmap(ids_path, dtype=dtype, mode="r"), offsets)


def make_windows(stream: TokenStream, max_len: int, special: SpecialIds) -> np.ndarray:
    """Cut each article into windows ``[CLS] t_1 .. t_{max_len-1}``, PAD at the end.

    A window never holds two articles. An article's last window is dropped when it has
    fewer than 8 real tokens (half a window for ``max_len < 17``), unless it is the
    article's only window.

    Returns:
        (N, T) int64 windows, ``T = max_len``, in corpus order.
    """
    body = max_len - 1
    article = window_articles(stream, max_len)
    first = np.searchsorted(article, article)  # the article's first window
    starts = stream.offsets[article] + (np.arange(len(article)) - first) * body
    ends = stream.offsets[article + 1]
    windows = np.full((len(article), max_len), special.pad, dtype=np.int64)
    windows[:, 0] = special.cls
    rows_per_chunk = max(1, 2**22 // max_len)  # bounds the temporary index arrays
    for lo in range(0, len(article), rows_per_chunk):
        hi = lo + rows_per_chunk
        index = starts[lo:hi, None] + np.arange(body)  # (n, T-1)
        real = index < ends[lo:hi, None]
        tokens = np.asarray(stream.ids[np.minimum(index, len(stream.ids) - 1)])
        windows[lo:hi, 1:] = np.where(real, tokens, special.pad)
    return windows


def window_articles(stream: TokenStream, max_len: int) -> np.ndarray:
    """The article of each window :func:`make_windows` cuts: (N,) int, non-decreasing.

    Analyses that split text into independent parts (chapter 9's halves) use it, since
    windows of one article share its topic and its words.
    """
    if max_len < 2:
        raise TwotowerError(
            f"max_len must be at least 2 ([CLS] + one token), got {max_len}")
    body = max_len - 1
    lengths = np.diff(stream.offsets)
    n_windows = -(-lengths // body)  # 0 for an empty article
    tail = lengths - (n_windows - 1) * body
    n_windows -= (n_windows > 1) & (tail < min(MIN_TAIL_TOKENS, max(1, body // 2)))
    return np.repeat(np.arange(len(lengths)), n_windows)


def prepare_data(cfg: DataConfig, cache_dir: str | os.PathLike | None = None
                 ) -> PreparedData:
    """Load, split, tokenize and window the corpus that ``cfg`` describes.

    Raises:
        TwotowerError: for bad settings, or a split smaller than one window.
    """
    cache = Path(cache_dir or default_cache_dir())
    if cfg.max_len < 2:  # checked before the slow steps, not after them
        raise TwotowerError(f"max_len must be at least 2 ([CLS] + one token), got "
                            f"{cfg.max_len}")
    if cfg.max_train_tokens < 0:
        raise TwotowerError(f"max_train_tokens must be >= 0 (0 keeps all), got "
                            f"{cfg.max_train_tokens}")
    corpus = load_corpus(cfg.corpus, cfg.source, cache)
    train_articles, val_articles = split_articles(corpus.articles, cfg.val_fraction,
                                                  cfg.split_seed)
    tokenizer = get_tokenizer(cfg, train_articles, cache)
    special = SpecialIds.from_tokenizer(tokenizer)
    windows, articles_of = {}, {}
    for split, articles, fix in (
        ("training", train_articles, "lower max_len or val_fraction"),
        ("validation", val_articles, "lower max_len or raise val_fraction"),
    ):
        stream = tokenize_articles(articles, tokenizer, cache)
        if len(stream.ids) < cfg.max_len - 1:
            raise TwotowerError(
                f"corpus has only {len(stream.ids)} tokens in the {split} split, "
                f"fewer than one window of max_len={cfg.max_len}; {fix}, or use a "
                "larger corpus"
            )
        windows[split] = make_windows(stream, cfg.max_len, special)
        articles_of[split] = window_articles(stream, cfg.max_len)
    train = windows["training"]
    if cfg.max_train_tokens:
        order = np.random.default_rng(cfg.split_seed).permutation(len(train))
        real = np.count_nonzero(train != special.pad, axis=1)[order]  # no copy
        keep = max(1, int(np.searchsorted(np.cumsum(real), cfg.max_train_tokens,
                                          side="right")))
        train = train[np.sort(order[:keep])]
    val = windows["validation"]
    data = PreparedData(
        tokenizer=tokenizer, special=special, vocab_size=padded_vocab_size(tokenizer),
        train=train, val=val, corpus_name=corpus.name, source=corpus.source,
        n_train_tokens=int(np.count_nonzero(train != special.pad)),
        n_val_tokens=int(np.count_nonzero(val != special.pad)),
        val_article=articles_of["validation"],
    )
    log.info("data: %s (%s), %d train / %d val windows of %d, %d / %d tokens",
             data.corpus_name, data.source, len(train), len(val), cfg.max_len,
             data.n_train_tokens, data.n_val_tokens)
    return data


def batch_windows(windows: np.ndarray, step: int, batch_size: int, seed: int
                  ) -> np.ndarray:
    """The training batch of optimiser step ``step``, computable without steps 0..s-1.

    Steps walk through an endless sequence of epochs, each a permutation of the
    windows seeded by ``(seed, epoch)``; a batch may straddle two epochs. So a resumed
    run sees exactly the batches an uninterrupted one would.

    Args:
        windows: (N, T) windows.

    Returns:
        (B, T) copy of the chosen windows, ``B = batch_size``.
    """
    n = len(windows)
    if n == 0 or batch_size < 1 or step < 0:
        raise TwotowerError(f"cannot draw batch {step} of {batch_size} from {n} "
                            "windows; need windows, batch_size >= 1 and step >= 0")
    positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
    epochs, within = np.divmod(positions, n)
    index = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        here = epochs == epoch
        index[here] = _epoch_permutation(seed, int(epoch), n)[within[here]]
    return windows[index]


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    permutation = np.random.default_rng([seed, epoch]).permutation(n)
    permutation.flags.writeable = False  # shared by the cache: nobody may change it
    return permutation


def iter_batches(windows: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive (B, T) batches in order, for evaluation; the last may be smaller."""
    if batch_size < 1:
        raise TwotowerError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(windows), batch_size):
        yield windows[start:start + batch_size]

