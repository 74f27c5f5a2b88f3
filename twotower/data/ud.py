"""Universal Dependencies: part of speech per WordPiece id, and gold parse trees.

Used by the chapter on syntax and semantics, which asks whether the tokens one tower
prefers are function words (``the``, ``of``, ``,``) and the other tower's content words.
Two things come from a treebank (UD English EWT by default):

* :func:`dominant_upos` turns words with gold UPOS tags into one tag per *WordPiece id*:
  every subword of a word inherits the word's tag, and an id gets the tag it carries
  most often, with the share of its occurrences that carry it;
* :func:`tree_distances` and :func:`tree_depths` turn gold heads into the targets of the
  structural probes in :mod:`twotower.analysis.probes` (Hewitt & Manning 2019).

Words are UD *syntactic words*: the surface token of a contraction ("don't", line
``3-4``) is skipped and its parts ("do", "n't") are kept, and empty nodes of the
enhanced graph (``3.1``) are skipped, so heads always index the words kept.
"""

from __future__ import annotations

import io
import lzma
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import conllu
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path

from twotower.data import sources
from twotower.errors import TwotowerError

FUNCTION_UPOS = ("ADP", "DET", "PRON", "AUX", "CCONJ", "SCONJ", "PART", "PUNCT")
CONTENT_UPOS = ("NOUN", "VERB", "ADJ", "ADV", "PROPN", "NUM")

UD_CORPUS = "ud-english-ewt"  # its folder in twotower/_data (see twotower.data.sources)
UD_DIR_ENV = "TWOTOWER_UD_DIR"
UD_EWT_URL = "https://github.com/UniversalDependencies/UD_English-EWT"
UD_EWT_SPLITS = ("dev", "test")  # the splits that ship with the package


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy fields is ambiguous
class Sentence:
    """One gold-annotated sentence of a treebank.

    Attributes:
        words: surface form of each syntactic word, ``n`` of them.
        upos: universal part-of-speech tag of each word, ``n`` of them.
        heads: (n,) int array; 1-based index of each word's head, 0 for the root
            (the CoNLL-U convention).
        deprel: the universal dependency relation of each word to its head (``root``
            for the root; subtypes such as ``nmod:poss`` kept), or None where unknown.
    """

    words: list[str]
    upos: list[str]
    heads: np.ndarray
    deprel: list[str] | None = None

    def __len__(self) -> int:
        return len(self.words)


