"""The bugs of the authors' code (hezq06/twotower_lm), each shown next to our fix.

Every ``test_authors_*`` test runs a few-line re-implementation of the authors' logic
(tests/authors_logic.py, which cites file, line and commit) and our ``twotower`` code on
the same input, and applies the same check to both: the authors' logic fails it, ours
passes. The bug audit of chapter 11 (``twotower.experiments.authors_bugs.BUG_AUDIT``) names these tests
first for each bug, then the tests of ours in this file and in test_towers.py,
test_readouts.py, test_objectives.py, test_data.py, test_preference.py, test_model.py,
test_training.py and test_distributed.py.
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from types import SimpleNamespace

import authors_logic as authors
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from twotower.config import FAMILIES, PRESETS, get_preset
from twotower.data.windows import TokenStream, make_windows
from twotower.training.distributed import Dist, shard_rows
from twotower.models.tower_lm import IGNORE, TwoTowerLM, count_parameters
from twotower.data.objectives import Objective
from twotower.experiments.pipeline import make_objective
from twotower.analysis.preference import token_preference
from twotower.training.readouts import (TokenScores, TowerReadouts, _true_logprob, freeze,
                               score_readouts)
from twotower.models.towers import BiLSTMTowers, StackedLayerNorm
from twotower.training.optim import make_optimizer, param_groups
from twotower.training.trainer import WindowBatches

# The authors' special ids as an Objective of ours takes them (BERT's 30522 real ids).
THEIR_SPECIALS = dict(special_ids=(authors.PAD, authors.UNK, authors.CLS, authors.SEP,
                                   authors.MASK),
                      pad_id=authors.PAD, cls_id=authors.CLS, mask_id=authors.MASK,
                      n_tokens=30522)
RUN_SEEDS = (38761, 94761)  # phases 2 and 3: workspace/run_2towerlm.sh#L15, #L18


def bert_windows(n: int, T: int, seed: int = 0) -> torch.Tensor:
    """``(n, T)`` windows in the authors' ids: [CLS], ordinary WordPieces (ids 999 and
    up), [SEP]; every other row ends in padding."""
    rng = np.random.default_rng(seed)
    w = rng.integers(999, 30522, size=(n, T))
    w[:, 0] = authors.CLS
    for row in range(0, n, 2):
        end = int(rng.integers(T // 2, T - 1))
        w[row, end], w[row, end + 1:] = authors.SEP, authors.PAD
    return torch.as_tensor(w)


# --- bug 1 ----------------------------------------------------------------------------

def test_authors_flip_zeroes_the_elmo_backward_stream_ours_reads_the_right_context(
        tiny_config):
    """Bug 1: the flipped-identity einsum multiplies by a zero diagonal on an even
    window, so the authors' 'ELMo' towers only read the left context."""
    torch.manual_seed(0)
    assert torch.count_nonzero(authors.flip_seq(torch.randn(3, 8, 5))) == 0
    odd = torch.randn(3, 7, 5)  # an odd window keeps its middle row, unflipped
    kept = authors.flip_seq(odd).abs().sum(dim=(0, 2)).nonzero().flatten().tolist()
    assert kept == [3] and torch.equal(authors.flip_seq(odd)[:, 3], odd[:, 3])

    cfg = tiny_config("bilm")
    half = cfg.d_model // 2
    ours = BiLSTMTowers(1, cfg).eval()  # the same two LSTMs run in both wirings
    heads = [nn.Linear(half, half) for _ in range(2)]  # the authors' h2o_f1 and h2o_b1
    j, x = 6, torch.randn(1, 2, 10, cfg.d_model)  # an even window of 10
    changed = x.clone()
    changed[:, :, j] = torch.randn(2, cfg.d_model)  # only the token at position j

    def theirs(inputs):
        return authors.bilm_features(inputs[0], ours.fwd[0], ours.bwd[0], *heads)

    def reads_right_context(towers) -> bool:
        """Does every position left of j change when token j changes?"""
        delta = (towers(x) - towers(changed)).abs()[..., :j, :].amax(dim=-1)
        return bool((delta > 1e-6).all())

    with torch.no_grad():
        assert torch.count_nonzero(theirs(x)[..., half:]) == 0
        assert (theirs(x) - theirs(changed))[:, j + 1:, :half].abs().max() > 1e-6
        assert not reads_right_context(theirs)
        assert reads_right_context(lambda inputs: ours(inputs)[0])


