"""Tests of twotower.data.ud: reading CoNLL-U, UPOS per WordPiece id, tree geometry."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from twotower.errors import TwotowerError
from twotower.data.ud import (
    CONTENT_UPOS,
    FUNCTION_UPOS,
    dominant_upos,
    load_ud,
    tree_depths,
    tree_distances,
    ud_english_ewt_paths,
    word_class,
)

# Sentence 2 has a multiword token (2-3 "don't") and an empty node (3.1), both of
# which must be skipped; "dogs", "Cats" and "runs" split into two WordPieces.
SAMPLE = """\
# sent_id = s1
# text = The dogs run.
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tdogs\tdog\tNOUN\tNNS\t_\t3\tnsubj\t_\t_
3\trun\trun\tVERB\tVBP\t_\t0\troot\t_\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# sent_id = s2
# text = Cats don't walk.
1\tCats\tcat\tNOUN\tNNS\t_\t4\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
3.1\twalk\twalk\tVERB\tVB\t_\t_\t_\t4:conj\t_
4\twalk\twalk\tVERB\tVB\t_\t0\troot\t_\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = s3
# text = The cat runs.
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tcat\tcat\tNOUN\tNN\t_\t3\tnsubj\t_\t_
3\truns\trun\tVERB\tVBZ\t_\t0\troot\t_\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

