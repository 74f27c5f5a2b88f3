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
from collections.abc import Iterable
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
_RECIPE_VERSION = "wordpiece-v1"


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
    """Train an uncased BERT-style WordPiece tokenizer.

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
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


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
    """SHA-256 hex digest of a sequence of strings (boundaries included)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", errors="surrogatepass")
        # Length-prefixing makes ["ab", "c"] and ["a", "bc"] hash differently.
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()
