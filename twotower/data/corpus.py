"""Text in: WikiText bundled with the package or from the Hub, or your own ``.txt``
files.

Introduced in chapter 3 (*Data and tokens*).

:func:`load_corpus` returns articles (title + paragraphs), whichever the source; the
bundled copy (checked by :mod:`twotower.data.sources`) and the Hub go through the same
``datasets.load_dataset`` code path and the same article parser. :func:`split_articles`
holds out validation articles, so no article is on both sides.
"""

from __future__ import annotations

import codecs
import itertools
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twotower.data import sources
from twotower.errors import TwotowerError
from twotower.data.sources import default_cache_dir
from twotower.data.tokenizer import hub_is_reachable

log = logging.getLogger(__name__)

HUB_CONFIGS = {"wikitext-2": "wikitext-2-raw-v1", "wikitext-103": "wikitext-103-raw-v1"}
BUNDLED_FILES = {"wikitext-2": ("valid.txt.xz", "test.txt.xz")}
FALLBACK = "wikitext-2"  # what "auto" reads when a corpus needs the Hub and it is down
PARAGRAPHS_PER_ARTICLE = 20  # plain text without title lines is cut into such articles
READ_BYTES = 2**20  # a .txt file is read and decoded this many bytes at a time

# " = Title = " starts an article; " = = Section = = " does not.
_TITLE = re.compile(r"^= (?!=).*(?<!=) =$")
# WikiText splits hyphens and number separators into words; BERT's vocabulary does not.
_DETOKENIZE = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), ("<unk>", "[UNK]"))


