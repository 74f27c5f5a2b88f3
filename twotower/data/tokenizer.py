"""Uncased WordPiece tokenizers: trained on the corpus, or BERT's own.

Introduced in chapter 2 (*From text to token windows*).

The authors' code uses BERT's uncased WordPiece vocabulary (30,522 ids). Offline, or for
a small CPU model, :func:`train_wordpiece` trains the same kind of tokenizer (same
normaliser, pre-tokenizer, ``##`` continuation prefix and special tokens) on the
training articles, so the rest of the package never needs to know which one it got.
Both kinds put their special tokens where the model code expects to find them through
:class:`SpecialIds`, never through hard-coded numbers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

from twotower import atomic
from twotower.config import DataConfig
from twotower.errors import TwotowerError

log = logging.getLogger(__name__)

# Order matters: a trained tokenizer gets these at ids 0..4.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MIN_VOCAB_SIZE = 100  # room for the five specials plus a basic alphabet
MAX_VOCAB_SIZE = 2**31 - 1
PRETRAINED_DEFAULT = "bert-base-uncased"
# Bump when train_wordpiece changes: tokenizers cached by an old recipe get retrained.
# (Not bumped for the fixed tie break: a cached tokenizer is one the old recipe could
# give, and retraining it would change every cached run.)
_RECIPE_VERSION = "wordpiece-v1"
PIECE_CHARS = 2**14  # longest text handed to the tokenizer at once, when it can be cut
_HASH_CHARS = 2**16  # fingerprint() encodes a long text this many characters at a time


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the five special tokens in one tokenizer."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    @classmethod
    def from_tokenizer(cls, tok: Tokenizer) -> "SpecialIds":
        """Look the five BERT special tokens up in ``tok``.

        Raises:
            TwotowerError: when ``tok`` lacks one of them (not a BERT-style tokenizer).
        """
        ids = {}
        names = ("pad", "unk", "cls", "sep", "mask")
        for field_name, token in zip(names, SPECIAL_TOKENS):
            token_id = tok.token_to_id(token)
            if token_id is None:
                raise TwotowerError(
                    f"tokenizer has no {token} token; use tokenizer='train' or a "
                    "BERT-style tokenizer such as 'bert-base-uncased'"
                )
            ids[field_name] = token_id
        return cls(**ids)

    @property
    def all(self) -> tuple[int, int, int, int, int]:
        """``(pad, unk, cls, sep, mask)``, e.g. to keep them out of a loss or a mask."""
        return (self.pad, self.unk, self.cls, self.sep, self.mask)


def train_wordpiece(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train an uncased BERT-style WordPiece tokenizer, the same one in every process.

    The ``tokenizers`` trainer numbers the continuation pieces ``##a``, ``##b``, ... in
    the order of a hash map seeded afresh in each process, and breaks ties between
    merges of equal count by those numbers, so two processes could train different
    vocabularies from the same text. Here a first pass finds the alphabet and the
    continuation pieces, and the second pass gets them as fixed entries in sorted
    order: the tie break, and so the tokenizer, depend on the text alone. Long texts
    reach the trainer in pieces of at most :data:`PIECE_CHARS` characters cut between
    words (:func:`training_pieces`), so memory stays bounded
    (``book/when_things_go_wrong.md``).

    Args:
        texts: training text, any chunking (articles or paragraphs).
        vocab_size: target number of ids, specials included. A small corpus can give
            fewer; a corpus with more distinct characters than this gives more, because
            every character seen is kept so that no word becomes unknown.

    Returns:
        A tokenizer with [PAD], [UNK], [CLS], [SEP], [MASK] at ids 0..4 whose
        ``encode(text)`` adds ``[CLS] ... [SEP]`` like BERT's (the data pipeline asks
        for ``add_special_tokens=False`` and places them itself).

    Raises:
        TwotowerError: for a vocabulary size outside [100, 2**31 - 1].
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TwotowerError(f"vocab_size must be an integer, got {vocab_size!r}")
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise TwotowerError(
            f"vocab_size={vocab_size} is out of range; use at least {MIN_VOCAB_SIZE} "
            "(e.g. 2048 for a smoke run, 8192 for a small model)"
        )
    texts = texts if isinstance(texts, Sequence) else list(texts)
    # Pass 1 stops before the first merge: its vocabulary is the specials, the
    # alphabet (sorted by the trainer) and the continuation pieces (hash order).
    first = _trained(texts, 0, SPECIAL_TOKENS).get_vocab(with_added_tokens=False)
    alphabet = sorted(t for t in first if t not in SPECIAL_TOKENS and len(t) == 1)
    pieces = sorted((t for t in first if t.startswith("##") and len(t) == 3),
                    key=lambda t: t[2])
    fixed = (*SPECIAL_TOKENS, *alphabet, *pieces)
    if len(fixed) != len(first):  # a trainer that numbers things differently
        raise TwotowerError(f"unexpected vocabulary from the tokenizers trainer "
                            f"({len(first)} entries, {len(fixed)} understood); "
                            "pin the tokenizers version named in pyproject.toml")
    vocab = _trained(texts, vocab_size, fixed).get_vocab(with_added_tokens=False)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]",
                                     continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def _trained(texts: Sequence[str], vocab_size: int, fixed: Sequence[str]) -> Tokenizer:
    """WordPiece trained on ``texts`` with ``fixed`` as its first ids, in that order
    (given to the trainer as special tokens, so the result serves only its vocabulary).
    """
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=list(fixed),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(training_pieces(texts), trainer=trainer)
    return tok


def piece_spans(text: str, start: int = 0, end: int | None = None
                ) -> Iterator[tuple[int, int]]:
    """Cut ``text[start:end]`` into spans of at most :data:`PIECE_CHARS` characters,
    each after the first beginning at a space or a newline (a longer run with neither
    stays whole).

    A space or a newline always ends a word for BERT's normaliser and pre-tokenizer,
    which act on one word at a time, so the ids of the spans tokenized one by one are
    the ids of the whole, and the words a trainer counts are the same.
    """
    end = len(text) if end is None else end
    while end - start > PIECE_CHARS:
        reach = start + PIECE_CHARS + 1
        cut = max(text.rfind(" ", start + 1, reach), text.rfind("\n", start + 1, reach))
        if cut == -1:  # no space within reach: cut at the next one, wherever it is
            later = (text.find(" ", reach, end), text.find("\n", reach, end))
            cut = min((i for i in later if i != -1), default=end)
        yield start, cut
        start = cut
    if start < end:
        yield start, end


def training_pieces(texts: Iterable[str]) -> Iterator[str]:
    """``texts`` with every text longer than :data:`PIECE_CHARS` cut by
    :func:`piece_spans`: what :func:`train_wordpiece` feeds the trainer."""
    for text in texts:
        if len(text) <= PIECE_CHARS:
            yield text
        else:
            for start, end in piece_spans(text):
                yield text[start:end]


def hub_is_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face Hub answers on port 443 within ``timeout`` seconds.

    ``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1`` count as offline without trying.
    The probe runs in a thread because a DNS lookup ignores socket timeouts; this keeps
    an offline machine from waiting through the Hub client's ~25 s of retries.
    """
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    reachable = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                reachable.set()
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return reachable.is_set()


