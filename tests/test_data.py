"""Tests for twotower.data.windows: loading, splitting, token cache, windows, batches."""

from __future__ import annotations

import socket
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from twotower.config import DataConfig
from twotower.data.windows import (
    MIN_TAIL_TOKENS,
    Corpus,
    TokenStream,
    batch_windows,
    clean_wikitext,
    iter_batches,
    load_corpus,
    make_windows,
    prepare_data,
    split_articles,
    tokenize_articles,
    wikitext_articles,
)
from twotower.errors import TwotowerError
from twotower.data.tokenizer import SpecialIds, train_wordpiece

SPECIAL = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)


@pytest.fixture
def offline(no_network):
    """No network (conftest's ``no_network``)."""


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    """Nothing a test does may touch ~/.cache."""
    monkeypatch.setenv("TWOTOWER_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    """The bundled corpus, loaded once for the module."""
    return load_corpus("wikitext-2", "bundled", tmp_path_factory.mktemp("bundled"))


BUNDLED_CFG = DataConfig(source="bundled", vocab_size=512, max_len=64)


@pytest.fixture(scope="module")
def bundled_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("prepared")


@pytest.fixture(scope="module")
def bundled_data(bundled_cache):
    """The whole real pipeline on the bundled corpus at a small vocabulary."""
    return prepare_data(BUNDLED_CFG, cache_dir=bundled_cache)


@pytest.fixture(scope="module")
def tokenizer():
    text = ["The lobster is a species of crustacean. It lives in the sea, 3.5 m deep."]
    return train_wordpiece(text * 10, vocab_size=150)


def stream_of(lengths: list[int]) -> TokenStream:
    """Article i holds ids 1000 * (i + 1) + 0, 1, 2, ...: a range of its own."""
    ids = np.concatenate([1000 * (i + 1) + np.arange(n) for i, n in enumerate(lengths)]
                         ).astype(np.uint32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenStream(ids, offsets)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- loading --------------------------------------------------------------------------

def test_bundled_corpus_loads_with_no_network_quickly(offline, tmp_path):
    start = time.perf_counter()
    corpus = load_corpus("wikitext-2", "bundled", tmp_path)
    assert time.perf_counter() - start < 15  # the Hub client's retries take ~25 s
    assert corpus.source == "bundled" and corpus.name == "wikitext-2"
    assert len(corpus.articles) == 120  # 60 validation + 60 test articles


def test_auto_source_falls_back_to_bundled_when_offline(offline, tmp_path):
    start = time.perf_counter()
    corpus = load_corpus("wikitext-2", "auto", tmp_path)
    assert corpus.source == "bundled"
    assert time.perf_counter() - start < 15


def test_auto_source_honours_hf_offline_env_without_connecting(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise AssertionError("tried to connect although HF_DATASETS_OFFLINE=1")

    monkeypatch.setattr(socket, "create_connection", fail)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert load_corpus("wikitext-2", "auto", tmp_path).source == "bundled"


def test_hub_source_offline_raises_quickly(offline):
    start = time.perf_counter()
    with pytest.raises(TwotowerError, match="bundled"):
        load_corpus("wikitext-2", "hub")
    assert time.perf_counter() - start < 5


WIKITEXT_ON_THE_HUB = {"Salesforce/wikitext": {
    "train": {"text": [" = A = \n", "", " a @-@ b \n"]},
    "validation": {"text": [" = B = \n", ""]},
    "test": {"text": ["", " = C = \n", "", " c \n"]}}}


@pytest.mark.parametrize("source", ["online", "hub"])
def test_online_source_joins_train_validation_and_test_articles(hub_datasets, source):
    calls = hub_datasets(WIKITEXT_ON_THE_HUB)
    corpus = load_corpus("wikitext-103", source)
    assert calls == [("Salesforce/wikitext", "wikitext-103-raw-v1")]
    assert corpus.source == "online" and corpus.name == "wikitext-103"
    assert corpus.articles == ["= A =\na-b", "= B =", "= C =\nc"]


def test_auto_source_uses_the_hub_for_a_corpus_that_is_not_bundled(hub_datasets):
    calls = hub_datasets(WIKITEXT_ON_THE_HUB)
    assert load_corpus("wikitext-103", "auto").source == "online"
    assert calls == [("Salesforce/wikitext", "wikitext-103-raw-v1")]
    calls.clear()
    assert load_corpus("wikitext-2", "auto").source == "bundled"  # bundled: no Hub
    assert calls == []


def test_wikitext_103_is_not_bundled_and_says_how_to_get_it(tmp_path):
    with pytest.raises(TwotowerError, match="source='online'"):
        load_corpus("wikitext-103", "bundled", tmp_path)


def test_unknown_source_raises():
    with pytest.raises(TwotowerError, match="unknown source"):
        load_corpus("wikitext-2", "ftp")


def test_bundled_articles_each_start_with_a_title_line(bundled):
    for article in bundled.articles:
        title = article.split("\n", 1)[0]
        assert title.startswith("= ") and not title.startswith("= =")
    assert bundled.articles[0].startswith("= Homarus gammarus =\n")


def test_bundled_text_has_no_wikitext_artefacts_or_blank_lines(bundled):
    text = "\n".join(bundled.articles)
    assert "@-@" not in text and "@.@" not in text and "@,@" not in text
    assert "<unk>" not in text and "[UNK]" in text
    assert "\n\n" not in text


def test_title_lines_start_articles_but_section_lines_do_not():
    lines = [" ", " = First = ", " ", " Intro . ", " ", " = = Section = = ", " ",
             " Body . ", " = = = Sub = = = ", " ", " = Second = ", " ", " More . "]
    articles, n_titles = wikitext_articles(lines)
    assert n_titles == 2
    assert articles == ["= First =\nIntro .\n= = Section = =\nBody .\n= = = Sub = = =",
                        "= Second =\nMore ."]


def test_title_shaped_line_needs_blank_lines_on_both_sides_to_be_a_title():
    # Equations such as "= 1 ohm and C =" sit in running text; a title never does.
    lines = [" = Filter = ", " ", " Text . ", " = 1 ohm and C = ", " ", " More . ",
             " ", " = 2 ohm = ", " 1 farad . ", " ", " = Next = ", " "]
    articles, n_titles = wikitext_articles(lines)
    assert n_titles == 2
    assert articles[0].split("\n") == ["= Filter =", "Text .", "= 1 ohm and C =",
                                       "More .", "= 2 ohm =", "1 farad ."]


def test_clean_wikitext_joins_hyphens_and_numbers_and_marks_unknowns():
    line = " a well @-@ known 1 @,@ 000 km ( 3 @.@ 5 mi ) <unk> bridge "
    assert clean_wikitext(line) == " a well-known 1,000 km ( 3.5 mi ) [UNK] bridge "


def test_unk_in_wikitext_becomes_the_tokenizer_unk_id(tokenizer, tmp_path):
    article = clean_wikitext(" The <unk> lobster ").strip()
    stream = tokenize_articles([article], tokenizer, tmp_path)
    special = SpecialIds.from_tokenizer(tokenizer)
    assert list(stream.ids).count(special.unk) == 1
    assert tokenizer.token_to_id("<") not in stream.ids


def test_literal_special_tokens_in_text_stay_plain_text(tokenizer, tmp_path):
    text = "the [SEP] sea [PAD] [CLS] [MASK]"
    stream = tokenize_articles([text], tokenizer, tmp_path)
    special = SpecialIds.from_tokenizer(tokenizer)
    ids = list(stream.ids)
    assert ids[-1] == special.sep and ids.count(special.sep) == 1
    assert not {special.pad, special.cls, special.mask} & set(ids)


def test_local_folder_of_plain_text_becomes_articles(tmp_path):
    folder = tmp_path / "class_text"
    folder.mkdir()
    paragraphs = [f"Paragraph {i}\nwrapped line." for i in range(45)]
    write(folder / "a.txt", "\n\n".join(paragraphs))
    write(folder / "b.txt", "One short file.\n")
    write(folder / "notes.md", "not text")
    (folder / ".hidden").mkdir()
    write(folder / ".hidden" / "c.txt", "skipped")
    corpus = load_corpus(str(folder), "local")
    assert corpus.source == "local"
    # 45 paragraphs -> articles of 20, 20, 5; each file ends an article.
    assert [a.count("\n") + 1 for a in corpus.articles] == [20, 20, 5, 1]
    assert corpus.articles[0].startswith("Paragraph 0 wrapped line.\nParagraph 1")
    assert corpus.articles[-1] == "One short file."


def test_local_file_with_title_lines_is_split_at_titles(tmp_path):
    text = "\n = A = \n\n Text @-@ one .\n\n = B = \n\n Two .\n"
    path = write(tmp_path / "wiki.txt", text)
    assert load_corpus(str(path)).articles == ["= A =\nText-one .", "= B =\nTwo ."]


def test_non_utf8_file_raises_naming_file_offset_and_fix(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("Caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(TwotowerError) as error:
        load_corpus(str(path))
    message = str(error.value)
    assert "latin.txt" in message and "offset 3" in message and "iconv" in message
    assert "\n" not in message


def test_utf8_file_with_byte_order_mark_loads_without_it(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfCaf\xc3\xa9\n")
    assert load_corpus(str(path)).articles == ["Caf\u00e9"]


def test_missing_path_raises(tmp_path):
    with pytest.raises(TwotowerError, match="check the path"):
        load_corpus(str(tmp_path / "nowhere.txt"))


@pytest.mark.parametrize("text", ["", "\n\n   \n\t\n"])
def test_empty_corpus_raises(tmp_path, text):
    with pytest.raises(TwotowerError, match="empty"):
        load_corpus(str(write(tmp_path / "empty.txt", text)))


def test_hub_corpus_name_with_local_source_raises():
    with pytest.raises(TwotowerError, match="needs a path"):
        load_corpus("wikitext-2", "local")


# --- splitting ------------------------------------------------------------------------

def test_split_is_by_article_disjoint_complete_and_deterministic():
    articles = [f"article {i}" for i in range(50)]
    train, val = split_articles(articles, 0.1, seed=3)
    assert len(val) == 5 and len(train) == 45
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(articles)
    assert split_articles(articles, 0.1, seed=3) == (train, val)
    assert split_articles(articles, 0.1, seed=4)[1] != val
    assert train == sorted(train, key=articles.index)  # corpus order kept


def test_split_keeps_at_least_one_article_each_side():
    assert split_articles(["a", "b"], 0.01, 0) in ((["a"], ["b"]), (["b"], ["a"]))
    train, val = split_articles(["a", "b", "c"], 0.99, 0)
    assert len(train) == 1 and len(val) == 2


def test_split_of_one_article_raises():
    with pytest.raises(TwotowerError, match="at least 2"):
        split_articles(["only"], 0.1, 0)


# --- token stream and cache -----------------------------------------------------------

def test_token_stream_ends_every_paragraph_with_sep(tokenizer, tmp_path):
    articles = ["the sea\nthe lobster", "it lives"]
    stream = tokenize_articles(articles, tokenizer, tmp_path)
    sep = SpecialIds.from_tokenizer(tokenizer).sep
    first = stream.ids[stream.offsets[0]:stream.offsets[1]]
    second = stream.ids[stream.offsets[1]:stream.offsets[2]]
    assert list(first).count(sep) == 2 and first[-1] == sep
    assert list(second).count(sep) == 1 and second[-1] == sep
    assert stream.ids.dtype == np.uint16 and isinstance(stream.ids, np.memmap)
    assert stream.offsets.dtype == np.int64 and stream.n_articles == 2


class NoEncodeTokenizer:
    """Behaves like the wrapped tokenizer but refuses to tokenize."""

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def encode_batch(self, *args, **kwargs):
        raise AssertionError("tokenized again although the ids were cached")


def test_token_cache_is_reused_without_retokenizing(tokenizer, tmp_path):
    articles = ["the sea", "the lobster lives in the sea"]
    first = tokenize_articles(articles, tokenizer, tmp_path)
    second = tokenize_articles(articles, NoEncodeTokenizer(tokenizer), tmp_path)
    np.testing.assert_array_equal(first.ids, second.ids)
    np.testing.assert_array_equal(first.offsets, second.offsets)
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_articles(["other text"], NoEncodeTokenizer(tokenizer), tmp_path)


def test_incomplete_cache_entry_is_rebuilt(tokenizer, tmp_path):
    articles = ["the sea", "the lobster"]
    first = np.array(tokenize_articles(articles, tokenizer, tmp_path).ids)
    (ids_file,) = (tmp_path / "tokens").glob("*.ids")
    ids_file.write_bytes(ids_file.read_bytes()[:-2])  # as if a crash cut it short
    np.testing.assert_array_equal(tokenize_articles(articles, tokenizer, tmp_path).ids,
                                  first)
    assert not list((tmp_path / "tokens").glob("*.tmp"))


# --- windows --------------------------------------------------------------------------

def test_windows_never_cross_article_boundaries():
    windows = make_windows(stream_of([5, 300, 17, 1, 130, 64]), max_len=16,
                           special=SPECIAL)
    for window in windows:
        real = window[1:][window[1:] != SPECIAL.pad]
        assert len(np.unique(real // 1000)) == 1


def test_every_window_starts_with_cls_and_pads_only_at_the_end():
    windows = make_windows(stream_of([5, 300, 17, 1, 130]), max_len=16, special=SPECIAL)
    assert windows.shape[1] == 16 and windows.dtype == np.int64
    assert (windows[:, 0] == SPECIAL.cls).all()
    is_pad = windows == SPECIAL.pad
    # Once a window has started padding it never goes back to real tokens.
    assert not (is_pad[:, :-1] & ~is_pad[:, 1:]).any()


def test_windows_hold_every_token_in_order_when_nothing_is_dropped():
    stream = stream_of([15, 30, 9])
    windows = make_windows(stream, max_len=16, special=SPECIAL)
    body = windows[:, 1:]
    np.testing.assert_array_equal(body[body != SPECIAL.pad], stream.ids)


def test_short_last_window_is_dropped_unless_it_is_the_only_one():
    # 127 tokens per window at max_len=128: 127 + 5 -> the 5-token tail is dropped;
    # 127 + 8 keeps it; an article of 3 tokens keeps its only window.
    windows = make_windows(stream_of([132, 135, 3]), max_len=128, special=SPECIAL)
    real = (windows != SPECIAL.pad).sum(axis=1) - 1
    assert list(real) == [127, 127, 8, 3]


def test_empty_stream_gives_no_windows():
    empty = TokenStream(np.zeros(0, np.uint16), np.zeros(3, np.int64))
    assert make_windows(empty, max_len=8, special=SPECIAL).shape == (0, 8)


# --- prepare_data on the real bundled corpus ------------------------------------------

def test_prepared_bundled_data_is_well_formed(bundled_data):
    data = bundled_data
    assert data.source == "bundled" and data.corpus_name == "wikitext-2"
    assert data.special.all == (0, 1, 2, 3, 4)
    assert data.vocab_size % 64 == 0
    assert data.vocab_size >= data.tokenizer.get_vocab_size()
    for windows in (data.train, data.val):
        assert windows.ndim == 2 and windows.shape[1] == 64
        assert windows.dtype == np.int64
        assert windows.min() >= 0 and windows.max() < data.tokenizer.get_vocab_size()
        assert (windows[:, 0] == data.special.cls).all()
    assert data.n_train_tokens == np.count_nonzero(data.train != data.special.pad)
    assert data.n_train_tokens > 5 * data.n_val_tokens > 0
    assert (data.val == data.special.unk).any()  # <unk> really became [UNK]


def test_prepare_data_is_reproducible_from_its_cache(bundled_data, bundled_cache):
    again = prepare_data(BUNDLED_CFG, cache_dir=bundled_cache)
    np.testing.assert_array_equal(again.train, bundled_data.train)
    np.testing.assert_array_equal(again.val, bundled_data.val)


def test_max_train_tokens_keeps_about_that_many_tokens(bundled_data, bundled_cache):
    cfg = replace(BUNDLED_CFG, max_train_tokens=20_000)
    data = prepare_data(cfg, cache_dir=bundled_cache)
    assert 20_000 - 64 < data.n_train_tokens <= 20_000
    np.testing.assert_array_equal(data.val, bundled_data.val)
    kept = {w.tobytes() for w in data.train}
    assert kept <= {w.tobytes() for w in bundled_data.train}


def test_corpus_too_small_for_one_window_raises_one_line_error(tmp_path):
    # Ten articles of about 60 tokens: train has enough, one validation article not.
    body = " The lobster lives in the sea and eats small fish ." * 5
    text = "".join(f" \n = Article {i} = \n \n{body}\n" for i in range(10))
    cfg = DataConfig(corpus=str(write(tmp_path / "tiny.txt", text)), vocab_size=100,
                     max_len=128, val_fraction=0.1)
    with pytest.raises(TwotowerError, match="than one window of max_len=128") as e:
        prepare_data(cfg, cache_dir=tmp_path)
    assert "\n" not in str(e.value) and "validation split" in str(e.value)


@pytest.mark.parametrize("bad, field", [(dict(max_train_tokens=-1), "max_train_tokens"),
                                        (dict(max_len=1), "max_len"),
                                        (dict(val_fraction=1.0), "val_fraction")])
def test_prepare_data_rejects_bad_settings(tmp_path, bad, field):
    cfg = replace(DataConfig(source="bundled"), **bad)
    with pytest.raises(TwotowerError, match=field):
        prepare_data(cfg, cache_dir=tmp_path)


# --- batches --------------------------------------------------------------------------

def test_batch_windows_is_deterministic_and_step_addressable():
    windows = np.arange(10 * 4).reshape(10, 4)
    replay = [batch_windows(windows, step, 3, seed=7) for step in range(8)]
    np.testing.assert_array_equal(batch_windows(windows, 5, 3, seed=7), replay[5])
    assert not np.array_equal(batch_windows(windows, 5, 3, seed=8), replay[5])
    assert all(batch.shape == (3, 4) for batch in replay)


def test_batch_windows_visits_every_window_once_per_epoch():
    windows = np.arange(12)[:, None] * np.ones((1, 2), dtype=np.int64)
    epoch = np.concatenate([batch_windows(windows, s, 4, seed=0) for s in range(3)])
    assert sorted(epoch[:, 0]) == list(range(12))
    second = np.concatenate([batch_windows(windows, s, 4, seed=0) for s in range(3, 6)])
    assert sorted(second[:, 0]) == list(range(12))
    assert not np.array_equal(epoch, second)  # a fresh order every epoch


def test_batch_windows_straddles_epochs_and_handles_batches_bigger_than_data():
    windows = np.arange(5)[:, None]
    twice = sorted(batch_windows(windows, 0, 10, seed=1)[:, 0])
    assert twice == sorted([*range(5)] * 2)
    with pytest.raises(TwotowerError):
        batch_windows(windows[:0], 0, 4, seed=0)


def test_iter_batches_covers_windows_in_order_with_smaller_last_batch():
    windows = np.arange(7 * 2).reshape(7, 2)
    batches = list(iter_batches(windows, 3))
    assert [len(b) for b in batches] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(batches), windows)


# --- property: arbitrary text either works or fails with a TwotowerError --------------

paragraph = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=60),
    st.text(alphabet=st.sampled_from("\x00\x07\x1b\r\t\u200b\ufeff =@-<unk>[]"),
            max_size=60),
    st.builds(lambda c, n: c * n, st.text(min_size=1, max_size=3),
              st.integers(200, 3000)),  # one huge "word"
    st.just("the sea " * 5000),  # one huge line
    st.just(" = Title = "), st.just(""),
    st.lists(st.sampled_from(["the", "Sea", "l\u00f6bster", "\u65e5\u672c", "@-@",
                              "3.5", "<unk>", "\U0001f99e", "[SEP]"]),
             max_size=80).map(" ".join),
)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(files=st.lists(st.lists(paragraph, max_size=50), min_size=2, max_size=4),
       max_len=st.integers(2, 40), val_fraction=st.floats(0.05, 0.6))
def test_arbitrary_local_text_gives_valid_windows_or_a_twotower_error(
        files, max_len, val_fraction):
    with tempfile.TemporaryDirectory() as folder:
        for i, paragraphs in enumerate(files):
            write(Path(folder) / f"{i}.txt", "\n\n".join(paragraphs))
        cfg = DataConfig(corpus=folder, vocab_size=120, max_len=max_len,
                         val_fraction=val_fraction)
        try:
            data = prepare_data(cfg, cache_dir=Path(folder) / "cache")
        except TwotowerError as error:
            assert "\n" not in str(error)
            event(" ".join(str(error).replace(folder, "<dir>").split()[:4]))
            return
        event("windows made")
        size = data.tokenizer.get_vocab_size()
        for windows in (data.train, data.val):
            assert windows.ndim == 2 and windows.shape[1] == max_len
            assert len(windows) >= 1
            assert windows.min() >= 0 and windows.max() < size <= data.vocab_size
            assert (windows[:, 0] == data.special.cls).all()


def test_corpus_dataclass_is_frozen():
    corpus = Corpus("x", "local", ["a"])
    with pytest.raises(AttributeError):
        corpus.name = "y"


def test_utf16_file_with_byte_order_mark_loads(tmp_path):
    """Windows Notepad's "Unicode" is UTF-16 with a byte-order mark: unambiguous."""
    path = tmp_path / "notepad.txt"
    path.write_bytes("Caf\u00e9 au lait.\n\nThe second paragraph.\n".encode("utf-16"))
    assert load_corpus(str(path)).articles == ["Caf\u00e9 au lait.\nThe second "
                                               "paragraph."]


encoded_chunk = st.one_of(
    st.text(max_size=80).map(lambda t: t.encode("utf-8")),
    st.text(st.characters(max_codepoint=255), max_size=60).map(
        lambda t: t.encode("latin-1")),
    st.text(st.characters(codec="cp1252"), max_size=40).map(lambda t: t.encode("cp1252")),
    st.text(max_size=40).map(lambda t: t.encode("utf-16")),
    st.binary(max_size=40),
    st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\r\n", b"\n\n = Title = \n\n",
                     b"\x00", b"caf\xc3\xa9 ", b"caf\xe9 "]),
)


