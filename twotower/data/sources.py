"""Where every corpus comes from: the copy in the package, or its official source.

Introduced in chapter 3 (*Data and tokens*); chapters 10, 13 and 14 read the bundled
treebank and captions through it.

The package ships three real corpora, compressed, each with its license next to it in
``twotower/_data/``: WikiText-2 (validation and test), UD English EWT (dev and test) and
Multi30k (English, German, French). :data:`CORPORA` describes each one, and the
``SHA256SUMS`` beside its files lists their hashes, so a damaged or truncated copy is
caught before anything trains:

* :func:`bundled_file` returns the path of one bundled file after checking it;
* :func:`check` checks whole corpora, which every chapter does in its first code cell;
* :func:`download` fetches one file of a corpus's official release into the cache, once,
  and checks it against its known SHA-256 (with ``pooch``).

Each corpus has one loader that chooses among these sources and then reads every copy
with the same code: :func:`twotower.data.corpus.load_corpus` (WikiText),
:func:`twotower.data.ud.ud_english_ewt_paths` (UD) and
:func:`twotower.experiments.bilingual.load_multi30k`.
A ``source`` is one of :data:`SOURCES`: ``"bundled"``; ``"online"`` (the corpus's
official source: the Hugging Face Hub through ``datasets``, or the project's release);
``"local"`` (a copy of your own); or ``"auto"``, which is the bundled copy for a bundled
corpus and the online source for one that is not (WikiText-103).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from twotower import atomic
from twotower.errors import TwotowerError

log = logging.getLogger(__name__)

SOURCES = ("auto", "bundled", "online", "local")
LEGACY_SOURCES = {"hub": "online"}  # the name of "online" in run configs saved before
DOWNLOAD_TIMEOUT = 60.0  # seconds without an answer before a download gives up
REINSTALL = ("reinstall twotower (in a clone: git checkout -- twotower/_data; else "
             "pip install --force-reinstall --no-deps twotower)")


@dataclass(frozen=True)
class BundledCorpus:
    """One corpus shipped inside the package, in ``twotower/_data/<name>/``.

    The folder holds the compressed files, ``SHA256SUMS`` (``sha256sum -c`` reads it
    too) and ``LICENSE.md`` with the attribution in full.

    Attributes:
        name: the folder's name and the key in :data:`CORPORA`.
        title: what it is, with its version.
        license: its license, in a few words.
        official: where the full corpus lives online.
        release: bundled file name -> (URL of the same text in the official release,
            SHA-256 of that download), for a corpus read from a release rather than
            from the Hub.
    """

    name: str
    title: str
    license: str
    official: str
    release: dict[str, tuple[str, str]] = field(default_factory=dict)


_UD = ("https://raw.githubusercontent.com/UniversalDependencies/UD_English-EWT/r2.16/"
       "en_ewt-ud-{}.conllu")

CORPORA: dict[str, BundledCorpus] = {corpus.name: corpus for corpus in (
    BundledCorpus(
        "wikitext-2", "WikiText-2, validation and test splits (word-level version)",
        "CC BY-SA 3.0", "Hugging Face Hub: Salesforce/wikitext"),
    BundledCorpus(
        "ud-english-ewt",
        "Universal Dependencies English Web Treebank, release 2.16, dev and test",
        "CC BY-SA 4.0", "github.com/UniversalDependencies/UD_English-EWT, tag r2.16",
        release={
            "en_ewt-ud-dev.conllu.xz": (
                _UD.format("dev"),
                "531a54ff90d6ab12201c5a50c3e78e6ddac4de69abc4bce5d275d3cd29efe2b6"),
            "en_ewt-ud-test.conllu.xz": (
                _UD.format("test"),
                "e266e515a0a7547657ed3d90d9ba46487d6bd251f27ad4269d4e8a427c8555cd")}),
    BundledCorpus(
        "multi30k",
        "Multi30k task 1 captions, English, German and French (train, val, test 2016)",
        "research use (Flickr30K terms); cite Elliott et al. 2016 and 2017",
        "github.com/multi30k/dataset; English and German also on the Hugging Face "
        "Hub: bentrevett/multi30k"),
)}


def default_cache_dir() -> Path:
    """``$TWOTOWER_CACHE`` if set, else ``~/.cache/twotower``: tokenizers, token caches,
    downloads."""
    return Path(os.environ.get("TWOTOWER_CACHE") or Path.home() / ".cache" / "twotower")


def data_dir() -> Path:
    """The folder of the bundled corpora inside the installed package."""
    return Path(str(resources.files("twotower") / "_data"))


def parse_source(source: str) -> str:
    """``source`` as one of :data:`SOURCES` (``"hub"`` is read as ``"online"``).

    Raises:
        TwotowerError: for any other value.
    """
    source = LEGACY_SOURCES.get(source, source)
    if source not in SOURCES:
        raise TwotowerError(f"unknown source {source!r}; choose one of "
                            f"{', '.join(SOURCES)}")
    return source


def checksums(corpus: str) -> dict[str, str]:
    """Bundled file name -> SHA-256, from the corpus folder's ``SHA256SUMS``.

    Raises:
        TwotowerError: unknown corpus; ``SHA256SUMS`` missing or not readable.
    """
    _corpus(corpus)
    listing = data_dir() / corpus / "SHA256SUMS"
    try:
        lines = listing.read_text(encoding="ascii").splitlines()
        pairs = [line.split(maxsplit=1) for line in lines if line.strip()]
        return {name.lstrip("*"): digest for digest, name in pairs}
    except (OSError, UnicodeDecodeError, ValueError):
        raise TwotowerError(f"{listing} is missing or damaged; {REINSTALL}") from None


_whole: set[tuple[str, int, int]] = set()  # (path, size, mtime) of files checked whole


def bundled_file(corpus: str, name: str) -> Path:
    """The path of one bundled file, checked against its SHA-256 (once per process).

    Raises:
        TwotowerError: unknown corpus or file; a file that is missing or damaged
            (one line naming it and how to get a good copy).
    """
    entry, sums = _corpus(corpus), checksums(corpus)
    if name not in sums:
        raise TwotowerError(f"{corpus} has no bundled file {name!r}; it has "
                            f"{', '.join(sums)}")
    path = data_dir() / corpus / name
    try:
        stat = path.stat()
    except OSError:
        raise TwotowerError(f"bundled file {path} is missing; {REINSTALL}, or use "
                            f"source='online' ({entry.official})") from None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _whole:
        if atomic.file_sha256(path) != sums[name]:
            raise TwotowerError(f"bundled file {path} is damaged (its SHA-256 does not "
                                f"match SHA256SUMS); {REINSTALL}, or use "
                                f"source='online' ({entry.official})")
        _whole.add(key)
    return path


def check(*corpora: str) -> None:
    """Check every bundled file of ``corpora`` (all of them when none is named).

    Cheap (milliseconds), so a chapter calls it before it trains anything.

    Raises:
        TwotowerError: naming the first missing or damaged file.
    """
    for corpus in corpora or tuple(CORPORA):
        for name in checksums(corpus):
            bundled_file(corpus, name)


def release_file(corpus: str, name: str,
                 cache_dir: str | os.PathLike | None = None) -> Path:
    """The official release's copy of bundled file ``name``, downloaded once into
    ``cache_dir/downloads`` (default :func:`default_cache_dir`) and checked (see
    :func:`download`)."""
    entry = _corpus(corpus)
    if name not in entry.release:
        raise TwotowerError(f"{corpus} has no release file for {name!r}; use "
                            "source='bundled'")
    url, sha256 = entry.release[name]
    folder = Path(cache_dir or default_cache_dir()) / "downloads" / corpus
    return download(url, f"sha256:{sha256}", folder, fix="use source='bundled'")


def download(url: str, known_hash: str, folder: str | os.PathLike,
             fix: str = "retry later") -> Path:
    """Fetch ``url`` into ``folder`` unless a copy with this hash is there already.

    ``pooch`` writes to a temporary file, checks the hash and only then renames it into
    place, so an interrupted or wrong download never leaves a file that looks finished.

    Args:
        url: what to fetch (its last path component names the file).
        known_hash: ``"sha256:<hex>"`` (or another ``hashlib`` algorithm).
        folder: where the file is kept.
        fix: what the one-line error advises when the download fails.

    Raises:
        TwotowerError: no network, an HTTP error, or a file whose hash differs.
    """
    import pooch
    import requests

    name = url.rsplit("/", 1)[-1]
    downloader = pooch.HTTPDownloader(timeout=DOWNLOAD_TIMEOUT, progressbar=False)
    pooch.get_logger().setLevel(logging.WARNING)  # it would print to stderr itself
    if not (Path(folder) / name).is_file():
        log.info("downloading %s into %s", url, folder)
    try:
        path = pooch.retrieve(url, known_hash=known_hash, fname=name, path=folder,
                              downloader=downloader)
    except requests.RequestException as error:
        raise TwotowerError(f"could not download {url} ({type(error).__name__}); "
                            f"check the connection, or {fix}") from None
    except ValueError:  # pooch: the hash of the download does not match
        raise TwotowerError(f"the download of {url} does not match its known hash "
                            f"(a changed or damaged file); nothing was kept; {fix}"
                            ) from None
    return Path(path)


def _corpus(name: str) -> BundledCorpus:
    if name not in CORPORA:
        raise TwotowerError(f"no bundled corpus {name!r}; bundled are "
                            f"{', '.join(CORPORA)}")
    return CORPORA[name]
