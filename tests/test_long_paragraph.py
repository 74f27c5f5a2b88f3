"""A corpus with one huge paragraph is read and tokenized in bounded pieces.

Issue 15 (3): a corpus of one 46 MB line peaked at 6.2 GB. These tests check the
mechanism on a few megabytes (few copies of the text at once, bounded pieces, the same
ids as tokenizing whole); the figures for 100 MB come from ``python -m twotower bench
--corpus-memory 100``, a benchmark, never a timed test.
"""

from __future__ import annotations

import hashlib
import tempfile
import tracemalloc
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twotower.data import corpus as corpus_module
from twotower.data import tokenizer as tokenizer_module
from twotower.data import windows as windows_module
from twotower.data.corpus import load_corpus
from twotower.data.tokenizer import SpecialIds, fingerprint, train_wordpiece
from twotower.data.windows import tokenize_articles
from twotower.errors import TwotowerError

MB = 2**20


def long_text(n_chars: int, seed: int = 0) -> str:
    """One paragraph of about ``n_chars`` characters of words, punctuation, numbers."""
    rng = np.random.default_rng(seed)
    words = np.array(["the", "sea", "lobster", "lives", "in", "deep", "water", ",",
                      ".", "3.5", "crustaceans", "unbelievably", "l\u00f6bster"])
    n_words = n_chars // 6
    return " ".join(words[rng.integers(0, len(words), n_words)])


@pytest.fixture(scope="module")
def tokenizer():
    text = ["The lobster is a species of crustacean. It lives in the sea, 3.5 m deep."]
    return train_wordpiece(text * 10, vocab_size=150)


def traced_peak(work):
    """``work()``'s result and the most Python memory it held at once, in bytes."""
    tracemalloc.start()
    try:
        result = work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


class RecordingTokenizer:
    """The wrapped tokenizer, noting the most characters it was given in one call."""

    def __init__(self, tok):
        self.tok = tok
        self.most_chars = 0

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def encode_batch(self, texts, **kwargs):
        self.most_chars = max(self.most_chars, sum(len(t) for t in texts))
        return self.tok.encode_batch(texts, **kwargs)


def test_reading_a_one_paragraph_file_holds_at_most_two_copies_of_its_text(tmp_path):
    text = long_text(6 * MB)
    path = tmp_path / "long.txt"
    path.write_text(f"A short one.\n\n{text}\n\nAnother.\n", encoding="utf-8")
    corpus, peak = traced_peak(lambda: load_corpus(str(path)))
    assert corpus.articles == [f"A short one.\n{text}\nAnother."]
    assert peak < 2.5 * path.stat().st_size


def test_tokenizing_a_long_paragraph_holds_less_python_memory_than_its_text(
        tokenizer, tmp_path):
    text = long_text(4 * MB)
    stream, peak = traced_peak(lambda: tokenize_articles([text], tokenizer, tmp_path))
    assert len(stream.ids) > len(text) // 10
    assert peak < len(text) / 2


def test_a_long_paragraph_reaches_the_tokenizer_in_bounded_pieces(tokenizer, tmp_path):
    text = long_text(4 * MB)
    recording = RecordingTokenizer(tokenizer)
    tokenize_articles(["A short one.\n" + text], recording, tmp_path)
    assert 0 < recording.most_chars <= MB


# Characters around which cutting could go wrong: accents that combine with a space,
# CJK (padded with spaces by the normaliser), control characters, literal specials.
tricky = st.lists(st.sampled_from(list("ab \t.,-") + [
    "\u0301", "\u00e9", "\u65e5", "\x07", "[SEP]", "[UNK]", "  ", "l\u00f6bster",
    "\U0001f99e", "x" * 120]), max_size=60).map("".join)