def ud_english_ewt_paths(
    directory: str | os.PathLike | None = None,
    splits: Sequence[str] = UD_EWT_SPLITS,
    source: str = "auto",
    cache_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """The CoNLL-U files of UD English EWT: bundled, from the official release, or
    yours.

    Args:
        directory: a folder of your own ``en_ewt-ud-{split}.conllu`` files (another
            release, say); ``$TWOTOWER_UD_DIR`` is read when this is None. Either one
            makes ``source="auto"`` mean that folder.
        splits: which files to return, e.g. ``("dev", "test")``.
        source: ``"bundled"`` (release 2.16, shipped with the package and checked
            against its SHA-256), ``"online"`` (the same files of the release tag
            r2.16 on GitHub, downloaded once into ``cache_dir`` and checked),
            ``"local"`` (``directory``), or ``"auto"`` (``directory`` if one is named,
            else bundled).
        cache_dir: where downloads are kept (default
            :func:`twotower.data.sources.default_cache_dir`).

    Returns:
        One path per split, in the order of ``splits``; :func:`load_ud` reads them.

    Raises:
        TwotowerError: an unknown split or source; files that are missing or damaged.
    """
    source = sources.parse_source(source)
    unknown = [split for split in splits if split not in UD_EWT_SPLITS]
    if unknown:
        raise TwotowerError(f"UD English EWT split(s) {unknown} are not bundled; "
                            f"choose among {', '.join(UD_EWT_SPLITS)}")
    explicit = directory if directory is not None else os.environ.get(UD_DIR_ENV)
    if source == "local" or (source == "auto" and explicit):
        return _local_ud_paths(explicit, splits)
    names = [f"en_ewt-ud-{split}.conllu.xz" for split in splits]
    if source == "online":
        return [sources.release_file(UD_CORPUS, name, cache_dir) for name in names]
    return [sources.bundled_file(UD_CORPUS, name) for name in names]


def _local_ud_paths(folder: str | os.PathLike | None,
                    splits: Sequence[str]) -> list[Path]:
    if not folder:
        raise TwotowerError(f"source='local' needs a folder: pass directory=... or set "
                            f"{UD_DIR_ENV}")
    paths = [Path(folder) / f"en_ewt-ud-{split}.conllu" for split in splits]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise TwotowerError(
            f"UD English EWT files {', '.join(missing)} not found in {folder}; put "
            f"them there (from {UD_EWT_URL}), unset {UD_DIR_ENV}, or use "
            "source='bundled'")
    return paths


def load_ud(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Sentence]:
    """Read the syntactic words, UPOS tags and heads of CoNLL-U files.

    Args:
        paths: one CoNLL-U file or several (``.conllu`` or xz-compressed
            ``.conllu.xz``); sentences are returned in file order.

    Returns:
        Every sentence of every file, skipping multiword-token and empty-node lines.

    Raises:
        TwotowerError: if a file is missing or a sentence has no head for a word or a
            head outside the sentence.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    sentences = []
    for path in map(Path, paths):
        if not path.is_file():
            raise TwotowerError(f"CoNLL-U file {path} not found; check the path "
                                f"(see ud_english_ewt_paths)")
        try:
            with _open_text(path) as handle:
                for token_list in conllu.parse_incr(handle):
                    sentence = _to_sentence(token_list)
                    if len(sentence):
                        sentences.append(sentence)
        except (lzma.LZMAError, EOFError, UnicodeDecodeError) as error:
            raise TwotowerError(f"{path} is damaged or not UTF-8 CoNLL-U "
                                f"({type(error).__name__}); get a fresh copy") from None
    return sentences


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _to_sentence(token_list: conllu.TokenList) -> Sentence:
    # conllu gives int ids for words, tuples like (3, "-", 4) or (3, ".", 1) otherwise
    tokens = [token for token in token_list if isinstance(token["id"], int)]
    n = len(tokens)
    name = token_list.metadata.get("sent_id", "?")
    heads = [token["head"] for token in tokens]
    ids = [token["id"] for token in tokens]
    if ids != list(range(1, n + 1)):
        raise TwotowerError(f"sentence {name}: word ids are not 1..{n}; fix the file")
    if any(not isinstance(head, int) or not 0 <= head <= n for head in heads):
        raise TwotowerError(f"sentence {name}: a word has no head or a head outside "
                            f"1..{n}; use a file with basic dependency heads")
    return Sentence(
        words=[token["form"] for token in tokens],
        upos=[token["upos"] for token in tokens],
        heads=np.asarray(heads, dtype=np.int64),
        deprel=[str(token["deprel"]) for token in tokens],
    )


def word_class(upos: str) -> str:
    """Return ``"function"``, ``"content"`` or ``"other"`` (INTJ, SYM, X) for a tag."""
    if upos in FUNCTION_UPOS:
        return "function"
    if upos in CONTENT_UPOS:
        return "content"
    return "other"


def dominant_upos(
    sentences: Sequence[Sentence], tokenizer, lowercase: bool = True
) -> dict[int, tuple[str, float, int]]:
    """Give every WordPiece id seen in the treebank the UPOS it carries most often.

    Each word is tokenized on its own (lowercased first, the vocabulary is uncased;
    no special tokens) and *every* subword id of the word inherits the word's tag, so
    ``runs`` as a VERB counts one VERB for ``run`` and one for ``##s``. An id that
    occurs twice in one word counts twice.

    Args:
        sentences: gold-tagged sentences, e.g. from :func:`load_ud`.
        tokenizer: a HuggingFace ``tokenizers.Tokenizer``.
        lowercase: lowercase each word before tokenizing it.

    Returns:
        ``id -> (upos, share, count)``: the most frequent tag of the id, the share of
        the id's occurrences that carry it, and the number of occurrences. Ties go to
        the tag first in alphabetical order.
    """
    words = [w.lower() if lowercase else w for s in sentences for w in s.words]
    tags = [tag for s in sentences for tag in s.upos]
    if not words:
        return {}
    # Tokenize each distinct word once: treebanks repeat "the" thousands of times.
    vocab, word_index = np.unique(np.asarray(words, dtype=object), return_inverse=True)
    encodings = tokenizer.encode_batch(list(vocab), add_special_tokens=False)
    pieces = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
    n_pieces = np.array([len(p) for p in pieces])
    tag_names, tag_index = np.unique(np.asarray(tags, dtype=object),
                                     return_inverse=True)

    # One row per (word occurrence, subword): repeat the occurrence's tag per subword.
    occurrence_pieces = [pieces[i] for i in word_index]
    if not any(len(p) for p in occurrence_pieces):
        return {}
    piece_ids = np.concatenate(occurrence_pieces)
    piece_tags = np.repeat(tag_index, n_pieces[word_index])

    seen_ids, row = np.unique(piece_ids, return_inverse=True)
    counts = np.zeros((len(seen_ids), len(tag_names)), dtype=np.int64)
    np.add.at(counts, (row, piece_tags), 1)
    best = counts.argmax(axis=1)  # first maximum = alphabetically first tag
    totals = counts.sum(axis=1)
    shares = counts[np.arange(len(seen_ids)), best] / totals
    return {
        int(token_id): (str(tag_names[b]), float(share), int(total))
        for token_id, b, share, total in zip(seen_ids, best, shares, totals)
    }


def _check_heads(heads: np.ndarray) -> np.ndarray:
    heads = np.asarray(heads)
    n = len(heads)
    if heads.ndim != 1 or not np.issubdtype(heads.dtype, np.integer):
        raise TwotowerError("heads must be a 1-D integer array (1-based, 0 = root)")
    if n and (heads.min() < 0 or heads.max() > n):
        raise TwotowerError(f"heads must lie in 0..{n} (1-based, 0 = root), got "
                            f"{heads.tolist()}")
    if n and np.count_nonzero(heads == 0) != 1:
        raise TwotowerError(f"heads must have exactly one root (head 0), got "
                            f"{heads.tolist()}")
    return heads


def tree_distances(heads: np.ndarray) -> np.ndarray:
    """Path lengths between all pairs of words in the undirected gold tree.

    Args:
        heads: (n,) 1-based head of each word, 0 for the root.

    Returns:
        (n, n) int array; entry (i, j) is the number of edges between words i and j.

    Raises:
        TwotowerError: if the heads do not form one tree (a cycle, two roots).
    """
    heads = _check_heads(heads)
    n = len(heads)
    child = np.flatnonzero(heads > 0)
    edges = csr_matrix((np.ones(len(child)), (child, heads[child] - 1)), shape=(n, n))
    distances = shortest_path(edges, directed=False, unweighted=True)
    if not np.isfinite(distances).all():
        raise TwotowerError(f"heads {heads.tolist()} do not form a tree (a cycle or a "
                            f"word cut off from the root); fix the annotation")
    return distances.astype(np.int64)


def tree_depths(heads: np.ndarray) -> np.ndarray:
    """Number of edges from each word to the root of the gold tree.

    Args:
        heads: (n,) 1-based head of each word, 0 for the root.

    Returns:
        (n,) int array; 0 for the root word.
    """
    heads = _check_heads(heads)
    if len(heads) == 0:
        return np.zeros(0, dtype=np.int64)
    return tree_distances(heads)[int(np.flatnonzero(heads == 0)[0])]