@settings(max_examples=80, deadline=None)
@given(chunks=st.lists(encoded_chunk, max_size=10))
def test_a_file_of_any_bytes_loads_as_what_it_is_or_names_file_line_and_fix(chunks):
    """Mixed encodings (UTF-8, Latin-1, Windows-1252, UTF-16, raw bytes) in one file:
    either the file is text in UTF-8 or UTF-16-with-a-mark and loads, or one line names
    the file, where the bad byte is and how to re-save it. Nothing is guessed."""
    data = b"".join(chunks)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "class notes.txt"
        path.write_bytes(data)
        try:
            corpus = load_corpus(str(path))
        except TwotowerError as error:
            message = str(error)
            assert "\n" not in message and "class notes.txt" in message
            if "empty" not in message:
                assert "line " in message and "re-save it as UTF-8" in message
                event("refused: not UTF-8")
            else:
                event("refused: empty")
            return
        utf16 = data.startswith((b"\xff\xfe", b"\xfe\xff"))
        text = data.decode("utf-16") if utf16 else data.removeprefix(
            b"\xef\xbb\xbf").decode("utf-8")  # it really was that encoding
        assert corpus.articles and all(a.strip() for a in corpus.articles)
        joined = "".join(corpus.articles)
        assert "\ufffd" not in joined or "\ufffd" in text  # nothing was mis-decoded
        event("loaded")


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 150), min_size=1, max_size=12),
       max_len=st.integers(2, 60), seed=st.integers(0, 3))
