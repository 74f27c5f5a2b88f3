"""The experiment of chapter 2: two towers on the planted language, read and scored.

Introduced in chapter 2 (*A language with a planted division*).

One call of :func:`run_planted` does what chapters 5 to 8 take apart, on the language of
:mod:`twotower.data.synthetic`: phase 1 (the two-tower model through its fused head),
phases 2/3 (a readout per frozen tower), scoring both readouts on the same validation
positions, and the token preference. With ``control=True`` it also reads out the same
model *at initialisation* (readouts trained, towers never trained): the control that
shows how much "division" random towers already produce.

A run directory ``<runs_dir>/planted-<hash of the config>/seed<k>/`` holds the phase
checkpoints, ``metrics.jsonl``, ``scores.npz`` and ``init_scores.npz``; a rerun finds
them and trains nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from twotower import atomic
from twotower.config import ModelConfig, TrainConfig, config_to_dict
from twotower.models.tower_lm import TwoTowerLM, mean_cross_entropy, select_targets
from twotower.data.objectives import Objective
from twotower.training import checkpoint as ckpt
from twotower.training.stacked import save_each, train_stacked
from twotower.analysis.preference import token_preference
from twotower.training.readouts import TokenScores, score_readouts, train_readouts
from twotower.analysis.planted_split import (local_topic_prefs, permutation_test,
                                             planted_split_score, split_shares)
from twotower.data.synthetic import (CLS_ID, LABELS, SPECIAL_IDS, PlantedLanguage,
                                     PlantedLanguageConfig)
from twotower.training.trainer import WindowBatches, train


@dataclass(frozen=True)
class PlantedRunConfig:
    """Language, model, the two training phases and the amount of data."""

    language: PlantedLanguageConfig = field(default_factory=PlantedLanguageConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(
        n_layers=1, d_model=32, n_heads=1, d_ff=64, dropout=0.0))
    joint: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=1500, batch_size=32, lr=3e-3, warmup_steps=30, eval_every=250,
        eval_batches=4, checkpoint_every=0, log_every=25))
    readout: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=200, batch_size=32, lr=3e-3, warmup_steps=10, eval_every=0,
        eval_batches=4, checkpoint_every=0, log_every=25))
    n_train: int = 2000  # training windows
    n_val: int = 256  # validation windows (scored for pref)
    min_count: int = 20  # tokens seen fewer times as targets get pref = NaN
    # a division planted in phase 1 (0: none): the probability that a position's loss
    # reaches only the tower that owns its target's process (see routed_loss)
    division: float = 0.0

    def resolved_model(self, vocab_size: int) -> ModelConfig:
        """The model config with the language's vocabulary and window filled in."""
        return dataclasses.replace(self.model, family="causal", vocab_size=vocab_size,
                                   max_len=self.language.window)

    def key(self) -> str:
        """Eight hex digits that change whenever anything in the config changes
        (``division`` counts only when set, so runs made before it existed keep their
        folders)."""
        fields = config_to_dict(self)
        if not self.division:
            fields.pop("division")
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:8]


def _smoke() -> PlantedRunConfig:
    base = PlantedRunConfig()
    return dataclasses.replace(
        base, joint=dataclasses.replace(base.joint, steps=1000, eval_every=200),
        readout=dataclasses.replace(base.readout, steps=100, lr=1e-2),
        n_train=1000, n_val=128)


#: The run of chapter 2 at each preset (``smoke``: CI; anything else: ``small``).
PLANTED_PRESETS: dict[str, PlantedRunConfig] = {"smoke": _smoke(),
                                                "small": PlantedRunConfig()}


@dataclass
class PlantedRun:
    """What one seed of the experiment produced (see :func:`run_planted`)."""

    cfg: PlantedRunConfig
    seed: int
    language: PlantedLanguage
    run_dir: Path
    scores: TokenScores  # readouts of the trained towers
    pref: pd.DataFrame  # token_preference of ``scores``
    init_scores: TokenScores | None  # readouts of the same towers at initialisation
    init_pref: pd.DataFrame | None
    seconds: float  # spent in this call (about a second when all was on disk)

    def oracle_losses(self) -> pd.Series:
        """Loss (nats) of the true generator on the validation targets, per process:
        the floor that no model can beat."""
        windows = _windows(self.cfg, self.language, self.seed)[1]
        sample_ll = self.language.oracle_log_probs(windows)  # (N, T - 1)
        labels = self.language.labels[windows[:, 1:]]
        return pd.Series({p: float(-sample_ll[labels == p].mean())
                          for p in ("local", "topic")}, name="oracle")

    def metrics(self) -> pd.DataFrame:
        """The joint phase's ``metrics.jsonl`` (train loss every ``log_every`` steps,
        validation loss at every evaluation)."""
        path = self.run_dir / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        return pd.DataFrame([r for r in rows if r.get("phase") == "joint"])


