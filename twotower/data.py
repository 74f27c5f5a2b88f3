"""Text in, token windows out: corpus loading, article split, token cache, windows.

Introduced in chapter 2 (*From text to token windows*).

The pipeline is ``load_corpus`` (WikiText from the Hub, the bundled copy, or a folder
of your own ``.txt`` files) -> ``split_articles`` (validation held out by article, so no
article is on both sides) -> a WordPiece tokenizer trained on the training articles ->
``tokenize_articles`` (ids cached on disk as a memmap, so a corpus is tokenized once) ->
``make_windows`` (``[CLS]`` + ``max_len - 1`` tokens of one article, PAD at the end).
:func:`prepare_data` runs all of it from a :class:`~twotower.config.DataConfig`.
The authors' windows cross document boundaries (PAPER.md 1.4.6); ours never do.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .config import DataConfig
from .errors import TwotowerError
from .tokenizer import SpecialIds, fingerprint, get_tokenizer, hub_is_reachable
from .tokenizer import padded_vocab_size

log = logging.getLogger(__name__)

HUB_CONFIGS = {"wikitext-2": "wikitext-2-raw-v1", "wikitext-103": "wikitext-103-raw-v1"}
BUNDLED_FILES = {"wikitext-2": ("valid.txt.xz", "test.txt.xz")}
SOURCES = ("auto", "hub", "bundled", "local")
PARAGRAPHS_PER_ARTICLE = 20  # plain text without title lines is cut into such articles
MIN_TAIL_TOKENS = 8  # a shorter last window of an article is mostly padding: dropped
_STREAM_VERSION = "stream-v1"  # bump when tokenize_articles changes its output

# " = Title = " starts an article; " = = Section = = " does not.
_TITLE = re.compile(r"^= (?!=).*(?<!=) =$")
# WikiText splits hyphens and number separators into words; BERT's vocabulary does not.
_DETOKENIZE = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), ("<unk>", "[UNK]"))


@dataclass(frozen=True)
class Corpus:
    """A list of articles; each is its paragraphs joined with ``"\\n"``, title first."""

    name: str
    source: str  # "hub", "bundled" or "local"
    articles: list[str]


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
    source: str  # "hub", "bundled" or "local"
    n_train_tokens: int  # non-PAD tokens in train ([CLS] included)
    n_val_tokens: int  # non-PAD tokens in val


def default_cache_dir() -> Path:
    """``$TWOTOWER_CACHE`` if set, else ``~/.cache/twotower``."""
    return Path(os.environ.get("TWOTOWER_CACHE") or Path.home() / ".cache" / "twotower")


def clean_wikitext(line: str) -> str:
    """Undo WikiText's word-level artefacts: ``3 @.@ 5`` -> ``3.5``, ``<unk>`` -> [UNK].

    ``[UNK]`` is the tokenizer's unknown token, so a word WikiText replaced by ``<unk>``
    becomes one unknown id instead of the three pieces ``<``, ``unk``, ``>``.
    """
    for old, new in _DETOKENIZE:
        line = line.replace(old, new)
    return line


def wikitext_articles(lines: Iterable[str]) -> tuple[list[str], int]:
    """Group WikiText lines into articles at title lines.

    A title is a ``= Title =`` line between blank lines; the blank-line condition keeps
    equations such as ``= 1 <unk> and <unk> C =`` inside an article. Lines are cleaned
    with :func:`clean_wikitext`; blank lines are dropped.

    Returns:
        The articles, and how many title lines were found.
    """
    articles: list[str] = []
    paragraphs: list[str] = []
    pending_title = None  # a title-shaped line: a title only if a blank line follows
    previous_blank, n_titles = True, 0
    for raw in _with_end(lines):
        line = clean_wikitext(raw).strip()
        if pending_title is not None:
            if not line:
                n_titles += 1
                if paragraphs:
                    articles.append("\n".join(paragraphs))
                paragraphs = []
            paragraphs.append(pending_title)
            pending_title = None
        if line and previous_blank and _TITLE.match(line):
            pending_title = line
        elif line:
            paragraphs.append(line)
        previous_blank = not line
    if paragraphs:
        articles.append("\n".join(paragraphs))
    return articles, n_titles


def _with_end(lines: Iterable[str]) -> Iterator[str]:
    yield from lines
    yield ""


def load_corpus(
    corpus: str = "wikitext-2",
    source: str = "auto",
    cache_dir: str | os.PathLike | None = None,
) -> Corpus:
    """Load a corpus as a list of articles.

    Args:
        corpus: ``"wikitext-2"``, ``"wikitext-103"``, or the path of a UTF-8 ``.txt``
            file or of a folder of them (searched recursively, hidden folders skipped).
        source: ``"hub"`` (``datasets.load_dataset`` of Salesforce/wikitext, train +
            validation + test), ``"bundled"`` (WikiText-2 validation + test shipped with
            the package, read through the same ``datasets`` code path), or ``"auto"``
            (the Hub if it answers within 2 s, else the bundled copy). Paths need
            ``"auto"`` or ``"local"``.
        cache_dir: where ``datasets`` keeps the bundled copy's Arrow cache; defaults to
            :func:`default_cache_dir`. Hub downloads use the usual Hugging Face cache.

    Raises:
        TwotowerError: unknown corpus or source, missing path, non-UTF-8 or empty text,
            a corpus that is not bundled while offline.
    """
    if source not in SOURCES:
        raise TwotowerError(
            f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if corpus not in HUB_CONFIGS:
        if source not in ("auto", "local"):
            raise TwotowerError(
                f"source={source!r} is only for {', '.join(HUB_CONFIGS)}; "
                f"use source='auto' for the local path {corpus!r}")
        return _load_local(Path(corpus))
    if source == "local":
        raise TwotowerError(f"source='local' needs a path, but {corpus!r} names a Hub "
                            "corpus; use source='auto', 'hub' or 'bundled'")
    if source == "auto":
        online = hub_is_reachable()
        if not online and corpus not in BUNDLED_FILES:
            raise TwotowerError(
                f"{corpus} is not bundled and the Hugging Face Hub is unreachable; go "
                "online, or use corpus='wikitext-2' (bundled)")
        source = "hub" if online else "bundled"
        log.info("corpus %s: using the %s copy%s", corpus, source,
                 "" if online else " (Hugging Face Hub unreachable)")
    if source == "hub":
        return _load_hub(corpus)
    return _load_bundled(corpus, Path(cache_dir or default_cache_dir()))


def _load_hub(corpus: str) -> Corpus:
    import datasets

    # With HF_DATASETS_OFFLINE=1, datasets reads its own cache: let it try.
    cached_only = os.environ.get("HF_DATASETS_OFFLINE", "") in ("1", "true", "on")
    if not cached_only and not hub_is_reachable():
        raise TwotowerError(
            f"cannot reach the Hugging Face Hub to download {corpus}; use "
            "source='bundled' (wikitext-2 only) or source='auto'")
    try:
        splits = datasets.load_dataset("Salesforce/wikitext", HUB_CONFIGS[corpus])
    except (ConnectionError, OSError) as error:
        raise TwotowerError(f"could not load {corpus} from the Hugging Face Hub "
                            f"({type(error).__name__}); retry, or use source='bundled'"
                            ) from error
    articles = [article for split in ("train", "validation", "test")
                for article in wikitext_articles(splits[split]["text"])[0]]
    return _checked(Corpus(corpus, "hub", articles), f"the Hub's {corpus}")


def _load_bundled(corpus: str, cache_dir: Path) -> Corpus:
    import datasets

    if corpus not in BUNDLED_FILES:
        raise TwotowerError(f"{corpus} is not bundled (only {', '.join(BUNDLED_FILES)} "
                            "is); use source='hub' on a machine that is online")
    folder = resources.files(__package__) / "_data" / corpus
    files = [str(folder / name) for name in BUNDLED_FILES[corpus]]
    # datasets decompresses .xz itself; the Arrow cache stays in our cache folder.
    table = datasets.load_dataset("text", data_files=files, split="train",
                                  cache_dir=str(cache_dir / "datasets"))
    articles, _ = wikitext_articles(table["text"])
    return _checked(Corpus(corpus, "bundled", articles), f"the bundled {corpus}")


def _load_local(path: Path) -> Corpus:
    if not path.exists():
        raise TwotowerError(
            f"corpus {str(path)!r} is neither {' nor '.join(HUB_CONFIGS)} nor an "
            "existing .txt file or folder; check the path")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise TwotowerError(f"folder {str(path)!r} has no .txt files; put UTF-8 "
                                "text files ending in .txt in it")
    else:
        files = [path]
    articles: list[str] = []
    for file in files:
        lines = _read_utf8(file).splitlines()
        in_file, n_titles = wikitext_articles(lines)
        articles += in_file if n_titles else _paragraph_articles(lines)
    return _checked(Corpus(path.name or str(path), "local", articles), str(path))


def _read_utf8(file: Path) -> str:
    data = file.read_bytes()
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # Windows editors add one
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = bom + error.start
        raise TwotowerError(
            f"{file} is not UTF-8 (byte 0x{data[offset]:02x} at offset {offset}); "
            "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _paragraph_articles(lines: Sequence[str]) -> list[str]:
    """Blank-line-separated blocks are paragraphs; every 20 of them form an article."""
    paragraphs, block = [], []
    for line in (*lines, ""):
        line = clean_wikitext(line).strip()
        if line:
            block.append(line)
        elif block:
            paragraphs.append(" ".join(block))
            block = []
    return ["\n".join(paragraphs[i:i + PARAGRAPHS_PER_ARTICLE])
            for i in range(0, len(paragraphs), PARAGRAPHS_PER_ARTICLE)]


def _checked(corpus: Corpus, where: str) -> Corpus:
    if not corpus.articles:
        raise TwotowerError(f"corpus {where} is empty (no non-blank lines); "
                            "give it some text")
    return corpus


def split_articles(
    articles: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Hold out ``round(val_fraction * n)`` whole articles (at least 1 each side).

    The choice depends only on ``seed`` and the number of articles; both halves keep
    corpus order.

    Raises:
        TwotowerError: for fewer than 2 articles or a fraction outside (0, 1).
    """
    n = len(articles)
    if not 0.0 < val_fraction < 1.0:
        raise TwotowerError(f"val_fraction must be between 0 and 1 (exclusive), got "
                            f"{val_fraction}; 0.1 is usual")
    if n < 2:
        raise TwotowerError(f"corpus has {n} article(s) but a validation split needs "
                            "at least 2; add text, or split it into several .txt files")
    n_val = min(max(round(n * val_fraction), 1), n - 1)
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    train = [a for a, v in zip(articles, is_val) if not v]
    val = [a for a, v in zip(articles, is_val) if v]
    return train, val


