"""The token in context (claim 4 without dominant tags): scoring gold sentences, the
within-type regression calibrated where the answer is known, agreement over seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from twotower.experiments.in_context import (GROUPS, agreement_table, context_agreement,
                                 context_regression, context_table, score_sentences)
from twotower.models.tower_lm import TwoTowerLM
from twotower.data.objectives import Objective
from twotower.data.ud import Sentence
from twotower.training.readouts import TowerReadouts
from twotower.training.runtime import seed_everything
from twotower.data.tokenizer import SpecialIds, padded_vocab_size, train_wordpiece

TAGS = ["DET", "NOUN", "VERB", "ADP", "ADJ", "PRON"]
RELS = ["det", "nsubj", "root", "case", "amod", "obj"]


def synthetic_frame(n_sentences: int, effect: float, seed: int,
                    n_types: int = 60, collinear: bool = False) -> pd.DataFrame:
    """Positions whose type has its own mean preference, plus ``effect`` where the
    word is a determiner, plus noise: the context effect is known. ``collinear``: the
    relation is a function of the tag (else drawn on its own)."""
    rng = np.random.default_rng(seed)
    rows = []
    type_mean = rng.normal(0, 1, n_types)
    for s in range(n_sentences):
        n = int(rng.integers(5, 15))
        heads = rng.integers(0, n + 1, n)
        for w in range(n):
            t = int(rng.integers(0, n_types))
            tag = int(rng.integers(0, len(TAGS)))
            diff = type_mean[t] + effect * (TAGS[tag] == "DET") + rng.normal(0, 1)
            rel = RELS[tag] if collinear else RELS[int(rng.integers(0, len(RELS)))]
            rows.append((s, w, t, diff, TAGS[tag], rel, abs(int(heads[w]) - w - 1),
                         int(rng.integers(0, 6))))
    return pd.DataFrame(rows, columns=["sentence", "word", "target", "diff", "upos",
                                       "deprel", "arc", "depth"])


def test_a_planted_context_effect_is_found_in_its_group():
    fit = context_regression(synthetic_frame(300, 1.0, 0))
    assert fit.p_value < 0.01
    assert fit.r2 > 0.1
    assert max(fit.partial, key=fit.partial.get) == "upos"
    assert fit.partial["upos"] > 0.8 * fit.r2
    assert max(fit.partial["deprel"], fit.partial["arc"], fit.partial["depth"]) < 0.01


def test_groups_that_say_the_same_share_the_effect_and_own_none_of_it():
    """When the relation follows from the tag, R² is found but neither group owns it:
    a group's share is what it explains beyond the others."""
    fit = context_regression(synthetic_frame(300, 1.0, 0, collinear=True))
    assert fit.r2 > 0.1 and fit.p_value < 0.01
    assert fit.partial["upos"] < 1e-6 and fit.partial["deprel"] < 1e-6


def test_the_type_alone_explains_nothing_in_context():
    """A preference set by the type alone (however strong) leaves no within-type
    variance to the context: R² near 0 and a null p."""
    frame = synthetic_frame(300, 0.0, 1)
    frame["diff"] = frame["target"] * 3.0  # the type only, no noise at all... plus noise
    frame["diff"] += np.random.default_rng(2).normal(0, 1, len(frame))
    fit = context_regression(frame)
    assert fit.r2 < 0.02 and fit.p_value > 0.01


def test_under_the_null_the_permutation_p_is_calibrated():
    """40 null data sets: the share of p < 0.1 stays near 0.1 (binomial bound)."""
    ps = [context_regression(synthetic_frame(60, 0.0, seed), n_perm=99, seed=seed).p_value
          for seed in range(40)]
    assert np.mean(np.array(ps) < 0.1) <= 0.25
    assert np.mean(ps) == pytest.approx(0.5, abs=0.15)


