"""TwoTowerLM and SingleTowerLM: shapes, who sees what, hooks, sizes, configuration."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from twotower.config import (FAMILIES, PRESETS, ModelConfig, config_to_dict,
                              get_preset, run_config_from_dict)
from twotower.errors import TwotowerError
from twotower.models.tower_lm import (IGNORE, SingleTowerLM, TwoTowerLM, count_parameters,
                            matched_single_tower_config)

MODELS = [TwoTowerLM, SingleTowerLM]


def ids_of(windows) -> torch.Tensor:
    return torch.as_tensor(windows)


def changed_at(ids: torch.Tensor, j: int, n_tokens: int = 60) -> torch.Tensor:
    """A copy of ``ids`` with the ordinary token at position ``j`` replaced."""
    out = ids.clone()
    out[:, j] = 5 + (out[:, j] - 5 + 17) % (n_tokens - 5)
    assert (out[:, j] != ids[:, j]).all()
    return out


def per_position_change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Largest absolute difference at each position: ``(B, T, ...) -> (T,)``."""
    return (a - b).abs().flatten(2).amax(-1).amax(0)


# --- shapes ---------------------------------------------------------------------------

@pytest.mark.parametrize("model_class", MODELS)
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_maps_token_ids_to_logits_over_the_vocabulary(
        family, model_class, tiny_config, synthetic_windows):
    cfg = tiny_config(family)
    model = model_class(cfg).eval()
    ids = ids_of(synthetic_windows(3, 10, 60))
    logits = model(ids)
    assert logits.shape == (3, 10, cfg.vocab_size)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("model_class", MODELS)
@pytest.mark.parametrize("family", FAMILIES)
def test_run_with_cache_puts_the_tower_axis_first(family, model_class, tiny_config,
                                                   synthetic_windows):
    cfg = tiny_config(family)
    model = model_class(cfg).eval()
    K, B, T, D = model.n_towers, 3, 10, cfg.d_model
    ids = ids_of(synthetic_windows(B, T, 60))
    logits, cache = model.run_with_cache(ids)
    torch.testing.assert_close(logits, model(ids), rtol=0, atol=0)
    assert cache["tower_out"].shape == (K, B, T, D)
    if family == "bilm":
        assert cache["towers.fwd_out"].shape == (K, B, T, D // 2)
        assert cache["towers.bwd_out"].shape == (K, B, T, D // 2)
    else:
        for layer in range(cfg.n_layers):
            p = f"towers.blocks.{layer}."
            for name in ("attn_out", "resid_mid", "resid_post"):
                assert cache[p + name].shape == (K, B, T, D), name
            assert cache[p + "mlp_post"].shape == (K, B, T, cfg.d_ff)
            assert cache[p + "attn_pattern"].shape == (K, B, cfg.n_heads, T, T)
    assert all(not v.requires_grad for v in cache.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_the_two_towers_start_from_different_random_weights(family, tiny_config,
                                                           synthetic_windows):
    model = TwoTowerLM(tiny_config(family)).eval()
    features = model.features(ids_of(synthetic_windows(2, 10, 60)))
    assert not torch.allclose(features[0], features[1])


def test_tower_features_are_concatenated_in_tower_order(tiny_config):
    model = TwoTowerLM(tiny_config("causal"))
    features = torch.randn(2, 3, 5, model.cfg.d_model)
    fused = model.fuse(features)
    assert fused.shape == (3, 5, 2 * model.cfg.d_model)
    assert torch.equal(fused[..., :model.cfg.d_model], features[0])
    assert torch.equal(fused[..., model.cfg.d_model:], features[1])


# --- who sees what --------------------------------------------------------------------

@pytest.mark.parametrize("j", [1, 5, 9])
def test_causal_logits_do_not_depend_on_later_tokens(j, tiny_config, synthetic_windows):
    model = TwoTowerLM(tiny_config("causal")).eval()
    ids = ids_of(synthetic_windows(2, 10, 60, pad=False))
    change = per_position_change(model(ids), model(changed_at(ids, j)))
    assert change[:j].max() < 1e-6  # the past cannot see token j
    assert change[j:].min() > 1e-4  # every position from j on does


@pytest.mark.parametrize("j", [1, 5, 9])
def test_mlm_logits_depend_on_tokens_on_both_sides(j, tiny_config, synthetic_windows):
    model = TwoTowerLM(tiny_config("mlm")).eval()
    ids = ids_of(synthetic_windows(2, 10, 60, pad=False))
    change = per_position_change(model(ids), model(changed_at(ids, j)))
    assert change.min() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_does_not_change_the_logits_of_real_positions(
        family, tiny_config, synthetic_windows, special):
    """A window with PAD at the end gives the same logits at its real positions as the
    same window cut before the padding, alone or next to an unpadded row."""
    model = TwoTowerLM(tiny_config(family)).eval()
    T, L = 12, 7
    full = ids_of(synthetic_windows(2, T, 60, pad=False, seed=3))
    padded = full.clone()
    padded[0, L:] = special.pad
    truncated = model(full[:1, :L])
    alone = model(padded[:1])
    batched = model(padded)  # row 1 has no padding
    torch.testing.assert_close(alone[:, :L], truncated, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[:1, :L], truncated, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1:], model(full[1:]), rtol=1e-5, atol=1e-5)


def test_mlm_real_positions_ignore_how_much_padding_follows(tiny_config,
                                                           synthetic_windows, special):
    model = TwoTowerLM(tiny_config("mlm")).eval()
    ids = ids_of(synthetic_windows(1, 12, 60, pad=False, seed=4))
    ids[0, 6:] = special.pad
    longer = ids.clone()
    longer[0, 4:] = special.pad
    shorter_pad = model(ids[:, :9])
    torch.testing.assert_close(model(ids)[:, :6], shorter_pad[:, :6], rtol=1e-5,
                               atol=1e-5)
    # and the check can fail: real content after position 4 does matter
    assert per_position_change(model(ids)[:, :4], model(longer)[:, :4]).min() > 1e-4


# --- loss -----------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_loss_is_the_cross_entropy_of_the_logits_at_positions_with_a_target(
        family, tiny_config, synthetic_windows, make_objective):
    model = TwoTowerLM(tiny_config(family)).eval()
    windows = synthetic_windows(4, 10, 60)
    batch = make_objective(family).make_batch(windows, torch.Generator().manual_seed(0))
    assert (batch.targets == IGNORE).any() and (batch.targets != IGNORE).any()
    logits = model(batch.input_ids)
    expected = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(),
                               ignore_index=IGNORE)
    torch.testing.assert_close(model.loss(batch), expected,
                               rtol=1e-5, atol=1e-6)