# --- bug 2 ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_authors_readout_a_input_moves_with_tower_b_ours_does_not(
        family, tiny_config, synthetic_data):
    """Bug 2: the authors normalise both towers together and slice afterwards."""
    torch.manual_seed(0)
    model = TwoTowerLM(tiny_config(family)).eval()
    readouts = TowerReadouts(model.cfg.d_model, model.cfg.vocab_size).eval()
    ids = torch.as_tensor(synthetic_data.val[:4])
    with torch.no_grad():
        before = model.features(ids)
        model.tower_in.weight[1] += 0.5 * torch.randn_like(model.tower_in.weight[1])
        after = model.features(ids)  # only tower B's projection changed
        assert (after[1] - before[1]).abs().max() > 1e-3 and torch.equal(after[0],
                                                                         before[0])

        def ours(features, tower):
            return readouts.readouts[tower].norm_in(features[tower])

        for readout_input, tower_pure in ((authors.readout_input, False), (ours, True)):
            a_before, a_after = readout_input(before, 0), readout_input(after, 0)
            assert torch.equal(a_before, a_after) is tower_pure
        assert (authors.readout_input(after, 0) -
                authors.readout_input(before, 0)).abs().max() > 1e-3


# --- bug 3 ----------------------------------------------------------------------------

def test_authors_frozen_towers_move_under_weight_decay_ours_stay_bit_identical(
        tiny_config, train_config, synthetic_data):
    """Bug 3: towers under no_grad but still in the optimiser decay at every step; the
    same DeepSpeed-style step (zero-filled gradients) leaves ours untouched."""
    torch.manual_seed(0)
    model = TwoTowerLM(tiny_config("mlm"))
    batch = WindowBatches(synthetic_data.train, synthetic_data.objective("mlm"), 4,
                          0).train_batch(0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = train_config(lr=1e-3, weight_decay=0.01)  # the authors' lr and weight decay

    D, V = model.cfg.d_model, model.cfg.vocab_size
    theirs, their_readouts = copy.deepcopy(model).train(), TowerReadouts(D, V)
    named = [*theirs.named_parameters(), *their_readouts.named_parameters()]
    decayed = set(authors.decayed_names([n for n, _ in named], "mlm"))
    opt = torch.optim.AdamW(  # every parameter, grouped by the authors' name patterns
        [{"params": [p for n, p in named if n in decayed]},
         {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0}],
        lr=cfg.lr, weight_decay=cfg.weight_decay)
    ours, our_readouts = freeze(copy.deepcopy(model)), TowerReadouts(D, V)
    our_opt, _ = make_optimizer(our_readouts, cfg, torch.device("cpu"))
    for lm, readouts, optimizer in ((theirs, their_readouts, opt),
                                    (ours, our_readouts, our_opt)):
        readouts.loss(lm, batch).backward()  # the towers run under no_grad
        assert all(p.grad is None for p in lm.parameters())
        authors.deepspeed_step(optimizer)

    def unchanged(lm) -> bool:
        return all(torch.equal(start[k], v) for k, v in lm.state_dict().items())

    moved = [k for k, v in theirs.state_dict().items() if not torch.equal(start[k], v)]
    assert not unchanged(theirs) and "towers.blocks.0.qkv.weight" in moved
    assert unchanged(ours)


# --- bug 4 ----------------------------------------------------------------------------

def test_authors_readouts_are_scored_on_different_blocks_and_masks_ours_on_the_same():
    """Bug 4: phases 2 and 3 are separate runs with their own seeds, so each readout is
    scored on its own random validation blocks and its own masks."""
    n_val, scored = 5000, 500
    blocks = [authors.validation_blocks(s, 20_000, n_val, scored) for s in RUN_SEEDS]
    shared = len(np.intersect1d(*blocks))
    # two independent draws of 500 of 5000 blocks share a hypergeometric number of them
    low, high = stats.hypergeom(n_val, scored, scored).interval(0.999)
    assert low <= shared <= high and shared < scored  # about 10%, not 100%

    windows = bert_windows(64, 32)
    masks = [authors.input_masking(windows, authors.masking_rates({}),
                                   torch.Generator().manual_seed(s))[1]
             for s in RUN_SEEDS]
    assert not torch.equal(*masks)

    objective = Objective(family="mlm", **THEIR_SPECIALS)
    ours = [WindowBatches(windows.numpy(), objective, 8, s).score_batches()
            for s in RUN_SEEDS]
    assert len(ours[0]) == len(ours[1]) > 0
    for a, b in zip(*ours):  # one run scores both readouts on these same batches
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets,
                                                                     b.targets)