def test_agreement_is_high_for_a_common_effect_whatever_the_tower_labels():
    frames = [synthetic_frame(200, 1.0, 7) for _ in range(4)]
    rng = np.random.default_rng(3)
    fits = []
    for k, frame in enumerate(frames):
        frame = frame.copy()
        frame["diff"] += rng.normal(0, 0.5, len(frame))  # each seed its own noise
        if k % 2:
            frame["diff"] *= -1  # towers labelled the other way round
        fits.append(context_regression(frame, n_perm=20))
    agreement = context_agreement(fits, "common")
    assert agreement.mean > 0.7 and agreement.low > 0.5
    unrelated = []
    for k in range(4):  # the same positions, differences of noise only
        frame = frames[0].copy()
        frame["diff"] = np.random.default_rng(20 + k).normal(0, 1, len(frame))
        unrelated.append(context_regression(frame, n_perm=20))
    assert context_agreement(unrelated).mean < agreement.mean
    by_seed = agreement_table({("common", k): fit for k, fit in enumerate(fits)}
                              | {("alone", 0): unrelated[0]})
    assert list(by_seed["condition"]) == ["common"]  # one seed: no agreement
    assert by_seed["agreement"].iloc[0] == pytest.approx(agreement.mean)
    table = context_table({"a": fits[0], "b": fits[1]})
    assert list(table.columns) == ["positions", "types", "R²",
                                   *[f"ΔR² {g}" for g in GROUPS], "p"]


@pytest.mark.parametrize("family", ["causal", "mlm", "bilm"])
def test_every_subword_of_a_gold_sentence_is_scored_with_its_word(family, tiny_config):
    text = ["the dog runs to the old house", "a cat sat on the warm mat"] * 20
    tokenizer = train_wordpiece(text, 120)
    sentences = [Sentence(["The", "dog", "runs"], ["DET", "NOUN", "VERB"],
                          np.array([2, 3, 0]), ["det", "nsubj", "root"]),
                 Sentence(["A", "cat", "sat", "on", "the", "mat"],
                          ["DET", "NOUN", "VERB", "ADP", "DET", "NOUN"],
                          np.array([2, 3, 0, 6, 6, 3]),
                          ["det", "nsubj", "root", "case", "det", "obl:npmod"])]
    seed_everything(0)
    cfg = tiny_config(family, vocab_size=padded_vocab_size(tokenizer), max_len=16)
    model, readouts = TwoTowerLM(cfg).eval(), TowerReadouts(cfg.d_model, cfg.vocab_size)
    s = SpecialIds.from_tokenizer(tokenizer)
    objective = Objective(family, s.all, s.pad, s.cls, s.mask,
                          tokenizer.get_vocab_size())
    frame = score_sentences(model, readouts, tokenizer, objective, sentences,
                            device="cpu")
    # every word of both sentences once (each is one subword here; causal cannot
    # predict the first word, which no token precedes but [CLS])
    assert len(frame) == 9
    assert np.allclose(frame["diff"], frame["ll_a"] - frame["ll_b"])
    row = frame[(frame["sentence"] == 1) & (frame["word"] == 5)].iloc[0]
    assert (row["upos"], row["deprel"], row["arc"], row["depth"]) == \
        ("NOUN", "obl", 3, 1)
    assert row["target"] == tokenizer.token_to_id("mat")
    with torch.no_grad():  # the readout's score of "mat" given its context, by hand
        ids = torch.tensor([tokenizer.encode(sentences[1].words,
                                             is_pretokenized=True).ids])
        if family == "causal":
            h = model.features(ids)[:, 0, 5]  # "mat" is token 6, predicted at 5
            want = readouts.readouts[0](h[0:1]).log_softmax(-1)[0, row["target"]]
            assert float(want) == pytest.approx(row["ll_a"], abs=1e-5)


def test_a_tower_better_on_whole_sentences_is_not_read_as_syntax():
    """Sentences with more depth get a sentence-wide offset: with type effects alone
    depth would look like context; with sentence effects too it explains nothing."""
    frame = synthetic_frame(300, 0.0, 4)
    rng = np.random.default_rng(5)
    deep = rng.random(frame["sentence"].max() + 1) < 0.5
    frame["depth"] = frame["depth"] + 4 * deep[frame["sentence"]]
    frame["diff"] += 2.0 * deep[frame["sentence"]]
    fit = context_regression(frame)
    assert fit.r2 < 0.02 and fit.p_value > 0.01