def tokenize_articles(
    articles: Sequence[str],
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike | None = None,
) -> TokenStream:
    """Tokenize articles once; later calls with the same texts and tokenizer memmap it.

    Files live in ``cache_dir/tokens``, named by a hash of the texts and the
    tokenizer's JSON. Each file is written under a temporary name and renamed, and the
    small ``.json`` that marks an entry complete is renamed last, so a crash never
    leaves a cache entry that looks valid.
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
    lengths: list[int] = []
    with _atomic(ids_path) as tmp_ids, open(tmp_ids, "wb") as out:
        for chunk in _chunks(articles, paragraphs=4096):
            paragraphs = [_defuse(p, literals) for a in chunk for p in a.split("\n")]
            encodings = iter(tokenizer.encode_batch(paragraphs,
                                                    add_special_tokens=False))
            for article in chunk:
                flat: list[int] = []
                for _ in range(article.count("\n") + 1):
                    ids = next(encodings).ids
                    if ids:
                        flat += ids
                        flat.append(sep)
                lengths.append(len(flat))
                out.write(np.asarray(flat, dtype=dtype).tobytes())
    offsets = np.zeros(len(articles) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    with _atomic(offsets_path) as tmp, open(tmp, "wb") as f:
        np.save(f, offsets)
    meta = {"n_tokens": int(offsets[-1]), "dtype": dtype.name}
    with _atomic(meta_path) as tmp:
        Path(tmp).write_text(json.dumps(meta), encoding="utf-8")
    return _read_stream(ids_path, offsets_path, meta_path, dtype)


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


def _chunks(articles: Sequence[str], paragraphs: int) -> Iterator[Sequence[str]]:
    start, count = 0, 0
    for i, article in enumerate(articles):
        count += article.count("\n") + 1
        if count >= paragraphs:
            yield articles[start:i + 1]
            start, count = i + 1, 0
    if start < len(articles):
        yield articles[start:]


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # only still there after an error


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
    if max_len < 2:
        raise TwotowerError(
            f"max_len must be at least 2 ([CLS] + one token), got {max_len}")
    body = max_len - 1
    lengths = np.diff(stream.offsets)
    n_windows = -(-lengths // body)  # 0 for an empty article
    tail = lengths - (n_windows - 1) * body
    n_windows -= (n_windows > 1) & (tail < min(MIN_TAIL_TOKENS, max(1, body // 2)))
    article = np.repeat(np.arange(len(lengths)), n_windows)
    first = np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
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
    windows = {}
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
    train = windows["training"]
    if cfg.max_train_tokens:
        order = np.random.default_rng(cfg.split_seed).permutation(len(train))
        real = np.count_nonzero(train[order] != special.pad, axis=1)
        keep = max(1, int(np.searchsorted(np.cumsum(real), cfg.max_train_tokens,
                                          side="right")))
        train = train[np.sort(order[:keep])]
    val = windows["validation"]
    data = PreparedData(
        tokenizer=tokenizer, special=special, vocab_size=padded_vocab_size(tokenizer),
        train=train, val=val, corpus_name=corpus.name, source=corpus.source,
        n_train_tokens=int(np.count_nonzero(train != special.pad)),
        n_val_tokens=int(np.count_nonzero(val != special.pad)),
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