# --- bug 5 ----------------------------------------------------------------------------

def test_authors_unseen_tokens_get_log_prob_zero_and_single_ones_a_pref_ours_do_not():
    """Bug 5: the authors' per-token vector is zeros where a token was never seen, and
    has no minimum count."""
    V, seen, once, never = 50, 3, 9, 7
    target = np.array([seen] * 6 + [once])
    ll = np.stack([np.full(7, -2.0), np.full(7, -3.0)])  # pref of `seen` is exactly 1
    theirs = [authors.perpvec(target, ll[k], V) for k in range(2)]
    pref = theirs[0] - theirs[1]
    assert theirs[0][never] == theirs[1][never] == 0.0  # "probability 1"
    assert pref[never] == 0.0 and pref[once] == 1.0 and pref[seen] == 1.0

    scores = TokenScores(target.astype(np.int32), ll.astype(np.float32),
                         np.zeros(7, np.float32))
    ours = token_preference(scores, V, min_count=5)
    assert never not in ours.index and np.isnan(ours.loc[once, "pref"])
    assert ours.loc[seen, "pref"] == 1.0


def test_authors_log_softmax_in_fp16_rounds_log_probs_ours_keeps_fp32():
    """Bug 5: the authors' LogSoftmax runs in fp16. Log-probabilities over their 30528
    ids lie below -8, where fp16's spacing is at least 2^-7: rounding errs by up to half
    of it, and the largest of 64 such errors stays below 2^-9 (a quarter of the
    spacing) only if all 64 fall in the lower half of their range (chance 2^-64)."""
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(64, authors.OUTPUT_SIZE, generator=g)).half()
    labels = torch.randint(authors.OUTPUT_SIZE, (64,), generator=g)
    exact = logits.double().log_softmax(-1).gather(1, labels[:, None])[:, 0]
    assert exact.max() < -8
    their_error = (authors.log_prob_fp16(logits, labels).double() - exact).abs().max()
    our_error = (_true_logprob(logits, labels).double() - exact).abs().max()
    assert their_error > 2**-9
    assert our_error < 1e-5  # fp32: a few units of its 2^-20 spacing at 16


# --- bug 6 ----------------------------------------------------------------------------

def corruption_split(inputs, ids, selected) -> np.ndarray:
    """Shares of the selected positions that became [MASK], another id, or stayed."""
    masked, same = inputs == authors.MASK, inputs == ids
    n = selected.sum()
    shares = [selected & masked, selected & ~masked & ~same, selected & same]
    return np.array([float(share.sum() / n) for share in shares])


