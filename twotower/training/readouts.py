"""Phases 2 and 3: read each tower alone through a fresh readout on frozen towers.

Introduced in chapter 7 (*Reading each tower alone*).

After joint training, the embedding and the towers are frozen with
``requires_grad_(False)`` and left out of the optimiser (the authors only wrapped them
in ``no_grad`` while they stayed in the optimiser, so weight decay still moved them:
bug 3). Each tower gets a fresh, untied readout that normalises *that tower's* output on
its own (the authors normalised the concatenation of both towers and then sliced it, so
each readout saw statistics of the other tower: bug 2). Both readouts are trained on the
same batches and scored on identical positions and masks (the authors scored them on
different random subsets: bug 4), with log-probabilities in fp32 (bug 5).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from twotower.config import TrainConfig
from twotower.errors import TwotowerError
from twotower.models.tower_lm import IGNORE, TowerLM, mean_cross_entropy, select_targets
from twotower.data.objectives import Batch
from twotower.data.scores import TokenScores
from twotower.training import checkpoint as ckpt
from twotower.training.runtime import autocast, resolve_device, resolve_precision
from twotower.training.trainer import WindowBatches, train


class Readout(nn.Module):
    """LayerNorm (one tower only) -> dense D->D -> GELU -> LayerNorm -> linear D->V."""

    def __init__(self, d_model: int, vocab_size: int):
        super().__init__()
        self.norm_in = nn.LayerNorm(d_model)
        self.dense = nn.Linear(d_model, d_model)
        self.norm_out = nn.LayerNorm(d_model)
        self.decoder = nn.Linear(d_model, vocab_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``(N, D) -> logits (N, V)``."""
        return self.decoder(self.norm_out(F.gelu(self.dense(self.norm_in(h)))))


class TowerReadouts(nn.Module):
    """One :class:`Readout` per tower. Holds no reference to the (frozen) model."""

    def __init__(self, d_model: int, vocab_size: int, n_towers: int = 2):
        super().__init__()
        self.readouts = nn.ModuleList(Readout(d_model, vocab_size)
                                      for _ in range(n_towers))

    def loss(self, model: TowerLM, batch: Batch) -> torch.Tensor:
        """Mean over towers of each readout's mean cross-entropy (fp32).

        The towers are frozen, so each readout's gradient comes from its own term only
        (scaled by 1/K, which AdamW does not notice); as a validation loss it is the
        mean of the readouts' losses, so its exp is their geometric-mean perplexity.
        """
        with torch.no_grad():
            features = model.features(batch.input_ids)  # (K, B, T, D)
        losses = []
        for k, readout in enumerate(self.readouts):
            hidden, target = select_targets(features[k], batch.targets, batch.positions)
            losses.append(mean_cross_entropy(readout(hidden), target))
        return torch.stack(losses).mean()


def freeze(model: nn.Module) -> nn.Module:
    """Take every parameter out of training and switch dropout off."""
    model.requires_grad_(False)
    return model.eval()


def train_readouts(model: TowerLM, batches: WindowBatches, cfg: TrainConfig, *,
                   val: WindowBatches | None = None, run_dir: Path | None = None,
                   callbacks: Iterable = (), progress: bool = True,
                   phase: str = "readouts", towers_step: int | None = None
                   ) -> tuple[TowerReadouts, dict]:
    """Freeze ``model`` and train one fresh readout per tower (phases 2 and 3).

    Both readouts see the same batches; gradients are clipped per readout. Every
    checkpoint records the towers it was trained on (``towers_step`` and
    :func:`twotower.training.checkpoint.weights_sha256`), and a resumed training
    refuses readouts that were trained on other towers.

    Returns:
        ``(readouts, training summary)``.

    Raises:
        TwotowerError: when ``run_dir`` holds readouts trained on other towers.
    """
    freeze(model).to(resolve_device(cfg.device))
    towers = {"step": towers_step, "sha256": ckpt.weights_sha256(model)}
    if run_dir is not None:
        _refuse_other_towers(Path(run_dir) / phase, towers)
    torch.manual_seed(cfg.seed + 1)  # readout init differs from the model's
    readouts = TowerReadouts(model.cfg.d_model, model.cfg.vocab_size, model.n_towers)
    summary = train(readouts, lambda b: readouts.loss(model, b), batches, cfg,
                    phase=phase, val=val, run_dir=run_dir, callbacks=callbacks,
                    clip_groups=[list(r.parameters()) for r in readouts.readouts],
                    meta={"towers": towers}, progress=progress)
    return readouts.eval(), summary


