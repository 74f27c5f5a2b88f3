"""Tests for twotower.data.tokenizer: WordPiece training, special ids, Hub, caching."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import huggingface_hub.constants
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import trainers
from hypothesis import example, given, settings
from hypothesis import strategies as st

from twotower.data import tokenizer as tokenizer_module
from twotower.config import DataConfig
from twotower.errors import TwotowerError
from twotower.data.tokenizer import (
    SPECIAL_TOKENS,
    SpecialIds,
    get_tokenizer,
    hub_is_reachable,
    load_pretrained,
    padded_vocab_size,
    train_wordpiece,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Tokenizers split unbelievable words into pieces; numbers like 3.14 too.",
    "A second paragraph about the towers, which prefer different tokens.",
] * 20


@pytest.fixture(scope="module")
def small_tokenizer():
    return train_wordpiece(TEXTS, vocab_size=200)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network at all, and an empty Hugging Face cache."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def test_trained_tokenizer_has_special_tokens_at_ids_0_to_4(small_tokenizer):
    special = SpecialIds.from_tokenizer(small_tokenizer)
    assert special.all == (0, 1, 2, 3, 4)
    assert [small_tokenizer.id_to_token(i) for i in special.all] == list(SPECIAL_TOKENS)


def test_trained_tokenizer_is_uncased_with_continuation_prefix(small_tokenizer):
    upper = small_tokenizer.encode("THE QUICK Fox", add_special_tokens=False).ids
    lower = small_tokenizer.encode("the quick fox", add_special_tokens=False).ids
    assert upper == lower
    # A word never seen in training is spelled from pieces.
    pieces = small_tokenizer.encode("foxtower", add_special_tokens=False).tokens
    assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])
    assert small_tokenizer.decode(
        small_tokenizer.encode("unbelievable towers").ids) == "unbelievable towers"


def test_unk_literal_in_text_becomes_the_unk_id(small_tokenizer):
    ids = small_tokenizer.encode("the [UNK] fox", add_special_tokens=False).ids
    assert ids[1] == SpecialIds.from_tokenizer(small_tokenizer).unk
    assert len(ids) == 3


def test_encode_with_special_tokens_wraps_in_cls_and_sep_like_bert(small_tokenizer):
    special = SpecialIds.from_tokenizer(small_tokenizer)
    ids = small_tokenizer.encode("the fox").ids
    assert ids[0] == special.cls and ids[-1] == special.sep


@pytest.mark.parametrize("vocab_size", [0, 5, 99, -1])
def test_vocab_size_below_100_raises_twotower_error(vocab_size):
    with pytest.raises(TwotowerError, match="vocab_size"):
        train_wordpiece(TEXTS, vocab_size)


def test_non_integer_vocab_size_raises_twotower_error():
    with pytest.raises(TwotowerError, match="integer"):
        train_wordpiece(TEXTS, 512.0)


def test_training_on_no_text_still_gives_a_usable_tokenizer():
    tok = train_wordpiece([], 128)
    assert SpecialIds.from_tokenizer(tok).all == (0, 1, 2, 3, 4)
    assert set(tok.encode("hello", add_special_tokens=False).ids) <= {1}


def test_padded_vocab_size_rounds_bert_size_up_to_multiple_of_64():
    class FakeTokenizer:
        def __init__(self, size):
            self.size = size

        def get_vocab_size(self, with_added_tokens=True):
            return self.size

    assert padded_vocab_size(FakeTokenizer(30522)) == 30528
    assert padded_vocab_size(FakeTokenizer(8192)) == 8192
    assert padded_vocab_size(FakeTokenizer(8193)) == 8256
    assert padded_vocab_size(FakeTokenizer(100), multiple=8) == 104


def test_padded_vocab_size_of_trained_tokenizer_is_multiple_of_64(small_tokenizer):
    size, real = padded_vocab_size(small_tokenizer), small_tokenizer.get_vocab_size()
    assert size % 64 == 0 and real <= size < real + 64


def test_special_ids_from_tokenizer_without_mask_token_raises():
    tok = train_wordpiece(TEXTS, 200)
    vocab = tok.get_vocab()

    class NoMask:
        def token_to_id(self, token):
            return None if token == "[MASK]" else vocab.get(token)

    with pytest.raises(TwotowerError, match=r"\[MASK\]"):
        SpecialIds.from_tokenizer(NoMask())


def test_get_tokenizer_reuses_cached_trained_tokenizer(tmp_path, monkeypatch):
    cfg = DataConfig(tokenizer="train", vocab_size=200)
    first = get_tokenizer(cfg, TEXTS, tmp_path)

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained again although the tokenizer was cached")

    monkeypatch.setattr(tokenizer_module, "train_wordpiece", must_not_train)
    second = get_tokenizer(cfg, TEXTS, tmp_path)
    assert second.to_str() == first.to_str()


def test_get_tokenizer_cache_key_depends_on_texts_and_vocab_size(tmp_path):
    get_tokenizer(DataConfig(vocab_size=200), TEXTS, tmp_path)
    get_tokenizer(DataConfig(vocab_size=300), TEXTS, tmp_path)
    get_tokenizer(DataConfig(vocab_size=200), TEXTS[:3], tmp_path)
    assert len(list((tmp_path / "tokenizers").glob("*.json"))) == 3


def test_get_tokenizer_rebuilds_a_corrupt_cached_file(tmp_path):
    cfg = DataConfig(vocab_size=200)
    get_tokenizer(cfg, TEXTS, tmp_path)
    (cached,) = (tmp_path / "tokenizers").glob("*.json")
    cached.write_text("{not json", encoding="utf-8")
    tok = get_tokenizer(cfg, TEXTS, tmp_path)
    assert SpecialIds.from_tokenizer(tok).all == (0, 1, 2, 3, 4)


def test_hub_probe_is_false_and_fast_when_network_is_down(offline):
    start = time.perf_counter()
    assert hub_is_reachable() is False
    assert time.perf_counter() - start < 3


def test_hub_probe_honours_offline_environment_without_connecting(monkeypatch):
    calls = []
    monkeypatch.setattr(socket, "create_connection",
                        lambda *a, **k: calls.append(a) or socket.socket())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_is_reachable() is False
    assert calls == []


def test_load_pretrained_offline_raises_quickly_suggesting_train(offline):
    start = time.perf_counter()
    with pytest.raises(TwotowerError, match="tokenizer='train'") as error:
        load_pretrained("bert-base-uncased")
    assert time.perf_counter() - start < 5
    assert "\n" not in str(error.value)


def test_bert_tokenizer_falls_back_to_training_when_auto_and_offline(
        offline, tmp_path, caplog):
    cfg = DataConfig(tokenizer="bert-base-uncased", source="auto", vocab_size=200)
    with caplog.at_level("WARNING", logger="twotower.data.tokenizer"):
        tok = get_tokenizer(cfg, TEXTS, tmp_path)
    assert SpecialIds.from_tokenizer(tok).all == (0, 1, 2, 3, 4)
    assert "unavailable offline" in caplog.text


def test_bert_tokenizer_with_explicit_hub_source_offline_raises(offline, tmp_path):
    cfg = DataConfig(tokenizer="bert-base-uncased", source="hub")
    with pytest.raises(TwotowerError, match="Hub"):
        get_tokenizer(cfg, TEXTS, tmp_path)


def test_training_gives_the_same_tokenizer_in_every_fresh_process():
    """The trainer numbers pieces in a hash map's order, seeded afresh per process."""
    script = ("import hashlib\n"
              "from twotower.data.tokenizer import train_wordpiece\n"
              f"tok = train_wordpiece({TEXTS!r}, 300)\n"
              "print(hashlib.sha256(tok.to_str().encode()).hexdigest())\n")
    digests = {subprocess.run([sys.executable, "-c", script], capture_output=True,
                              text=True, check=True).stdout for _ in range(3)}
    assert len(digests) == 1


