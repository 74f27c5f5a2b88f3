"""Stacked towers against readable references; what the biLM streams may see."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from twotower.config import FAMILIES
from twotower.models.layers import SelfAttention, attention_by_hand
from twotower.models.tower_lm import TwoTowerLM
from twotower.models.towers import (BiLSTMTowers, StackedLayerNorm, StackedLinear,
                             StackedTransformer)

TIGHT = dict(rtol=1e-5, atol=1e-5)


def assert_close_fp32(actual, expected):
    """Tight fp32 agreement, the absolute part scaled to the tensor's magnitude
    (gradients summed over many positions reach ~10, where 1e-5 is one ulp's noise)."""
    scale = max(1.0, float(expected.detach().abs().max()))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


def padding_mask(B: int, T: int, lengths: list[int]) -> torch.Tensor:
    """``(B, T)`` True at the positions past each row's length."""
    return torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]


# --- stacked transformer == two reference blocks --------------------------------------

@pytest.mark.parametrize("family, padded", [("causal", False), ("mlm", False),
                                            ("mlm", True)])
def test_stacked_towers_equal_separate_reference_blocks_forward_and_backward(
        family, padded, tiny_config, randomise):
    cfg = tiny_config(family, n_layers=2, dropout=0.1)
    stacked = StackedTransformer(2, cfg)
    randomise(stacked, seed=1)
    stacked.eval()  # dropout off: both sides must compute the same function
    refs = [[stacked.reference_block(k, layer).eval() for layer in range(2)]
            for k in range(2)]
    K, B, T, D = 2, 3, 7, cfg.d_model
    key_padding = padding_mask(B, T, [7, 4, 5]) if padded else None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(K, B, T, D, generator=g, requires_grad=True)
    weight = torch.randn(K, B, T, D, generator=g)  # random linear loss: all gradients

    y = stacked(x, key_padding)
    (y * weight).sum().backward()
    for k in range(K):
        xk = x.detach()[k].clone().requires_grad_(True)
        h = xk
        for block in refs[k]:
            h = block(h, key_padding)
        assert_close_fp32(y[k], h)
        (h * weight[k]).sum().backward()
        assert_close_fp32(x.grad[k], xk.grad)
        for layer, (ref, s) in enumerate(zip(refs[k], stacked.blocks)):
            for lin, st in ((ref.attn.qkv, s.qkv), (ref.attn.out, s.attn_proj),
                            (ref.mlp.up, s.mlp_in), (ref.mlp.down, s.mlp_out)):
                assert_close_fp32(st.weight.grad[k], lin.weight.grad.T)
                assert_close_fp32(st.bias.grad[k, 0], lin.bias.grad)
            for ln, st in ((ref.ln1, s.norm1), (ref.ln2, s.norm2)):
                assert_close_fp32(st.weight.grad[k, 0], ln.weight.grad)
                assert_close_fp32(st.bias.grad[k, 0], ln.bias.grad)


def test_reference_block_is_a_copy_not_a_view(tiny_config):
    stacked = StackedTransformer(2, tiny_config("mlm"))
    before = stacked.blocks[0].qkv.weight.detach().clone()
    ref = stacked.reference_block(1, 0)
    with torch.no_grad():
        ref.attn.qkv.weight.add_(1.0)
    assert torch.equal(stacked.blocks[0].qkv.weight, before)


@pytest.mark.parametrize("causal", [True, False])
def test_self_attention_equals_attention_written_out_by_hand(causal, randomise):
    B, T, D, H = 2, 6, 16, 4
    attn = SelfAttention(D, H, causal, dropout=0.1)
    randomise(attn)
    attn.eval()
    x = torch.randn(B, T, D)
    q, k, v = attn.qkv(x).view(B, T, 3, H, D // H).unbind(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D/H)
    heads, weights = attention_by_hand(q, k, v, causal)
    expected = attn.out(heads.transpose(1, 2).reshape(B, T, D))
    torch.testing.assert_close(attn(x), expected, **TIGHT)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_by_hand_is_softmax_of_scaled_scores(causal):
    q, k, v = torch.randn(3, 2, 5, 4).unbind(0)
    out, weights = attention_by_hand(q, k, v, causal)
    scores = torch.einsum("htd,hsd->hts", q, k) / 2.0  # sqrt(4)
    if causal:
        scores = scores + torch.full((5, 5), float("-inf")).triu(1)
    expected = torch.softmax(scores, -1)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(out, expected @ v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v,
                                                                  is_causal=causal))