def _refuse_other_towers(folder: Path, towers: dict) -> None:
    """Refuse to resume the readouts in ``folder`` when their newest checkpoint was
    trained on towers other than ``towers`` (one replaced or trained again since);
    checkpoints made before the record are not checked."""
    last = ckpt.latest_checkpoint(folder)
    trained_on = ckpt.load_meta(last).get("towers", {}) if last is not None else {}
    if trained_on.get("sha256") not in (None, towers["sha256"]):
        raise TwotowerError(
            f"{last} holds readouts trained on other towers (step "
            f"{trained_on.get('step')}) than the towers of step {towers['step']} now "
            f"in {folder.parent}; delete {folder} and rerun to train the readouts "
            "again on these towers")


def _true_logprob(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return logits.float().log_softmax(-1).gather(1, target[:, None])[:, 0]


@torch.no_grad()
def score_readouts(model: TowerLM, readouts: TowerReadouts, batches: Iterable[Batch],
                   device: str | torch.device = "auto", precision: str = "fp32"
                   ) -> TokenScores:
    """Score every readout and the fused head on the SAME positions and masks.

    In fp32 by default: the score of a token is a difference of log-probabilities, and
    bf16 logits round them to about 2 decimal digits. Streams over ``batches``;
    memory grows by 20 bytes per scored position. Batches that carry their window
    index (:meth:`twotower.training.trainer.WindowBatches.score_batches`) give each
    position its window; others give -1.
    """
    device = resolve_device(device)
    dtype = resolve_precision(precision, device)
    model.to(device).eval()
    readouts.to(device).eval()
    targets, lls, joints, windows = [], [], [], []
    with autocast(device, dtype):
        for batch in batches:
            rows = batch.window if batch.window is not None else \
                torch.full((len(batch.input_ids),), -1)
            keep_cpu = batch.targets != IGNORE
            windows.append(rows[:, None].expand_as(keep_cpu)[keep_cpu].to(torch.int32))
            batch = batch.to(device)
            features = model.features(batch.input_ids)  # (K, B, T, D)
            fused, target = select_targets(model.fuse(features), batch.targets,
                                           batch.positions)
            joints.append(_true_logprob(model.head_logits(fused), target))
            lls.append(torch.stack([
                _true_logprob(r(select_targets(features[k], batch.targets,
                                               batch.positions)[0]), target)
                for k, r in enumerate(readouts.readouts)]))
            targets.append(target.to(torch.int32))
    # kept on the device until the end: one transfer, no wait per batch
    return TokenScores(torch.cat(targets).cpu().numpy(),
                       torch.cat(lls, 1).cpu().numpy(),
                       torch.cat(joints).cpu().numpy(), torch.cat(windows).numpy())


def loss_summary(scores: TokenScores) -> dict:
    """Mean loss (nats) and perplexity of the joint head and of each readout."""
    out = {"scored_tokens": int(scores.target.size)}
    named = {"joint": scores.joint, **{f"readout_{'ab'[k]}": scores.ll[k]
                                       for k in range(scores.ll.shape[0])}}
    for name, ll in named.items():
        loss = float(-ll.mean())
        out[f"{name}_loss"], out[f"{name}_ppl"] = loss, float(np.exp(min(loss, 50.0)))
    return out