def load_pretrained(name: str = PRETRAINED_DEFAULT) -> Tokenizer:
    """Load a tokenizer from the Hugging Face Hub (or its local cache when offline).

    Raises:
        TwotowerError: when the Hub is unreachable and no cached copy exists, or when
            ``name`` has no ``tokenizer.json``.
    """
    from huggingface_hub import hf_hub_download  # a dependency of tokenizers' own

    online = hub_is_reachable()
    try:
        path = hf_hub_download(name, "tokenizer.json", local_files_only=not online)
    except (OSError, ValueError) as error:  # the Hub's errors derive from these
        if online:
            raise TwotowerError(
                f"could not download tokenizer {name!r} from the Hugging Face Hub "
                f"({type(error).__name__}); check the name, or use tokenizer='train'"
            ) from error
        raise TwotowerError(
            f"cannot reach the Hugging Face Hub to load tokenizer {name!r} and it is "
            "not cached; use tokenizer='train' (WordPiece trained on the corpus) or go "
            "online"
        ) from error
    return Tokenizer.from_file(path)


def get_tokenizer(
    cfg: DataConfig,
    train_texts: Iterable[str],
    cache_dir: str | os.PathLike | None = None,
) -> Tokenizer:
    """The tokenizer that ``cfg.tokenizer`` asks for.

    ``"train"`` trains WordPiece on ``train_texts`` (the training articles only, so the
    validation text never shapes the vocabulary) and caches the result under
    ``cache_dir/tokenizers`` keyed by a hash of the texts and ``cfg.vocab_size``; a
    rerun loads it in milliseconds. Any other value is a Hub name such as
    ``"bert-base-uncased"``; with ``cfg.source == "auto"`` an offline machine falls back
    to training, and says so in the log.

    Args:
        cfg: data configuration (``tokenizer``, ``vocab_size``, ``source`` are read).
        train_texts: training articles.
        cache_dir: where trained tokenizers are kept; ``None`` trains every time.

    Raises:
        TwotowerError: for a bad vocabulary size, or a Hub tokenizer that cannot be had.
    """
    if cfg.tokenizer != "train":
        try:
            return load_pretrained(cfg.tokenizer)
        except TwotowerError:
            if cfg.source != "auto":
                raise
            log.warning("tokenizer %r unavailable offline; training WordPiece "
                        "(vocab_size=%d) on the corpus instead", cfg.tokenizer,
                        cfg.vocab_size)
    texts = list(train_texts)
    if cache_dir is None:
        return train_wordpiece(texts, cfg.vocab_size)
    key = fingerprint([_RECIPE_VERSION, str(cfg.vocab_size), *texts])
    name = f"wordpiece-{cfg.vocab_size}-{key[:20]}.json"
    path = Path(cache_dir) / "tokenizers" / name
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception:  # a corrupt cache entry is rebuilt, never fatal
            log.warning("ignoring unreadable cached tokenizer %s", path)
    tok = train_wordpiece(texts, cfg.vocab_size)
    atomic.write_text(path, tok.to_str())
    log.info("trained WordPiece tokenizer: %d ids, cached at %s",
             tok.get_vocab_size(), path)
    return tok