def test_windows_of_any_token_stream_hold_each_article_in_order_and_apart(
        lengths, max_len, seed):
    """make_windows against the rule written out article by article."""
    ids = np.random.default_rng(seed).integers(5, 999, sum(lengths)).astype(np.uint16)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    windows = make_windows(TokenStream(ids, offsets), max_len, SPECIAL)
    body, expected = max_len - 1, []
    for a in range(len(lengths)):
        article = ids[offsets[a]:offsets[a + 1]]
        pieces = [article[i:i + body] for i in range(0, len(article), body)]
        if len(pieces) > 1 and len(pieces[-1]) < min(MIN_TAIL_TOKENS, max(1, body // 2)):
            pieces.pop()  # a short last piece of a long article is dropped
        expected += pieces
    assert windows.shape == (len(expected), max_len)
    assert (windows[:, 0] == SPECIAL.cls).all()
    real = windows[:, 1:] != SPECIAL.pad
    assert (np.diff(real.astype(int), axis=1) <= 0).all()  # PAD only at the end
    for row, piece in zip(windows[:, 1:], expected):
        np.testing.assert_array_equal(row[row != SPECIAL.pad], piece)


@settings(max_examples=40, deadline=None)
@given(articles=st.lists(st.lists(paragraph, min_size=1, max_size=4).map("\n".join),
                         min_size=1, max_size=5))
def test_any_articles_tokenize_to_plain_ids_and_one_sep_per_paragraph_end(tokenizer,
                                                                          articles):
    """No text, however odd (literal "[PAD]", control characters, huge lines), can
    put a PAD, CLS or MASK id into the stream; SEP only ends paragraphs."""
    with tempfile.TemporaryDirectory() as folder:
        stream = tokenize_articles(articles, tokenizer, cache_dir=folder)
        ids = np.asarray(stream.ids)
    assert stream.n_articles == len(articles)
    assert not np.isin(ids, [SPECIAL.pad, SPECIAL.cls, SPECIAL.mask]).any()
    for a, article in enumerate(articles):
        own = ids[stream.offsets[a]:stream.offsets[a + 1]]
        assert own.size == 0 or own[-1] == SPECIAL.sep
        assert (own == SPECIAL.sep).sum() <= article.count("\n") + 1