"""

VOCAB = {"[UNK]": 0, "the": 1, "dog": 2, "cat": 3, "run": 4, "##s": 5, "do": 6,
         "n": 7, "'": 8, "t": 9, "walk": 10, ".": 11}


@pytest.fixture
def sample_file(tmp_path):
    path = tmp_path / "sample.conllu"
    path.write_text(SAMPLE, encoding="utf-8")
    return path


@pytest.fixture
def tokenizer():
    tok = Tokenizer(models.WordPiece(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def test_load_ud_skips_multiword_tokens_and_empty_nodes(sample_file):
    sentences = load_ud(sample_file)
    assert len(sentences) == 3
    second = sentences[1]
    assert second.words == ["Cats", "do", "n't", "walk", "."]
    assert second.upos == ["NOUN", "AUX", "PART", "VERB", "PUNCT"]
    np.testing.assert_array_equal(second.heads, [4, 4, 4, 0, 4])
    assert len(second) == 5


def test_load_ud_reads_several_files_in_order(sample_file, tmp_path):
    other = tmp_path / "other.conllu"
    other.write_text(SAMPLE.split("\n\n")[0] + "\n\n", encoding="utf-8")
    sentences = load_ud([other, sample_file])
    assert [s.words[1] for s in sentences] == ["dogs", "dogs", "do", "cat"]


def test_load_ud_rejects_missing_file_and_missing_head(tmp_path):
    with pytest.raises(TwotowerError, match="not found"):
        load_ud(tmp_path / "nope.conllu")
    broken = tmp_path / "broken.conllu"
    broken.write_text("1\tHi\thi\tINTJ\tUH\t_\t_\t_\t_\t_\n\n", encoding="utf-8")
    with pytest.raises(TwotowerError, match="head"):
        load_ud(broken)


def test_dominant_upos_gives_subwords_the_tag_of_their_word(sample_file, tokenizer):
    upos = dominant_upos(load_ud(sample_file), tokenizer)
    # "##s" ends dogs (NOUN), Cats (NOUN) and runs (VERB): NOUN in 2 of 3 occurrences
    assert upos[VOCAB["##s"]] == pytest.approx(("NOUN", 2 / 3, 3))
    assert upos[VOCAB["the"]] == ("DET", 1.0, 2)  # "The" lowercased both times
    assert upos[VOCAB["run"]] == ("VERB", 1.0, 2)  # "run" and the stem of "runs"
    assert upos[VOCAB["cat"]] == ("NOUN", 1.0, 2)
    assert upos[VOCAB["."]] == ("PUNCT", 1.0, 3)
    for piece in ("n", "'", "t"):  # n't -> n ' t, each inherits PART
        assert upos[VOCAB[piece]] == ("PART", 1.0, 1)
    assert VOCAB["[UNK]"] not in upos  # every word was in the vocabulary
    assert sum(count for _, _, count in upos.values()) == 18  # 13 words + 5 pieces more


def test_dominant_upos_breaks_ties_alphabetically_and_can_keep_case(tmp_path,
                                                                    tokenizer):
    path = tmp_path / "tie.conllu"
    path.write_text("1\tThe\tthe\tDET\t_\t_\t2\tdet\t_\t_\n"
                    "2\tthe\tthe\tPRON\t_\t_\t0\troot\t_\t_\n\n", encoding="utf-8")
    sentences = load_ud(path)
    assert dominant_upos(sentences, tokenizer)[VOCAB["the"]] == ("DET", 0.5, 2)
    cased = dominant_upos(sentences, tokenizer, lowercase=False)
    assert cased[VOCAB["the"]] == ("PRON", 1.0, 1)
    assert cased[VOCAB["[UNK]"]] == ("DET", 1.0, 1)  # "The" is not in the vocabulary


def test_word_class_splits_function_content_and_other():
    assert {word_class(t) for t in FUNCTION_UPOS} == {"function"}
    assert {word_class(t) for t in CONTENT_UPOS} == {"content"}
    assert [word_class(t) for t in ("INTJ", "SYM", "X")] == ["other"] * 3
    assert not set(FUNCTION_UPOS) & set(CONTENT_UPOS)


def test_tree_distances_and_depths_match_a_hand_drawn_tree():
    # words 1..5; edges 1-2, 4-2, 3-4, 5-4; word 2 is the root
    heads = np.array([2, 0, 4, 2, 4])
    expected = np.array([[0, 1, 3, 2, 3],
                         [1, 0, 2, 1, 2],
                         [3, 2, 0, 1, 2],
                         [2, 1, 1, 0, 1],
                         [3, 2, 2, 1, 0]])
    np.testing.assert_array_equal(tree_distances(heads), expected)
    np.testing.assert_array_equal(tree_depths(heads), [1, 0, 2, 1, 2])
    np.testing.assert_array_equal(tree_distances(np.array([0])), [[0]])
    np.testing.assert_array_equal(tree_depths(np.array([0])), [0])


@pytest.mark.parametrize("heads, reason", [
    ([2, 0, 0], "exactly one root"),
    ([2, 1, 0], "do not form a tree"),  # 1 <-> 2 cycle cuts both off from the root
    ([4, 0, 2], "must lie in"),
])
def test_tree_distances_rejects_heads_that_are_not_one_tree(heads, reason):
    with pytest.raises(TwotowerError, match=reason):
        tree_distances(np.array(heads))


def test_a_named_ud_folder_without_the_files_names_the_fix(tmp_path, monkeypatch):
    with pytest.raises(TwotowerError) as error:
        ud_english_ewt_paths(tmp_path / "nowhere")
    message = str(error.value)
    assert "\n" not in message
    assert "TWOTOWER_UD_DIR" in message and "source='bundled'" in message
    monkeypatch.setenv("TWOTOWER_UD_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(TwotowerError, match="en_ewt-ud-dev.conllu"):
        ud_english_ewt_paths()
    assert ud_english_ewt_paths(source="bundled")[0].name == "en_ewt-ud-dev.conllu.xz"


def test_ud_directory_comes_from_the_environment(tmp_path, monkeypatch, sample_file):
    for split in ("dev", "test"):
        (tmp_path / f"en_ewt-ud-{split}.conllu").write_text(SAMPLE, encoding="utf-8")
    monkeypatch.setenv("TWOTOWER_UD_DIR", str(tmp_path))
    paths = ud_english_ewt_paths()
    assert paths == [tmp_path / "en_ewt-ud-dev.conllu",
                     tmp_path / "en_ewt-ud-test.conllu"]
    assert len(load_ud(paths)) == 6


def test_bundled_ud_dev_set_loads_as_single_rooted_trees(monkeypatch):
    monkeypatch.delenv("TWOTOWER_UD_DIR", raising=False)
    (dev,) = ud_english_ewt_paths(splits=("dev",))
    sentences = load_ud(dev)
    assert len(sentences) > 1000
    assert all((s.heads == 0).sum() == 1 for s in sentences)
    assert all(len(s.words) == len(s.upos) == len(s.heads) for s in sentences)


def test_ud_splits_that_do_not_ship_are_refused():
    with pytest.raises(TwotowerError, match="'train'"):
        ud_english_ewt_paths(splits=("train",))