def owners(language: PlantedLanguage, seed: int) -> torch.Tensor:
    """``(V,)`` the tower that owns each id under a planted division: local ids go to
    tower ``seed % 2``, topic ids to the other, special ids to none (-1)."""
    first = seed % 2
    owner = np.full(language.vocab_size, -1)
    owner[language.labels == "local"] = first
    owner[language.labels == "topic"] = 1 - first
    return torch.as_tensor(owner)


def routed_loss(model: TwoTowerLM, batch, owner: torch.Tensor, strength: float
                ) -> torch.Tensor:
    """The fused head's loss with a division of labour planted by gradient routing.

    At each position whose target has an owner, with probability ``strength`` the
    other tower's features enter the head detached: the prediction is unchanged (no
    information leaks to the head) but that loss trains only the owning tower.
    ``strength`` 0 is :meth:`TwoTowerLM.loss`; 1 routes every position.
    """
    features = model.features(batch.input_ids)  # (2, B, T, D)
    target_owner = owner.to(batch.targets.device)[batch.targets.clamp(min=0)]
    target_owner = torch.where(batch.targets < 0, -1, target_owner)
    routed = (target_owner >= 0) & (torch.rand(batch.targets.shape,
                                               device=batch.targets.device) < strength)
    features = torch.stack([
        torch.where((routed & (target_owner == 1 - k))[..., None],
                    features[k].detach(), features[k]) for k in range(2)])
    hidden, target = select_targets(model.fuse(features), batch.targets,
                                    batch.positions)
    return mean_cross_entropy(model.head_logits(hidden), target)


def _windows(cfg: PlantedRunConfig, language: PlantedLanguage, seed: int):
    """Training windows depend on the seed; validation windows are the same for all."""
    train_windows = language.sample(cfg.n_train, seed=1 + seed).windows
    val_windows = language.sample(cfg.n_val, seed=10_000).windows
    return train_windows, val_windows


def run_directory(cfg: PlantedRunConfig, seed: int, runs_dir: str | Path) -> Path:
    """Where :func:`run_planted` keeps the run of ``cfg`` and ``seed``.

    Not a :class:`~twotower.training.run_folder.RunSpec` name: a planted run is named
    by a hash of its whole config (:meth:`PlantedRunConfig.key`), which no preset
    holds.
    """
    return Path(runs_dir) / f"planted-{cfg.key()}" / f"seed{seed}"


def is_trained(run_dir: str | Path) -> bool:
    """Whether a planted run folder holds the scores of its trained towers (phase 1
    and their readouts done): :func:`run_planted` then trains nothing for them."""
    return (Path(run_dir) / "scores.npz").exists()


def run_planted(cfg: PlantedRunConfig, seed: int, runs_dir: str | Path, *,
                device: str = "auto", control: bool = True, callbacks: Iterable = (),
                progress: bool = True) -> PlantedRun:
    """Train (or reload) one seed of the planted-division experiment.

    Args:
        cfg: language, model and training phases.
        seed: model initialisation, batch order and training windows.
        runs_dir: parent of the run directory; what is there is reused.
        device: where to train (fp32 unless the device has fast bf16/fp16).
        control: also read out the untrained model.
        callbacks: passed to the joint phase's training loop (e.g. a LiveLossPlot).

    Returns:
        :class:`PlantedRun` with the scores and preferences of both models.
    """
    start = time.perf_counter()
    language = PlantedLanguage(cfg.language)
    V = language.vocab_size
    run_dir = run_directory(cfg, seed, runs_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "config.json",
                      json.dumps(config_to_dict(cfg), indent=1))
    joint = dataclasses.replace(cfg.joint, seed=seed, device=device)
    readout = dataclasses.replace(cfg.readout, seed=seed, device=device)
    objective = Objective("causal", SPECIAL_IDS, pad_id=0, cls_id=CLS_ID, mask_id=4,
                          n_tokens=V)
    train_windows, val_windows = _windows(cfg, language, seed)
    batches = WindowBatches(train_windows, objective, joint.batch_size, seed)
    val = WindowBatches(val_windows, objective, 64, seed)

    def read(model: TwoTowerLM, name: str) -> TokenScores:
        path = run_dir / f"{name}.npz"
        if not path.exists():  # phases 2/3, then both readouts on the same positions
            readouts, _ = train_readouts(model, batches, readout, run_dir=run_dir,
                                         phase=f"{name}_readouts", progress=progress)
            score_readouts(model, readouts, val.score_batches(), device).save(path)
        return TokenScores.load(path)

    init_scores = None
    if control:
        torch.manual_seed(seed)  # the very weights the trained model starts from
        init_scores = read(TwoTowerLM(cfg.resolved_model(V)), "init_scores")
    torch.manual_seed(seed)
    model = TwoTowerLM(cfg.resolved_model(V))
    loss = model.loss
    if cfg.division:
        owner = owners(language, seed)
        loss = lambda batch: routed_loss(  # noqa: E731
            model, batch, owner, cfg.division)
    if not is_trained(run_dir):  # phase 1 (resumes from a checkpoint)
        train(model, loss, batches, joint,
              val=val, run_dir=run_dir, callbacks=callbacks, progress=progress)
    scores = read(model, "scores")
    prefs = [None if s is None else token_preference(s, V, cfg.min_count)
             for s in (scores, init_scores)]
    return PlantedRun(cfg, seed, language, run_dir, scores, prefs[0], init_scores,
                      prefs[1], time.perf_counter() - start)


