"""Frozen configuration dataclasses and the named presets.

Introduced in chapter 5 (*Two towers, one head*) and chapter 6 (*Training on a GPU*).

Every run is described by one :class:`RunConfig`, made of a :class:`ModelConfig`, a
:class:`DataConfig` and two :class:`TrainConfig` (joint phase 1, readout phases 2/3).
Variants are made with :func:`dataclasses.replace`; ``asdict`` of the whole thing is
saved next to every checkpoint. A preset is data: :data:`PRESETS` maps a name and a
family to a finished :class:`RunConfig`, and no code path looks at a preset's name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from twotower.atomic import read_json
from twotower.errors import TwotowerError

#: The three kinds of tower (chapter 4), in the order every table and loop uses; the
#: one list of families in the package.
FAMILIES = ("causal", "mlm", "bilm")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_SEED = 2**31  # seeds are combined with step numbers into 64-bit generator seeds
MAX_STEPS = 10**9
#: Metadata of a field that :func:`config_to_dict` leaves out while it holds its
#: default, so that a field added later leaves the ``config.json`` of older run
#: folders equal to a rerun's (a rerun with another value is refused as usual).
SAVED_UNLESS_DEFAULT = {"saved_unless_default": True}
#: Values of ``RunConfig.control``: "" is the two-tower model itself, the others the
#: controls of chapter 9 (twotower.experiments.controls); the one list of controls.
CONTROLS = ("", "independent", "split", "untrained", "reseeded")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelConfig:
    """Shape of one tower and of the shared parts around it.

    For the transformer families every tower is a stack of pre-LN blocks of width
    ``d_model``. For ``bilm`` every tower is a forward and a backward LSTM stack whose
    hidden size is ``d_ff`` and whose outputs are projected to ``d_model // 2`` each, so
    a tower again emits ``d_model`` features (ELMo's "projected to 256 per direction").
    """

    family: str = "causal"  # "causal" (GPT-like), "mlm" (BERT-like), "bilm" (ELMo-like)
    n_layers: int = 3  # blocks (transformer) or stacked LSTM layers (bilm) per tower
    d_model: int = 128  # width h of ONE tower; the shared embedding: n_towers * h wide
    n_heads: int = 4  # attention heads per block (transformers only)
    d_ff: int = 512  # MLP hidden width (transformers) or LSTM hidden size (bilm)
    vocab_size: int = 8192  # rows of the shared embedding (tokenizer size padded to 64)
    max_len: int = 128  # longest window, and rows of the learned position embedding
    dropout: float = 0.1  # after the embedding LayerNorm, in attention/MLP outputs
    init_std: float = 0.02  # std of the normal initialisation of weight matrices
    pad_id: int = 0  # id of [PAD] (0 for BERT's and for our trained WordPiece)

    def validate(self) -> "ModelConfig":
        """Return ``self`` or raise :class:`TwotowerError` naming the bad field."""
        if self.family not in FAMILIES:
            raise TwotowerError(
                f"unknown family {self.family!r}; choose one of {', '.join(FAMILIES)}"
            )
        for name in ("n_layers", "d_model", "d_ff", "vocab_size", "max_len"):
            if getattr(self, name) < 1:
                raise TwotowerError(f"{name} must be a positive integer, got "
                                    f"{getattr(self, name)}")
        if self.family == "bilm":
            if self.d_model % 2:
                raise TwotowerError(f"bilm needs an even d_model (two directions), got "
                                    f"{self.d_model}; use {self.d_model + 1}")
        else:
            if self.n_heads < 1 or self.d_model % self.n_heads:
                raise TwotowerError(
                    f"d_model ({self.d_model}) must be divisible by n_heads "
                    f"({self.n_heads}); change one of them, e.g. n_heads="
                    f"{_nearest_divisor(self.d_model, self.n_heads)}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise TwotowerError(f"dropout must be in [0, 1), got {self.dropout}")
        return self


def _nearest_divisor(n: int, near: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: abs(d - max(near, 1)))


@dataclass(frozen=True)
class DataConfig:
    """Which text, which tokenizer, and how it is cut into windows."""

    corpus: str = "wikitext-2"  # "wikitext-2" or "wikitext-103" (raw, from the Hub)
    source: str = "auto"  # "auto", "bundled" or "online" (twotower.data.sources)
    tokenizer: str = "train"  # "train": WordPiece on the corpus; "bert-base-uncased"
    vocab_size: int = 8192  # target size when the tokenizer is trained here
    max_len: int = 128  # tokens per window, [CLS] included
    val_fraction: float = 0.1  # share of articles held out for validation
    max_train_tokens: int = 0  # keep only this many training tokens (0 = all)
    split_seed: int = 0  # which articles go to validation


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule, precision and bookkeeping for one training phase."""

    steps: int = 1000  # optimiser steps
    batch_size: int = 32  # windows per step (the global batch under torchrun)
    lr: float = 1e-3  # peak learning rate of AdamW
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas (the authors' values)
    weight_decay: float = 0.01  # on weight matrices only, never on biases and norms
    warmup_steps: int = 100  # linear warm-up from ~0, then linear decay to 0
    grad_clip: float = 1.0  # max global gradient norm (per readout in phases 2/3)
    precision: str = "auto"  # "auto" (bf16 on CPU/new GPUs, fp16 else), "fp32", ...
    device: str = "auto"  # "auto" picks cuda, then mps, then cpu
    compile: bool = False  # wrap the model in torch.compile
    mlm_probability: float = 0.15  # share of non-special positions selected (mlm)
    eval_every: int = 200  # steps between validation passes (0 = only at the end)
    eval_batches: int = 20  # validation batches per pass
    checkpoint_every: int = 200  # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # how many recent checkpoints to keep on disk
    log_every: int = 10  # steps between lines in metrics.jsonl
    seed: int = 0  # seeds initialisation, batch order, masks and dropout
    detect_anomaly: bool = False  # torch.autograd anomaly detection (slow; debugging)

    def validate(self, name: str = "train") -> "TrainConfig":
        """Return ``self`` or raise :class:`TwotowerError` naming the bad field.

        ``name`` says which phase's settings these are (``train`` or ``readout``).
        """
        def bad(field_: str, need: str) -> TwotowerError:
            return TwotowerError(f"{name}.{field_} must be {need}, got "
                                 f"{getattr(self, field_)!r}")
        for field_ in ("steps", "batch_size", "eval_batches", "log_every",
                       "keep_checkpoints"):
            if not _is_int(getattr(self, field_)) or getattr(self, field_) < 1:
                raise bad(field_, "a positive integer")
        for field_ in ("warmup_steps", "eval_every", "checkpoint_every"):
            if not _is_int(getattr(self, field_)) or getattr(self, field_) < 0:
                raise bad(field_, "an integer >= 0")
        if not _is_int(self.seed) or not 0 <= self.seed < MAX_SEED:
            raise bad("seed", f"an integer in [0, {MAX_SEED})")
        if self.steps > MAX_STEPS:
            raise bad("steps", f"at most {MAX_STEPS:,}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", "a finite number > 0 (e.g. 1e-3)")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise bad("grad_clip", "a finite number > 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "a finite number >= 0")
        if not 0.0 < self.mlm_probability < 1.0:
            raise bad("mlm_probability", "in (0, 1)")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise bad("betas", "two numbers in [0, 1)")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"one of {', '.join(PRECISIONS)}")
        return self


@dataclass(frozen=True)
class RunConfig:
    """Everything ``python -m twotower run`` needs, saved as ``config.json``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # phase 1 (joint head)
    readout: TrainConfig = field(default_factory=TrainConfig)  # phases 2/3 (per tower)
    min_count: int = 5  # tokens seen fewer times as targets get pref = NaN
    score_batches: int = 0  # validation batches scored for pref (0 = all)
    baseline: bool = False  # also train the parameter-matched single-tower model
    preset: str = ""  # name of the preset this came from (informational only)
    control: str = ""  # "" (the two-tower model) or a control of chapter 9:
    # "independent", "split", "untrained" or "reseeded" (see CONTROLS above)
    threads: int = field(default=0, metadata=SAVED_UNLESS_DEFAULT)  # CPU threads of
    # training and scoring (0: as many as the run's checkpoints used, else this
    # machine's cores); fixed so that the same command gives the same bits
    # (twotower.training.runtime.run_threads)

    def validate(self) -> "RunConfig":
        """Return ``self`` or raise :class:`TwotowerError` naming the bad field."""
        self.model.validate()
        self.train.validate("train")
        self.readout.validate("readout")
        if not _is_int(self.min_count) or self.min_count < 1:
            raise TwotowerError(f"min_count must be a positive integer, got "
                                f"{self.min_count!r}")
        if not _is_int(self.score_batches) or self.score_batches < 0:
            raise TwotowerError(f"score_batches must be an integer >= 0 (0: all), got "
                                f"{self.score_batches!r}")
        if not _is_int(self.threads) or self.threads < 0:
            raise TwotowerError(f"threads must be an integer >= 0 (0: this machine's "
                                f"cores), got {self.threads!r}")
        if self.control not in CONTROLS:
            raise TwotowerError(f"unknown control {self.control!r}; choose one of "
                                f"{', '.join(c for c in CONTROLS if c)}")
        return self

    def with_seed(self, seed: int) -> "RunConfig":
        """Same run, another seed for model, batches and masks (data split kept)."""
        return dataclasses.replace(
            self,
            train=dataclasses.replace(self.train, seed=seed),
            readout=dataclasses.replace(self.readout, seed=seed),
        )


def _bilm(model: ModelConfig, d_model: int, d_ff: int, n_layers: int = 2
          ) -> ModelConfig:
    return dataclasses.replace(model, family="bilm", d_model=d_model, d_ff=d_ff,
                               n_layers=n_layers)


def _preset(name: str, model: ModelConfig, data: DataConfig, train: TrainConfig,
            readout: TrainConfig, bilm: ModelConfig, **run) -> dict[str, RunConfig]:
    common = dict(data=data, train=train, readout=readout, preset=name, **run)
    return {
        "causal": RunConfig(model=dataclasses.replace(model, family="causal"),
                            **common),
        "mlm": RunConfig(model=dataclasses.replace(model, family="mlm"), **common),
        "bilm": RunConfig(model=bilm, **common),
    }


def _build_presets() -> dict[str, dict[str, RunConfig]]:
    presets: dict[str, dict[str, RunConfig]] = {}

    # smoke: the whole pipeline in well under a minute on 2 CPU cores (CI).
    m = ModelConfig(n_layers=2, d_model=64, n_heads=2, d_ff=256, vocab_size=2048,
                    max_len=64, dropout=0.1)
    d = DataConfig(vocab_size=2048, max_len=64, max_train_tokens=120_000)
    t = TrainConfig(steps=120, batch_size=16, lr=2e-3, warmup_steps=10, eval_every=60,
                    eval_batches=4, checkpoint_every=60, log_every=10)
    r = dataclasses.replace(t, steps=60, eval_every=30, checkpoint_every=30)
    presets["smoke"] = _preset("smoke", m, d, t, r, _bilm(m, 64, 32, 1),
                               min_count=3, score_batches=16)

    # small: a CPU run that shows something real in minutes (2 cores, fp32: ~6k tokens/s
    # for causal, ~9k mlm, ~3k bilm); 2 layers, context 64, vocabulary 4096.
    m = ModelConfig(n_layers=2, d_model=128, n_heads=4, d_ff=512, vocab_size=4096,
                    max_len=64, dropout=0.1)
    d = DataConfig(vocab_size=4096, max_len=64)
    t = TrainConfig(steps=800, batch_size=32, lr=2e-3, warmup_steps=60,
                    eval_every=200, eval_batches=20, checkpoint_every=200)
    r = dataclasses.replace(t, steps=600, warmup_steps=30, eval_every=200,
                            checkpoint_every=200)
    presets["small"] = _preset("small", m, d, t, r, _bilm(m, 128, 256, 2), min_count=5)

    # colab: one Colab GPU (T4/L4) for about an hour, WikiText-103, BERT's vocabulary.
    m = ModelConfig(n_layers=6, d_model=256, n_heads=4, d_ff=1024, vocab_size=30528,
                    max_len=128, dropout=0.1)
    d = DataConfig(corpus="wikitext-103", tokenizer="bert-base-uncased",
                   vocab_size=30528, max_len=128)
    t = TrainConfig(steps=20_000, batch_size=128, lr=1e-3, warmup_steps=1000,
                    eval_every=1000, eval_batches=50, checkpoint_every=1000)
    r = dataclasses.replace(t, steps=3000, warmup_steps=100, eval_every=1000)
    presets["colab"] = _preset("colab", m, d, t, r, _bilm(m, 256, 1024, 2),
                               min_count=20)

    # paper_base / paper_large: the authors' base_2tower and large_2tower sizes.
    for name, layers, heads, h, ff, lstm_h, lstm_d in (
        ("paper_base", 12, 12, 384, 1536, 2048, 512),
        ("paper_large", 24, 16, 512, 2048, 4096, 512),
    ):
        m = ModelConfig(n_layers=layers, d_model=h, n_heads=heads, d_ff=ff,
                        vocab_size=30528, max_len=128, dropout=0.1)
        t = TrainConfig(steps=100_000, batch_size=256, lr=1e-3, warmup_steps=10_000,
                        eval_every=2000, eval_batches=100, checkpoint_every=2000)
        r = dataclasses.replace(t, steps=10_000, warmup_steps=1000)
        presets[name] = _preset(name, m, d, t, r, _bilm(m, lstm_d, lstm_h, 2),
                                min_count=50)
    return presets


PRESETS: dict[str, dict[str, RunConfig]] = _build_presets()


def get_preset(name: str, family: str = "causal") -> RunConfig:
    """The :class:`RunConfig` of preset ``name`` for ``family``.

    Raises:
        TwotowerError: for an unknown preset or family, naming the valid choices.
    """
    if name not in PRESETS:
        raise TwotowerError(f"unknown preset {name!r}; choose one of "
                            f"{', '.join(PRESETS)}")
    if family not in FAMILIES:
        raise TwotowerError(f"unknown family {family!r}; choose one of "
                            f"{', '.join(FAMILIES)}")
    return PRESETS[name][family]


def config_to_dict(cfg) -> dict:
    """``asdict`` with tuples turned into lists, ready for JSON; a field marked
    :data:`SAVED_UNLESS_DEFAULT` is left out while it holds its default."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name))
                    for f in dataclasses.fields(value)
                    if not (f.metadata.get("saved_unless_default")
                            and getattr(value, f.name) == f.default)}
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    return plain(cfg)


def read_run_config(run_dir) -> RunConfig:
    """The :class:`RunConfig` saved in ``run_dir/config.json``, validated.

    Raises:
        TwotowerError: when it is missing, damaged, from another version or holds
            values out of range (an edited file).
    """
    file = f"{run_dir}/config.json"
    fix = "it is not a run directory made by twotower, or it was edited: rerun the run"
    values = read_json(file, fix)  # its errors name the file already
    try:
        return run_config_from_dict(values).validate()
    except TwotowerError as err:
        raise TwotowerError(f"{file}: {err}") from None
    except (TypeError, ValueError) as err:  # e.g. "n_layers": "two"
        raise TwotowerError(f"{file} holds a value of the wrong type ({err}); {fix}"
                            ) from None


def run_config_from_dict(d: dict) -> RunConfig:
    """Inverse of :func:`config_to_dict` for a :class:`RunConfig`.

    Raises:
        TwotowerError: when a field is unknown (a config written by another version).
    """
    def build(cls, values):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise TwotowerError(
                f"config has unknown {cls.__name__} fields {sorted(unknown)}; it was "
                "written by another version of twotower: use a new --out directory"
            )
        if not isinstance(values, dict):
            raise TwotowerError(f"config's {cls.__name__} is a "
                                f"{type(values).__name__}, not an object; use a "
                                "config.json written by twotower")
        values = dict(values)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    return RunConfig(
        model=build(ModelConfig, d.get("model", {})),
        data=build(DataConfig, d.get("data", {})),
        train=build(TrainConfig, d.get("train", {})),
        readout=build(TrainConfig, d.get("readout", {})),
        **{k: v for k, v in d.items()
           if k not in ("model", "data", "train", "readout")},
    )