@dataclass(frozen=True)
class Corpus:
    """A list of articles; each is its paragraphs joined with ``"\\n"``, title first."""

    name: str
    source: str  # "online", "bundled" or "local"
    articles: list[str]


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
        source: ``"bundled"`` (WikiText-2 validation + test shipped with the package),
            ``"online"`` (``datasets.load_dataset`` of Salesforce/wikitext from the
            Hugging Face Hub, train + validation + test; ``"hub"`` means the same), or
            ``"auto"``: the bundled copy of a bundled corpus, the Hub for WikiText-103,
            and the bundled WikiText-2 with a warning when the Hub does not answer
            within 2 s (results then differ from an online run). Paths need ``"auto"``
            or ``"local"``.
        cache_dir: where ``datasets`` keeps the bundled copy's Arrow cache; defaults to
            :func:`default_cache_dir`. Hub downloads use the usual Hugging Face cache.

    Raises:
        TwotowerError: unknown corpus or source, missing path, non-UTF-8 or empty text,
            a damaged bundled file, the Hub asked for while offline.
    """
    source = sources.parse_source(source)
    if corpus not in HUB_CONFIGS:
        if source not in ("auto", "local"):
            raise TwotowerError(
                f"source={source!r} is only for {', '.join(HUB_CONFIGS)}; "
                f"use source='auto' for the local path {corpus!r}")
        return _load_local(Path(corpus))
    if source == "local":
        raise TwotowerError(f"source='local' needs a path, but {corpus!r} names a Hub "
                            "corpus; use source='auto', 'online' or 'bundled'")
    cache = Path(cache_dir or default_cache_dir())
    if source == "auto" and corpus in BUNDLED_FILES:
        source = "bundled"
    elif source == "auto":
        if not hub_is_reachable():
            log.warning("%s needs the Hugging Face Hub, which does not answer: "
                        "using the bundled %s instead, so sizes and results "
                        "differ from an online run", corpus, FALLBACK)
            return _load_bundled(FALLBACK, cache)
        source = "online"
    if source == "online":
        return _load_hub(corpus)
    return _load_bundled(corpus, cache)


def _load_hub(corpus: str) -> Corpus:
    import datasets

    # With HF_DATASETS_OFFLINE=1, datasets reads its own cache: let it try.
    cached_only = os.environ.get("HF_DATASETS_OFFLINE", "") in ("1", "true", "on")
    if not cached_only and not hub_is_reachable():
        raise TwotowerError(
            f"cannot reach the Hugging Face Hub to download {corpus}; use "
            "source='bundled' (wikitext-2) or source='auto'")
    try:
        splits = datasets.load_dataset("Salesforce/wikitext", HUB_CONFIGS[corpus])
    except (ConnectionError, OSError) as error:
        raise TwotowerError(f"could not load {corpus} from the Hugging Face Hub "
                            f"({type(error).__name__}); retry, or use source='bundled'"
                            ) from error
    articles = [article for split in ("train", "validation", "test")
                for article in wikitext_articles(splits[split]["text"])[0]]
    return _checked(Corpus(corpus, "online", articles), f"the Hub's {corpus}")


def _load_bundled(corpus: str, cache_dir: Path) -> Corpus:
    import datasets

    if corpus not in BUNDLED_FILES:
        raise TwotowerError(f"{corpus} is not bundled (only {', '.join(BUNDLED_FILES)} "
                            "is); use source='online' on a machine that is online")
    files = [str(sources.bundled_file(corpus, name)) for name in BUNDLED_FILES[corpus]]
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
        # Two streaming passes rather than the lines in memory: does it have titles?
        if _has_titles(read_lines(file)):
            articles += wikitext_articles(read_lines(file))[0]
        else:
            articles += _paragraph_articles(read_lines(file))
    return _checked(Corpus(path.name or str(path), "local", articles), str(path))


def _has_titles(lines: Iterable[str]) -> bool:
    """Whether :func:`wikitext_articles` would find a title line in ``lines``."""
    previous_blank, pending_title = True, False
    for raw in _with_end(lines):
        line = clean_wikitext(raw).strip()
        if pending_title and not line:
            return True
        pending_title = bool(line) and previous_blank and bool(_TITLE.match(line))
        previous_blank = not line
    return False


def _paragraph_articles(lines: Iterable[str]) -> list[str]:
    """Blank-line-separated blocks are paragraphs; every 20 of them form an article."""
    articles, paragraphs, block = [], [], []
    for line in _with_end(lines):
        line = clean_wikitext(line).strip()
        if line:
            block.append(line)
        elif block:
            paragraphs.append(" ".join(block))
            block = []
            if len(paragraphs) == PARAGRAPHS_PER_ARTICLE:
                articles.append("\n".join(paragraphs))
                paragraphs = []
    if paragraphs:
        articles.append("\n".join(paragraphs))
    return articles


def read_lines(file: Path) -> Iterator[str]:
    """The lines of ``file`` as ``str.splitlines`` cuts its text, read
    :data:`READ_BYTES` at a time, so a file is never in memory twice: UTF-8 (a leading
    byte-order mark dropped), or UTF-16 when it starts with a UTF-16 byte-order mark
    (Windows Notepad's "Unicode").

    Raises:
        TwotowerError: naming the file, the first bad byte, its line and a fix.
    """
    unfinished: list[str] = []  # the pieces of a line whose end is not read yet
    carriage = ""  # a "\r" that ended the last block: maybe the first half of "\r\n"
    for text in _decoded_blocks(file):
        text = carriage + text
        carriage = "\r" if text.endswith("\r") else ""
        lines = text[:-1 if carriage else None].splitlines(keepends=True)
        tail = lines.pop() if lines and lines[-1].splitlines()[0] == lines[-1] else ""
        for line in lines:
            line = line[:-2] if line.endswith("\r\n") else line[:-1]
            if unfinished:
                line = "".join([*unfinished, line])
                unfinished = []
            yield line
        if tail:  # a line whose end is not read yet
            unfinished.append(tail)
    if carriage or unfinished:
        yield "".join(unfinished)


def _decoded_blocks(file: Path) -> Iterator[str]:
    with open(file, "rb") as stream:
        head = stream.read(3)
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            encoding, start = "utf-16", 0  # the codec reads and drops the mark
        else:
            encoding, start = "utf-8", 3 if head.startswith(b"\xef\xbb\xbf") else 0
        decoder = codecs.getincrementaldecoder(encoding)()
        offset = start  # of the next byte to decode
        blocks = itertools.chain([head[start:]], iter(
            lambda: stream.read(READ_BYTES), b""))
        for data, final in itertools.chain(((b, False) for b in blocks), [(b"", True)]):
            held = len(decoder.getstate()[0])  # bytes the decoder kept from before
            try:
                text = decoder.decode(data, final=final)
            except UnicodeDecodeError as error:
                bad = offset - held + error.start
                raise _not_text(file, encoding, bad, error.object[error.start]
                                ) from None
            offset += len(data)
            yield text


def _not_text(file: Path, encoding: str, offset: int, byte: int) -> TwotowerError:
    with open(file, "rb") as stream:  # its line: the newlines before the bad byte
        line = 1 + sum(block.count(b"\n") for block in iter(
            lambda: stream.read(min(READ_BYTES, offset - stream.tell())), b""))
    return TwotowerError(
        f"{file} is not {encoding.upper()} (byte 0x{byte:02x} at offset {offset}, "
        f"line {line}); re-save it as UTF-8 (e.g. iconv -f "
        f"{'utf-16' if encoding == 'utf-16' else 'latin1'} -t utf-8)")


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