def test_authors_misnamed_key_sets_the_random_and_unchanged_split_not_the_mask_rate():
    """Bug 6: the random and the unchanged rate are read under the key
    'replace_by_mask_rate'. The run config (workspace/TwoTowerLM.py#L47-L69) sets no
    masking key, so the defaults give 80/10/10 and the bug is latent; setting the key
    to 0.6 gives 60/40/0 instead of 60/10/30, and the mask rate stays 15%."""
    windows = bert_windows(1000, 64)
    n_selected = 0.15 * int((windows != authors.PAD).sum())
    tolerance = 4 * np.sqrt(0.25 / n_selected)  # 4 sd of a share, at most
    expected = {(): ([0.8, 0.1, 0.1], [0.8, 0.1, 0.1]),
                (("replace_by_mask_rate", 0.6),): ([0.6, 0.4, 0.0], [0.6, 0.1, 0.3])}
    for config, (theirs, intended) in expected.items():
        rates = authors.masking_rates(dict(config))
        inputs, selected = authors.input_masking(windows, rates,
                                                 torch.Generator().manual_seed(0))
        split = corruption_split(inputs, windows, selected)
        np.testing.assert_allclose(split, theirs, atol=tolerance)
        assert np.allclose(split, intended, atol=tolerance) is (not config)
        eligible = ~torch.isin(windows, torch.tensor([authors.PAD, authors.CLS,
                                                      authors.SEP]))
        assert abs(float(selected.sum() / eligible.sum()) - 0.15) < tolerance
    assert authors.masking_rates({"replace_by_rand_rate": 0.2})[
        "replace_by_rand_rate"] == 0.1  # the key that names it is never read

    ours = Objective(family="mlm", **THEIR_SPECIALS).make_batch(
        windows.numpy(), torch.Generator().manual_seed(0))
    selected = ours.targets != IGNORE
    np.testing.assert_allclose(corruption_split(ours.input_ids, windows, selected),
                               [0.8, 0.1, 0.1], atol=tolerance)


def test_authors_random_replacements_include_special_and_unused_ids_ours_never():
    """Bug 6: a random replacement is any id below the padded vocabulary size: the five
    special ids (5 in 30528) and the six ids above the tokenizer (6 in 30528) too."""
    g = torch.Generator().manual_seed(0)
    theirs = authors.random_replacements((2_000_000,), g)  # ~330 special, ~390 unused
    specials = torch.tensor(THEIR_SPECIALS["special_ids"])
    assert torch.isin(theirs, specials).sum() > 0 and (theirs >= 30522).sum() > 0

    objective = Objective(family="mlm", **THEIR_SPECIALS)
    allowed = objective.allowed_replacements()
    assert not torch.isin(allowed, specials).any() and allowed.max() < 30522
    windows = bert_windows(400, 64)
    batch = objective.make_batch(windows.numpy(), g)
    replaced = (batch.input_ids != windows) & (batch.input_ids != authors.MASK)
    assert replaced.sum() > 0
    assert not torch.isin(batch.input_ids[replaced], specials).any()


@pytest.mark.parametrize("family", ["causal", "bilm"])
def test_authors_gpt_and_elmo_losses_average_over_pad_targets_ours_never(family):
    """Bug 6: the authors' GPT and ELMo losses have a PAD target wherever the window
    has padding."""
    windows = bert_windows(16, 32)
    theirs = authors.lm_targets(windows, family)
    inputs_with_targets = windows if family == "bilm" else windows[:, 1:]
    n_pad = int((inputs_with_targets == authors.PAD).sum())
    assert n_pad > 0 and int((theirs == authors.PAD).sum()) == n_pad

    ours = Objective(family=family, **THEIR_SPECIALS).make_batch(
        windows.numpy(), torch.Generator().manual_seed(0)).targets
    assert not (ours == authors.PAD).any() and (ours != IGNORE).sum() > 0