@pytest.mark.parametrize("family", ["causal", "mlm"])
def test_attention_pattern_rows_sum_to_one_and_are_causal_only_for_causal(
        family, tiny_config, synthetic_windows):
    model = TwoTowerLM(tiny_config(family)).eval()
    ids = torch.as_tensor(synthetic_windows(2, 9, 60, pad=False))
    _, cache = model.run_with_cache(ids, names=lambda n: n.endswith("attn_pattern"))
    assert len(cache) == model.cfg.n_layers
    for pattern in cache.values():
        torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))
        assert (pattern >= 0).all()
        above = pattern.triu(1)
        if family == "causal":
            assert above.abs().max() == 0
        else:
            assert above.abs().max() > 1e-3


def test_attention_pattern_is_what_the_block_computes(tiny_config, randomise):
    """Pattern @ V through the output projection gives the block's attention output."""
    cfg = tiny_config("mlm", n_layers=1)
    stacked = StackedTransformer(2, cfg)
    randomise(stacked)
    stacked.eval()
    block = stacked.blocks[0]
    x = torch.randn(2, 2, 6, cfg.d_model)
    cache = {}
    with torch.no_grad():
        hooks = [block.attn_pattern.register_forward_hook(
                     lambda m, a, o: cache.__setitem__("pattern", o)),
                 block.attn_out.register_forward_hook(
                     lambda m, a, o: cache.__setitem__("out", o))]
        stacked(x)
        for h in hooks:
            h.remove()
        K, B, T, D = x.shape
        H = cfg.n_heads
        qkv = block.qkv(block.norm1(x.reshape(K, B * T, D)))
        v = qkv.view(K, B, T, 3, H, D // H)[..., 2, :, :].transpose(2, 3)  # K B H T d
        heads = (cache["pattern"] @ v).transpose(2, 3).reshape(K, B * T, D)
        expected = block.attn_proj(heads).view(K, B, T, D)
    torch.testing.assert_close(cache["out"], expected, **TIGHT)


def test_attention_pattern_puts_no_weight_on_padding_keys(tiny_config,
                                                         synthetic_windows, special):
    model = TwoTowerLM(tiny_config("mlm")).eval()
    ids = torch.as_tensor(synthetic_windows(2, 9, 60, pad=False))
    ids[0, 5:] = special.pad
    _, cache = model.run_with_cache(ids, names=lambda n: n.endswith("attn_pattern"))
    for pattern in cache.values():  # (K, B, H, T, T)
        assert pattern[:, 0, :, :, 5:].abs().max() == 0


def test_causal_stacked_transformer_stays_causal_when_given_key_padding(
        tiny_config, randomise):
    cfg = tiny_config("causal", n_layers=1)
    stacked = StackedTransformer(2, cfg)
    randomise(stacked)
    stacked.eval()
    x = torch.randn(2, 1, 6, cfg.d_model)
    later = x.clone()
    later[:, :, 3] = torch.randn(2, 1, cfg.d_model)
    key_padding = padding_mask(1, 6, [5])
    change = (stacked(x, key_padding) - stacked(later, key_padding))[:, :, :3]
    assert change.abs().max() < 1e-6


# --- stacked building blocks ----------------------------------------------------------

def test_stacked_linear_applies_one_independent_map_per_tower():
    lin = StackedLinear(3, 5, 4)
    nn.init.normal_(lin.weight)
    nn.init.normal_(lin.bias)
    x = torch.randn(3, 7, 5)
    y = lin(x)
    for k in range(3):
        torch.testing.assert_close(y[k], x[k] @ lin.weight[k] + lin.bias[k, 0])
    shared = torch.randn(7, 5)
    torch.testing.assert_close(lin.forward_shared(shared), lin(shared.expand(3, 7, 5)))


def test_stacked_layer_norm_equals_one_layer_norm_per_tower():
    norm = StackedLayerNorm(2, 6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 4, 6)
    y = norm(x)
    for k in range(2):
        ref = nn.LayerNorm(6)
        with torch.no_grad():
            ref.weight.copy_(norm.weight[k, 0])
            ref.bias.copy_(norm.bias[k, 0])
        torch.testing.assert_close(y[k], ref(x[k]))


# --- biLM streams ---------------------------------------------------------------------

def bilm_streams(model, ids):
    names = ["towers.fwd_out", "towers.bwd_out"]
    logits, cache = model.run_with_cache(ids, names=names)
    return logits, cache["towers.fwd_out"], cache["towers.bwd_out"]


def change_by_position(a, b):  # (K, B, T, d) -> (T,)
    return (a - b).abs().amax(dim=(0, 1, 3))


@pytest.mark.parametrize("j", [1, 2, 5, 8, 9])
def test_bilm_forward_stream_sees_only_the_left_and_backward_only_the_right(
        j, tiny_config, synthetic_windows):
    model = TwoTowerLM(tiny_config("bilm")).eval()
    T = 10
    ids = torch.as_tensor(synthetic_windows(2, T, 60, pad=False))
    other = ids.clone()
    other[:, j] = 5 + (ids[:, j] - 5 + 11) % 55
    logits, fwd, bwd = bilm_streams(model, ids)
    logits2, fwd2, bwd2 = bilm_streams(model, other)
    f, b = change_by_position(fwd, fwd2), change_by_position(bwd, bwd2)
    assert f[:j + 1].max() < 1e-6  # forward at t <= j has not read token j
    assert f[j + 1:].numel() == 0 or f[j + 1:].min() > 1e-5
    assert b[j:].max() < 1e-6  # backward at t >= j has not read token j
    assert b[:j].min() > 1e-5
    # so the prediction of token j never sees token j itself
    torch.testing.assert_close(logits[:, j], logits2[:, j], rtol=0, atol=1e-6)
    assert (logits[:, j - 1] - logits2[:, j - 1]).abs().max() > 1e-5


def test_bilm_streams_equal_nn_lstm_run_forward_and_on_the_reversed_sequence(
        tiny_config):
    """Forward at t = LSTM(x)[t-1]; backward at t = LSTM(flip(x)) read back at t+1,
    each row within its own length (zero where there is no context)."""
    cfg = tiny_config("bilm", n_layers=2)
    towers = BiLSTMTowers(2, cfg).eval()
    K, B, T, D = 2, 3, 8, cfg.d_model
    lengths = [8, 5, 2]
    x = torch.randn(K, B, T, D)
    cache = {}
    hooks = [towers.fwd_out.register_forward_hook(lambda m, a, o: cache.update(f=o)),
             towers.bwd_out.register_forward_hook(lambda m, a, o: cache.update(b=o))]
    with torch.no_grad():
        out = towers(x, padding_mask(B, T, lengths))
    for h in hooks:
        h.remove()
    torch.testing.assert_close(out, torch.cat([cache["f"], cache["b"]], -1))
    for k in range(K):
        for row, L in enumerate(lengths):
            seq = x[k, row:row + 1, :L]
            with torch.no_grad():
                f_ref, _ = towers.fwd[k](seq)
                b_ref, _ = towers.bwd[k](seq.flip(1))
            b_ref = b_ref.flip(1)  # b_ref[t] has read x[>= t]
            f, b = cache["f"][k, row], cache["b"][k, row]
            assert f[0].abs().max() == 0
            torch.testing.assert_close(f[1:L], f_ref[0, :L - 1], **TIGHT)
            torch.testing.assert_close(b[:L - 1], b_ref[0, 1:], **TIGHT)
            assert b[L - 1:].abs().max() == 0  # no right context, or padding


def test_bilm_right_padding_never_reaches_real_positions(tiny_config, synthetic_windows,
                                                        special):
    model = TwoTowerLM(tiny_config("bilm")).eval()
    T, L = 12, 7
    full = torch.as_tensor(synthetic_windows(2, T, 60, pad=False, seed=5))
    padded = full.clone()
    padded[0, L:] = special.pad
    logits_p, fwd_p, bwd_p = bilm_streams(model, padded)
    logits_t, fwd_t, bwd_t = bilm_streams(model, full[:1, :L])
    torch.testing.assert_close(bwd_p[:, :1, :L], bwd_t, **TIGHT)
    torch.testing.assert_close(fwd_p[:, :1, :L], fwd_t, **TIGHT)
    torch.testing.assert_close(logits_p[:1, :L], logits_t, **TIGHT)
    # the unpadded neighbour in the batch is computed as if alone
    logits_full, _, bwd_full = bilm_streams(model, full[1:])
    torch.testing.assert_close(bwd_p[:, 1:], bwd_full, **TIGHT)


# --- swapping the towers --------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_swapping_the_towers_weights_swaps_their_features(family, tiny_config,
                                                         synthetic_windows,
                                                         swapped_tower_state):
    cfg = tiny_config(family)
    model = TwoTowerLM(cfg).eval()
    swapped = TwoTowerLM(cfg).eval()
    swapped.load_state_dict(swapped_tower_state(model))
    ids = torch.as_tensor(synthetic_windows(3, 10, 60))
    features, features_swapped = model.features(ids), swapped.features(ids)
    assert not torch.allclose(features[0], features[1])
    torch.testing.assert_close(features_swapped[0], features[1], **TIGHT)
    torch.testing.assert_close(features_swapped[1], features[0], **TIGHT)