def padded_vocab_size(tok: Tokenizer, multiple: int = 64) -> int:
    """Tokenizer size rounded up to a multiple of ``multiple`` (30522 -> 30528).

    Embedding and output matrices with a round number of rows run faster on GPUs; the
    extra rows are never a target.
    """
    if multiple < 1:
        raise TwotowerError(f"multiple must be a positive integer, got {multiple}")
    size = tok.get_vocab_size(with_added_tokens=True)
    return -(-size // multiple) * multiple


def fingerprint(texts: Iterable[str]) -> str:
    """SHA-256 hex digest of a sequence of strings (boundaries included).

    A long text is encoded :data:`_HASH_CHARS` characters at a time, never whole.
    """
    digest = hashlib.sha256()
    for text in texts:
        # Length-prefixing makes ["ab", "c"] and ["a", "bc"] hash differently.
        parts = range(0, len(text), _HASH_CHARS)
        size = len(text) if text.isascii() else sum(
            len(_utf8(text[i:i + _HASH_CHARS])) for i in parts)
        digest.update(size.to_bytes(8, "little"))
        for i in parts:
            digest.update(_utf8(text[i:i + _HASH_CHARS]))
    return digest.hexdigest()


def _utf8(text: str) -> bytes:
    # Lone surrogates (from a file read with errors="surrogateescape") still hash.
    return text.encode("utf-8", errors="surrogatepass")
