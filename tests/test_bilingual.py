"""Bilingual data, tokenizer metrics and runs (twotower.experiments.bilingual, chapters 13-14).

Uses a tiny made-up parallel corpus written as Multi30k-style gzip files in a folder of
their own (source "local"), so training stays fast; the bundled Multi30k and its sources
are tested in test_sources.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import random

import numpy as np
import pytest
import torch

from twotower.experiments.bilingual import (
    LanguageWindows,
    bilingual_config,
    ensure_bilingual_run,
    load_multi30k,
    loss_per_character,
    objective_for,
    pack_windows,
    prepare_bilingual,
    token_languages,
    type_languages,
)
from twotower.errors import TwotowerError
from twotower.models.tower_lm import IGNORE, TwoTowerLM
from twotower.experiments.plasticity import adaptation_curve, fertility
from twotower.data.tokenizer import train_wordpiece

WORDS = {"en": (["a man", "a woman", "two dogs", "the child"],
                ["rides", "paints", "watches", "carries"],
                ["a red bike", "the green fence", "a small boat", "the old house"]),
         "de": (["ein mann", "eine frau", "zwei hunde", "das kind"],
                ["fährt", "malt", "beobachtet", "trägt"],
                ["ein rotes fahrrad", "den grünen zaun", "ein kleines boot",
                 "das alte haus"]),
         "fr": (["un homme", "une femme", "deux chiens", "l'enfant"],
                ["conduit", "peint", "regarde", "porte"],
                ["un vélo rouge", "la clôture verte", "un petit bateau",
                 "la vieille maison"])}


@pytest.fixture(scope="module")
def multi30k_folder(tmp_path_factory):
    """train/val/test files, line i of every language a translation of line i."""
    folder = tmp_path_factory.mktemp("multi30k")
    rng = random.Random(0)
    for split, n in (("train", 400), ("val", 40), ("test_2016_flickr", 20)):
        picks = [(rng.randrange(4), rng.randrange(4), rng.randrange(4))
                 for _ in range(n)]
        for lang, (subj, verb, obj) in WORDS.items():
            lines = [f"{subj[a].capitalize()} {verb[b]} {obj[c]}." for a, b, c in picks]
            with gzip.open(folder / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def local_multi30k(multi30k_folder, monkeypatch):
    monkeypatch.setenv("TWOTOWER_MULTI30K_DIR", str(multi30k_folder))
    return multi30k_folder


def test_load_multi30k_reads_aligned_local_files(local_multi30k):
    text = load_multi30k(("en", "de", "fr"), "validation", source="local")
    assert [len(text[lang]) for lang in ("en", "de", "fr")] == [40, 40, 40]
    for en, de in zip(text["en"], text["de"]):
        a = next(i for i, s in enumerate(WORDS["en"][0]) if en.lower().startswith(s))
        assert de.lower().startswith(WORDS["de"][0][a])
    assert len(load_multi30k(("en",), "test", source="auto")["en"]) == 20


def test_load_multi30k_refuses_unknown_names(local_multi30k):
    with pytest.raises(TwotowerError, match="xx"):
        load_multi30k(("xx",))
    with pytest.raises(TwotowerError, match="dev"):
        load_multi30k(("en",), split="dev")


def test_load_multi30k_from_a_named_folder_without_files_says_what_to_do(
        tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TWOTOWER_MULTI30K_DIR", str(tmp_path))
    with pytest.raises(TwotowerError, match="TWOTOWER_MULTI30K_DIR.*source='bundled'"):
        load_multi30k(("en", "de"), source="auto")
    assert len(load_multi30k(("en", "de"), "test", source="bundled")["de"]) == 1000


def test_pack_windows_keeps_sentences_whole_and_counts_characters(special):
    texts = ["ab", "cde", "f", "way too long", "gh"]
    ids = [[10, 11], [12, 13, 14], [15], list(range(20, 30)), [16, 17]]
    packed, dropped = pack_windows(ids, texts, language=1, max_len=8, special=special)
    assert dropped == 1
    rows = packed.windows.tolist()
    sep, cls, pad = special.sep, special.cls, special.pad
    assert rows == [[cls, 10, 11, sep, 12, 13, 14, sep],
                    [cls, 15, sep, 16, 17, sep, pad, pad]]
    assert packed.n_chars.tolist() == [3 + 4, 2 + 3]
    assert packed.language.tolist() == [1, 1]
    lang = token_languages(packed, special)
    assert lang[0].tolist() == [-1, 1, 1, -1, 1, 1, 1, -1]
    assert lang[1, -2:].tolist() == [-1, -1]


def test_type_languages_needs_a_clear_majority():
    lw = LanguageWindows(np.array([[5, 5, 6, 7], [6, 8, 8, 8]]), np.array([0, 1]),
                         np.array([4, 4]))
    types = type_languages(lw, vocab_size=10, n_languages=2, purity=0.9)
    assert types[5] == 0 and types[8] == 1 and types[7] == 0
    assert types[6] == -1 and types[9] == -1  # shared, and never seen


def test_fertility_counts_tokens_per_word_and_unknowns():
    tok = train_wordpiece(["a man rides a bike", "the man"] * 20, vocab_size=120)
    ratio, unknown = fertility(tok, ["a man rides", "the bike"])
    assert ratio == pytest.approx(1.0) and unknown == 0.0
    ratio, unknown = fertility(tok, ["a zzz"])  # z was never seen: one [UNK] word
    assert ratio == pytest.approx(1.0) and unknown == pytest.approx(0.5)
    split_ratio, _ = fertility(tok, ["manike"])  # one word: man ##i ##ke
    assert split_ratio == pytest.approx(3.0)


def test_prepare_bilingual_balances_languages_and_uses_the_tokenizer_languages(
        local_multi30k):
    data = prepare_bilingual(("en", "de"), ("en",), vocab_size=200, max_len=32)
    assert data.languages == ("en", "de") and data.tokenizer_languages == ("en",)
    # the same sentences in both languages: the same characters per language (up to
    # the few letters that differ), but German needs more windows of English pieces
    chars = np.bincount(data.train.language, weights=data.train.n_chars)
    assert chars[1] == pytest.approx(chars[0], rel=0.3)
    counts = np.bincount(data.train.language)
    assert counts[1] > counts[0] > 0
    assert np.all(data.train.windows[:, 0] == data.special.cls)
    # an English-only vocabulary cuts German into more pieces than English
    val = load_multi30k(("en", "de"), "validation")
    assert fertility(data.tokenizer, val["de"])[0] > fertility(data.tokenizer,
                                                                val["en"])[0]
    both = prepare_bilingual(("en", "de"), vocab_size=200, max_len=32)
    assert fertility(both.tokenizer, val["de"])[0] < fertility(data.tokenizer,
                                                                val["de"])[0]
    capped = prepare_bilingual(("en", "de"), vocab_size=200, max_len=32,
                               max_train_tokens=600)
    real = int((capped.train.windows != capped.special.pad).sum())
    assert 400 < real < 1000


def test_loss_per_character_is_summed_loss_over_characters(local_multi30k, tiny_config):
    data = prepare_bilingual(("en", "de"), vocab_size=200, max_len=32)
    model = TwoTowerLM(tiny_config("causal", vocab_size=data.vocab_size, max_len=32))
    objective = objective_for(data)
    lw = data.val.of(1)
    batch = objective.make_batch(lw.windows, torch.Generator())
    with torch.no_grad():
        logits = model(batch.input_ids)
        keep = batch.targets != IGNORE
        total = torch.nn.functional.cross_entropy(logits[keep], batch.targets[keep],
                                                  reduction="sum")
    assert loss_per_character(model, lw, objective, batch_size=3) == pytest.approx(
        float(total) / lw.n_chars.sum(), rel=1e-5)


@pytest.mark.slow
def test_bilingual_run_trains_once_and_reloads(local_multi30k, tmp_path):
    data = prepare_bilingual(("en", "de"), vocab_size=200, max_len=32)
    cfg = bilingual_config("smoke", data, seed=0, device="cpu", step_fraction=0.05)
    small = dataclasses.replace(cfg.model, n_layers=1, d_model=16, d_ff=32)
    cfg = dataclasses.replace(cfg, model=small,
                              train=dataclasses.replace(cfg.train, precision="fp32"),
                              readout=dataclasses.replace(cfg.readout,
                                                          precision="fp32"))
    run = ensure_bilingual_run(tmp_path / "run", cfg, data)
    assert run.scores.ll.shape[1] == run.score_language.size
    assert set(np.unique(run.score_language)) == {0, 1}
    again = ensure_bilingual_run(tmp_path / "run", cfg, data)
    for a, b in zip(run.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    np.testing.assert_allclose(run.scores.ll, again.scores.ll, atol=1e-6)

    result = adaptation_curve(cfg, data, pretrain_steps=3, adapt_steps=4, n_points=2)
    steps = [step for step, _ in result["curve"]["de"]]
    assert steps == [0, 2, 4]
    assert result["final"]["de"] == result["curve"]["de"][-1][1]