@settings(max_examples=60, deadline=None)
@given(paragraphs=st.lists(tricky, min_size=1, max_size=4), piece=st.integers(1, 9))
def test_paragraphs_cut_into_pieces_tokenize_to_the_ids_of_the_whole(
        tokenizer, paragraphs, piece):
    sep = SpecialIds.from_tokenizer(tokenizer).sep
    literals = windows_module._special_literals(tokenizer)
    expected = []
    for p in paragraphs:
        ids = tokenizer.encode(windows_module._defuse(p, literals),
                               add_special_tokens=False).ids
        expected += [*ids, sep] if ids else []
    with mock.patch.object(tokenizer_module, "PIECE_CHARS", piece), \
            mock.patch.object(windows_module, "BATCH_CHARS", 3 * piece), \
            tempfile.TemporaryDirectory() as folder:
        stream = tokenize_articles(["\n".join(paragraphs)], tokenizer, folder)
        assert list(np.asarray(stream.ids)) == expected


BOM = b"\xef\xbb\xbf"
file_bytes = st.lists(st.one_of(
    st.lists(st.sampled_from(list("ab \u00e9\u65e5\U0001f99e") + [
        "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028"]), max_size=20
             ).map(lambda t: "".join(t).encode("utf-8")),
    st.binary(max_size=6),
    st.sampled_from([BOM, b"\xff\xfe", "a\r\nb".encode("utf-16"), b"\r", b"\n"]),
), max_size=6).map(b"".join)


def read_whole(data: bytes) -> list[str] | str:
    """The lines of a file holding ``data``, or where the bad byte is, read at once."""
    utf16 = data.startswith((b"\xff\xfe", b"\xfe\xff"))
    encoding, start = ("utf-16", 0) if utf16 else ("utf-8", 3 * data.startswith(BOM))
    try:
        return data[start:].decode(encoding).splitlines()
    except UnicodeDecodeError as error:
        offset = start + error.start
        line = data[:offset].count(b"\n") + 1
        return f"byte 0x{data[offset]:02x} at offset {offset}, line {line})"


@settings(max_examples=150, deadline=None)
@given(data=file_bytes, block=st.integers(1, 7))
def test_a_file_read_in_blocks_gives_the_lines_or_the_error_of_reading_it_whole(
        data, block):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "text.txt"
        path.write_bytes(data)
        expected = read_whole(data)
        with mock.patch.object(corpus_module, "READ_BYTES", block):
            if isinstance(expected, list):
                assert list(corpus_module.read_lines(path)) == expected
            else:
                with pytest.raises(TwotowerError) as error:
                    list(corpus_module.read_lines(path))
                assert expected in str(error.value) and "\n" not in str(error.value)


def test_fingerprint_of_a_long_text_is_the_digest_of_its_whole_encoding():
    text = long_text(MB) + "\ud800 \U0001f99e"  # a lone surrogate, an emoji
    data = text.encode("utf-8", errors="surrogatepass")
    one = (1).to_bytes(8, "little")
    expected = hashlib.sha256(one + b"a" + len(data).to_bytes(8, "little") + data)
    assert fingerprint(["a", text]) == expected.hexdigest()


def test_training_text_reaches_the_trainer_in_pieces_cut_between_words(monkeypatch):
    monkeypatch.setattr(tokenizer_module, "PIECE_CHARS", 1000)
    text = long_text(100_000) + "\n" + "x" * 5000 + "\n\n" + long_text(10_000, seed=1)
    pieces = list(tokenizer_module.training_pieces([text, "short"]))
    assert "".join(pieces) == text + "short"
    assert max(len(p) for p in pieces) == 5001  # "\n" + the run of x: cut nowhere
    assert all(p[0] in " \n" for p in pieces[1:-1])


def test_a_tokenizer_trained_on_a_long_paragraph_equals_one_trained_on_its_lines():
    text = long_text(300_000)
    lines = text.replace(" . ", " .\n").splitlines()
    assert train_wordpiece([text], 300).to_str() == train_wordpiece(lines, 300).to_str()