def test_authors_windows_cross_document_boundaries_ours_never(special):
    """Bug 6: the authors cut windows from all token files concatenated, so a window
    can hold the end of one article and the start of the next."""
    end = 7  # a sentence-final id; article i holds ids 1000 * (i + 1) + k
    articles = [1000 * (i + 1) + np.arange(100) for i in range(4)]
    for article in articles:
        article[4::5] = end  # sentences of five tokens
    stream = np.concatenate(articles)
    T = 16  # block 12 starts at token 192, its first full sentence at 195

    def n_articles(window) -> int:
        ids = np.asarray(window)
        return len(np.unique(ids[ids >= 1000] // 1000))

    blocks = range(len(stream) // T - 10)  # ttlm/datautil.py#L275 keeps 10 spare
    theirs = [authors.dataset_window(stream, b, T, {end}) for b in blocks]
    assert all(len(w) == T for w in theirs)
    assert max(n_articles(w) for w in theirs) == 2

    offsets = np.array([0, 100, 200, 300, 400])
    ours = make_windows(TokenStream(stream.astype(np.uint32), offsets), T, special)
    assert len(ours) > 0 and max(n_articles(w) for w in ours) == 1


def test_the_mask_rate_of_the_run_config_reaches_the_objective(special,
                                                                synthetic_windows):
    """Bug 6 (ours): the objective takes its mask rate from the run config's field."""
    cfg = get_preset("smoke", "mlm")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                             mlm_probability=0.4))
    data = SimpleNamespace(special=special,
                           tokenizer=SimpleNamespace(get_vocab_size=lambda: 60))
    objective = make_objective(cfg, data)
    assert objective.mlm_probability == 0.4
    windows = synthetic_windows(400, 32, 60, pad=False)
    batch = WindowBatches(windows, objective, 400, 0).train_batch(0)
    eligible = ~torch.isin(torch.as_tensor(windows), torch.tensor(special.all))
    share = (batch.targets != IGNORE).sum() / eligible.sum()
    assert abs(float(share) - 0.4) < 0.02


# --- bug 7 ----------------------------------------------------------------------------

def test_authors_gpt_needs_the_patched_library_and_discards_two_vocabulary_heads(
        tiny_config, synthetic_data):
    """Bug 7: the authors' GPT variant reads an attribute only a hand-patched
    transformers sets, and runs each tower's full-vocabulary head for nothing."""
    torch.manual_seed(0)
    V, D, B, T = 50, 8, 4, 12
    wte, dense = nn.Embedding(V, D), nn.Linear(2 * D, D)
    ids = torch.randint(1, V, (B, T))
    with pytest.raises(AttributeError, match="hidden_states"):
        authors.gpt_phase1_logits([authors.LibraryLMHead(wte, False) for _ in range(2)],
                                  wte, dense, ids)
    towers = [authors.LibraryLMHead(wte, True) for _ in range(2)]
    rows = []
    for tower in towers:
        tower.lm_head.register_forward_hook(lambda m, a, out: rows.append(a[0].shape))
    with torch.no_grad():
        logits = authors.gpt_phase1_logits(towers, wte, dense, ids)
        for tower in towers:
            tower.lm_head.weight.zero_()
        assert torch.equal(authors.gpt_phase1_logits(towers, wte, dense, ids), logits)
    assert len(rows) == 4 and all(r[:2] == (B, T) for r in rows)  # 2 calls x 2 heads

    model = TwoTowerLM(tiny_config("causal"))
    batch = WindowBatches(synthetic_data.train, synthetic_data.objective("causal"), B,
                          0).train_batch(0)
    ours = []
    handle = model.head.register_forward_hook(lambda m, a, out: ours.append(a[0].shape))
    try:
        model.loss(batch)
    finally:
        handle.remove()
    assert [r[0] for r in ours] == [batch.n_targets]  # one head, on the targets only


def test_the_joint_loss_runs_the_head_once_and_only_where_there_is_a_target(
        tiny_config, synthetic_data):
    """Bug 7: the authors' GPT variant also computed (and discarded) full-vocabulary
    losses of each tower in phase 1."""
    model = TwoTowerLM(tiny_config("mlm"))
    batch = WindowBatches(synthetic_data.train, synthetic_data.objective("mlm"), 8,
                          0).train_batch(0)
    rows = []
    handle = model.head.register_forward_hook(
        lambda module, args, output: rows.append(args[0].shape[0]))
    try:
        model.loss(batch)
    finally:
        handle.remove()
    assert rows == [int((batch.targets != IGNORE).sum())]
    assert rows[0] < batch.input_ids.numel() / 3  # 15% of the positions


def test_every_preset_is_built_offline_without_huggingface_transformers(no_network):
    """Bug 7: the authors' GPT variant downloaded GPT-2 only to read its config and
    needed a hand patch of the transformers source; nothing here imports it."""
    for by_family in PRESETS.values():
        for cfg in by_family.values():
            assert count_parameters(cfg.model, 2) > 0  # built on the meta device
    model = TwoTowerLM(get_preset("smoke", "causal").model)
    assert model(torch.zeros(1, 8, dtype=torch.long)).shape[-1] == model.cfg.vocab_size
    code = ("import sys, twotower.experiments.pipeline, twotower.experiments.controls, twotower.models.hooks; "
            "sys.exit('transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- bug 8 ----------------------------------------------------------------------------

def norms_and_biases(model: nn.Module) -> set[str]:
    """Names of every LayerNorm parameter and every bias, found by module type."""
    out = set()
    for prefix, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(module, (nn.LayerNorm, StackedLayerNorm)) or \
                    name.startswith("bias"):
                out.add(full)
    return out


def test_authors_no_decay_patterns_leave_norm_weights_decayed_ours_never(tiny_config):
    """Bug 8: in BERT the BertLayerNorm weights escape the no-decay patterns; ELMo and
    GPT decay every parameter, biases and norms included."""
    # TwoTowerDsBert's own norms (ttlm/model.py#L71-L77) and one DeepSpeed kernel layer
    bert = [f"layer_norm_{n}.{p}" for n in ("emb", "final", "trans")
            for p in ("weight", "bias")]
    bert += [f"trf_layers1.0.{p}" for p in ("attn_nw", "attn_nb", "norm_w", "norm_b")]
    assert authors.decayed_names(bert, "mlm") == [
        "layer_norm_emb.weight", "layer_norm_final.weight", "layer_norm_trans.weight"]

    for family in FAMILIES:
        model = TwoTowerLM(tiny_config(family))
        names = dict(model.named_parameters())
        protected = norms_and_biases(model)
        theirs = set(authors.decayed_names(names, family)) & protected
        assert any("norm" in n and n.endswith("weight") for n in theirs)
        assert any(n.split(".")[-1].startswith("bias") for n in theirs) is (
            family != "mlm")
        decay, no_decay = param_groups(model, 0.01)
        ours = {n for n, p in names.items() if any(p is q for q in decay["params"])}
        assert ours and not ours & protected
        assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0


# --- bug 9 ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_authors_evaluation_keeps_log_probabilities_for_bert_only_ours_for_every_family(
        family, tiny_config, synthetic_data):
    """Bug 9: only the authors' BERT class records per-token log-probabilities when it
    evaluates; their ELMo and GPT classes keep embeddings and labels only."""
    torch.manual_seed(0)
    model = TwoTowerLM(tiny_config(family)).eval()
    readouts = TowerReadouts(model.cfg.d_model, model.cfg.vocab_size)
    batches = WindowBatches(synthetic_data.val, synthetic_data.objective(family), 4,
                            0).score_batches()
    batch = batches[0]
    labels = torch.where(batch.targets != IGNORE, batch.targets, batch.input_ids)
    with torch.no_grad():
        theirs = authors.eval_mem(family, model(batch.input_ids), labels,
                                  (batch.targets == IGNORE).long(),
                                  model.tok_emb(batch.input_ids))
    assert (len(theirs["log_probs"]) > 0) is (family == "mlm")

    scores = score_readouts(model, readouts, batches, device="cpu", precision="fp32")
    assert scores.ll.shape == (2, sum(b.n_targets for b in batches))
    assert scores.target.size > 0 and np.isfinite(scores.ll).all()
    V = model.cfg.vocab_size
    assert token_preference(scores, V, min_count=1)["pref"].notna().sum() > 0


# --- bug 10 ---------------------------------------------------------------------------

def test_authors_batch_size_fails_deepspeeds_rule_on_three_gpus_ours_splits_any_batch():
    """Bug 10: 5120 is not 128 x 10 x 3. DeepSpeed reads no accumulation key from the
    config (it is misspelt), derives 5120 // 128 // 3 = 13 and then finds 128 x 13 x 3
    = 4992; the intended 10 gives 3840. The numbers fit 4 GPUs, not the 3 assumed."""
    config = authors.DS_CONFIG
    spelled = {**config, "gradient_accumulation_steps": config["gradient_acc_step"]}
    assert not authors.deepspeed_batch_check(config, authors.N_GPUS)
    assert not authors.deepspeed_batch_check(spelled, authors.N_GPUS)
    assert not authors.deepspeed_batch_check(config, 6)  # the hostfile's 2 x 3 slots
    assert authors.deepspeed_batch_check(spelled, 4)  # the rule can pass

    rows = np.arange(config["train_batch_size"])
    for world in (1, authors.N_GPUS, 4, 6):
        parts = [shard_rows(rows, Dist(rank, world, rank)) for rank in range(world)]
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), rows)