def test_input_longer_than_max_len_raises_twotower_error(tiny_config):
    model = TwoTowerLM(tiny_config("causal", max_len=8))
    with pytest.raises(TwotowerError, match="max_len"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_the_decoder_is_the_token_embedding(tiny_config):
    """Tied weights: moving the embedding moves the logits; no separate V x W matrix."""
    model = TwoTowerLM(tiny_config("causal")).eval()
    W = 2 * model.cfg.d_model
    big = [n for n, p in model.named_parameters()
           if p.shape == (model.cfg.vocab_size, W)]
    assert big == ["tok_emb.weight"]
    h = torch.randn(3, W)
    before = model.head_logits(h)
    with torch.no_grad():
        # not a constant shift: the head's last LayerNorm output sums to zero
        model.tok_emb.weight[7] += torch.randn(W)
    after = model.head_logits(h)
    assert not torch.allclose(before[:, 7], after[:, 7])
    torch.testing.assert_close(before[:, :7], after[:, :7])


# --- hooks ----------------------------------------------------------------------------

def attached(model) -> int:
    return sum(len(p._forward_hooks) for p in model.hook_points().values())


def test_hooks_are_removed_after_the_with_block(tiny_config, synthetic_windows):
    model = TwoTowerLM(tiny_config("causal")).eval()
    ids = ids_of(synthetic_windows(1, 8, 60))
    seen = []
    with model.hooks([("tower_out", lambda x, hp: seen.append(hp.name)),
                      ("towers.blocks.0.mlp_post", lambda x, hp: None)]):
        assert attached(model) == 2
        model(ids)
    assert seen == ["tower_out"]
    assert attached(model) == 0
    model(ids)
    assert seen == ["tower_out"]


def test_hooks_are_removed_when_the_with_block_raises(tiny_config):
    model = TwoTowerLM(tiny_config("causal"))
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks([("tower_out", lambda x, hp: None)]):
            assert attached(model) == 1
            raise RuntimeError("boom")
    assert attached(model) == 0


def test_hooks_with_an_unknown_name_raise_and_leave_nothing_attached(tiny_config):
    model = TwoTowerLM(tiny_config("causal"))
    with pytest.raises(TwotowerError, match="no_such_point"):
        with model.hooks([("tower_out", lambda x, hp: None),
                          ("no_such_point", lambda x, hp: None)]):
            pass  # pragma: no cover
    assert attached(model) == 0


def test_run_with_cache_rejects_unknown_names(tiny_config, synthetic_windows):
    model = TwoTowerLM(tiny_config("causal"))
    ids = ids_of(synthetic_windows(1, 8, 60))
    with pytest.raises(TwotowerError, match="unknown hook point"):
        model.run_with_cache(ids, names=["tower_out", "towers.blocks.9.mlp_post"])
    assert attached(model) == 0


def test_run_with_cache_returns_only_the_asked_names_and_leaves_no_hooks(
        tiny_config, synthetic_windows):
    model = TwoTowerLM(tiny_config("causal"))
    ids = ids_of(synthetic_windows(1, 8, 60))
    _, cache = model.run_with_cache(ids, names="tower_out")
    assert list(cache) == ["tower_out"]
    _, cache = model.run_with_cache(ids, names=lambda n: n.endswith("mlp_post"))
    assert sorted(cache) == ["towers.blocks.0.mlp_post", "towers.blocks.1.mlp_post"]
    assert attached(model) == 0


def test_a_hook_that_returns_a_tensor_replaces_the_activation(tiny_config,
                                                             synthetic_windows):
    model = TwoTowerLM(tiny_config("causal")).eval()
    ids = ids_of(synthetic_windows(2, 8, 60))

    def zero_tower_b(x, hook):
        x = x.clone()
        x[1] = 0
        return x

    with model.hooks([("tower_out", zero_tower_b)]):
        ablated = model(ids)
    expected = model.head_logits(model.fuse(zero_tower_b(model.features(ids), None)))
    torch.testing.assert_close(ablated, expected)
    assert not torch.allclose(ablated, model(ids))


# --- sizes ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", ["smoke", "small"])
def test_matched_single_tower_has_the_two_tower_parameter_count_within_5_percent(
        preset, family):
    cfg = get_preset(preset, family).model
    single = matched_single_tower_config(cfg)
    two, one = count_parameters(cfg, 2), count_parameters(single, 1)
    assert abs(one - two) <= 0.05 * two
    assert single.d_model > cfg.d_model  # one wider tower, not one of the two
    assert single.family == family and single.n_layers == cfg.n_layers


@pytest.mark.parametrize("family", FAMILIES)
def test_count_parameters_on_meta_matches_a_real_model(family, tiny_config):
    cfg = tiny_config(family)
    for model in (TwoTowerLM(cfg), SingleTowerLM(cfg)):
        real = sum(p.numel() for p in model.parameters())
        assert count_parameters(cfg, model.n_towers) == real == model.num_parameters()


# --- configuration errors -------------------------------------------------------------

def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


def test_d_model_not_divisible_by_n_heads_is_a_one_line_error():
    with pytest.raises(TwotowerError) as err:
        ModelConfig(family="mlm", d_model=30, n_heads=4).validate()
    assert "n_heads" in one_line(err) and "30" in str(err.value)


def test_building_a_model_validates_its_config():
    with pytest.raises(TwotowerError) as err:
        TwoTowerLM(ModelConfig(family="causal", d_model=30, n_heads=4))
    one_line(err)


def test_unknown_family_is_a_one_line_error():
    with pytest.raises(TwotowerError) as err:
        ModelConfig(family="rnn").validate()
    assert "rnn" in one_line(err) and "causal" in str(err.value)
    with pytest.raises(TwotowerError) as err:
        get_preset("smoke", "rnn")
    one_line(err)


def test_unknown_preset_is_a_one_line_error_naming_the_choices():
    with pytest.raises(TwotowerError) as err:
        get_preset("huge")
    assert "huge" in one_line(err) and all(name in str(err.value) for name in PRESETS)


@pytest.mark.parametrize("field, value", [("d_model", 0), ("n_layers", 0),
                                          ("vocab_size", -1), ("dropout", 1.0)])
def test_non_positive_sizes_and_bad_dropout_are_one_line_errors(field, value):
    cfg = dataclasses.replace(ModelConfig(), **{field: value})
    with pytest.raises(TwotowerError) as err:
        cfg.validate()
    assert field in one_line(err)


def test_bilm_needs_an_even_d_model():
    with pytest.raises(TwotowerError) as err:
        ModelConfig(family="bilm", d_model=33, n_heads=4).validate()
    assert "even" in one_line(err)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_is_a_valid_config(preset, family):
    cfg = get_preset(preset, family)
    assert cfg.model.validate() is cfg.model and cfg.model.family == family


@pytest.mark.parametrize("preset", list(PRESETS))
def test_a_run_config_survives_a_json_round_trip(preset):
    cfg = get_preset(preset, "mlm").with_seed(7)
    assert run_config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg


def test_a_config_written_by_another_version_is_refused():
    d = config_to_dict(get_preset("smoke"))
    d["model"]["n_experts"] = 4
    with pytest.raises(TwotowerError, match="n_experts"):
        run_config_from_dict(d)


def test_config_to_dict_equals_what_json_reads_back():
    d = config_to_dict(get_preset("smoke"))
    assert json.loads(json.dumps(d)) == d