def test_trained_tokenizer_serialises_like_the_trainers_own(small_tokenizer):
    """Rebuilt from the vocabulary trained in a fixed order: nothing else differs."""
    ours = json.loads(small_tokenizer.to_str())
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.train_from_iterator(TEXTS, trainer=trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##", show_progress=False))
    tok.post_processor = small_tokenizer.post_processor
    theirs = json.loads(tok.to_str())
    for document in (ours, theirs):  # the trainer's own vocabulary varies by process
        document["model"].pop("vocab")
    assert ours == theirs


# --- property: any text -------------------------------------------------------------

any_text = st.one_of(
    st.text(max_size=300),
    st.text(st.sampled_from("\x00\x07\x1b\r\n\t\u200b\ufeff\u0301 []#@-<>"),
            max_size=80),
    st.sampled_from(["[SEP]", "[PAD] [MASK]", "##", "a" * 5000, "\U0001f99e" * 50,
                     "\u65e5\u672c\u8a9e", "l\u00f6\u0308bster"]),
)


@settings(max_examples=150, deadline=None)
@given(text=any_text)
def test_any_text_encodes_to_ids_inside_the_vocabulary(small_tokenizer, text):
    size = small_tokenizer.get_vocab_size()
    encoding = small_tokenizer.encode(text, add_special_tokens=False)
    assert all(0 <= i < size for i in encoding.ids)
    small_tokenizer.decode(encoding.ids)  # and back, without an error


@settings(max_examples=25, deadline=None)
@given(texts=st.lists(any_text, max_size=12), vocab_size=st.integers(100, 400))
@example(texts=["00123456789ABGHIPQTCWXZefmrs\u00a2\u00a3\u00a4\u00a5\u00a8\u00a9\u00b8"
                "\u00b9\u00ba\u00bc\u00bd\u00be\u00f2\u00f7\u00f8\u00f9\u00fd"
                "\u013f\u0141\u0143\u0234"], vocab_size=100)  # 48 characters
def test_training_on_any_text_gives_specials_at_0_to_4_and_a_bounded_vocabulary(
        texts, vocab_size):
    tok = train_wordpiece(texts, vocab_size)
    assert SpecialIds.from_tokenizer(tok).all == (0, 1, 2, 3, 4)
    assert len(SPECIAL_TOKENS) <= tok.get_vocab_size()
    if tok.get_vocab_size() > vocab_size:  # as documented: every character is kept,
        # so a text with more characters than ids holds them and nothing merged
        vocab = tok.get_vocab(with_added_tokens=False)
        assert all(t in SPECIAL_TOKENS or len(t) == 1
                   or (t.startswith("##") and len(t) == 3) for t in vocab)