def run_planted_seeds(cfg: PlantedRunConfig, seeds: Iterable[int],
                      runs_dir: str | Path, *, device: str = "auto",
                      control: bool = True, progress: bool = True,
                      stacked: bool = True) -> list[PlantedRun]:
    """:func:`run_planted` for every seed. With ``stacked``, phase 1 of the seeds not
    yet started is trained for all of them as one computation
    (:func:`twotower.training.stacked.train_stacked`: the same weights up to rounding,
    in a fraction of the time for a model this small) and saved as each seed's finished
    phase 1; a planted division (``cfg.division``) or dropout trains them one by one.
    """
    seeds = list(seeds)
    language = PlantedLanguage(cfg.language)
    dirs = {s: run_directory(cfg, s, runs_dir) for s in seeds}
    todo = [s for s in seeds if not is_trained(dirs[s])
            and ckpt.latest_checkpoint(dirs[s] / "joint") is None]
    if stacked and len(todo) > 1 and not cfg.division and cfg.model.dropout == 0:
        objective = Objective("causal", SPECIAL_IDS, pad_id=0, cls_id=CLS_ID,
                              mask_id=4, n_tokens=language.vocab_size)
        models, batches = [], []
        for s in todo:
            torch.manual_seed(s)  # as run_planted initialises the seed's model
            models.append(TwoTowerLM(cfg.resolved_model(language.vocab_size)))
            batches.append(WindowBatches(_windows(cfg, language, s)[0], objective,
                                         cfg.joint.batch_size, s))
            dirs[s].mkdir(parents=True, exist_ok=True)
        joint = dataclasses.replace(cfg.joint, device=device)
        out = train_stacked(models, batches, joint, run_dirs=[dirs[s] for s in todo],
                            progress=progress)
        save_each(models, out["optimizers"], joint, [dirs[s] for s in todo],
                  meta={"n_towers": 2})
    return [run_planted(cfg, s, runs_dir, device=device, control=control,
                        progress=progress) for s in seeds]


def process_losses(scores: TokenScores, labels: np.ndarray) -> pd.DataFrame:
    """Mean loss (nats) of each readout and of the fused head on each process's tokens.

    Returns:
        DataFrame with rows ``tower A``, ``tower B``, ``joint head`` and columns
        ``local``, ``topic``. A division of labour shows as a cross: each tower is the
        better one on one process.
    """
    kind = np.asarray(labels)[scores.target]
    rows = {"tower A": scores.ll[0], "tower B": scores.ll[1],
            "joint head": scores.joint}
    return pd.DataFrame({p: {name: float(-ll[kind == p].mean()) for name, ll in
                             rows.items()} for p in LABELS[1:]})


def summarise(run: PlantedRun, n_boot: int = 1000, n_perm: int = 2000) -> pd.DataFrame:
    """One row per model (``trained``, ``untrained``): |r| with its interval, the
    permutation p, ``null_95`` (the 95% quantile of |r| under shuffled labels), the
    shares of :func:`twotower.analysis.planted_split.split_shares` and the readout
    losses per process (``loss tower A local``, ...)."""
    rows = {}
    labels = run.language.labels
    for name, scores, pref in (("trained", run.scores, run.pref),
                               ("untrained", run.init_scores, run.init_pref)):
        if scores is None:
            continue
        score = planted_split_score(pref, labels, n_boot, n_perm, seed=run.seed)
        _, null = permutation_test(*local_topic_prefs(pref, labels), n_perm, run.seed)
        losses = process_losses(scores, labels)
        rows[name] = {"seed": run.seed, "|r|": score.r, "ci_low": score.ci[0],
                      "ci_high": score.ci[1], "p": score.p,
                      "null_95": float(np.quantile(null, 0.95)),
                      **split_shares(pref, labels),
                      **{f"loss {k} {p}": losses.loc[k, p] for k in losses.index
                         for p in losses.columns}}
    return pd.DataFrame.from_dict(rows, orient="index")
