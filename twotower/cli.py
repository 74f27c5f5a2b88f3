"""Command line: ``python -m twotower run|presets|data|bench|gpucheck ...``.

Introduced in chapter 6 (*Training on a GPU (or not)*), which runs a whole replication
with ``python -m twotower run``.

Every mistake a user can make ends in one line on stderr, ``error: ...`` naming the fix,
and exit status 2; never a traceback from inside the library.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import sys
import time

import twotower as tt
from twotower.config import (CONTROLS, FAMILIES, PRECISIONS, PRESETS, RunConfig,
                             get_preset)
from twotower.errors import TwotowerError


def _number(kind: type, low: float, high: float = float("inf"),
            low_open: bool = False):
    """An argparse ``type`` accepting ``kind`` values in ``[low, high)`` (``(low,
    high)`` with ``low_open``): finite, never NaN, with a one-line reason otherwise."""
    noun = "an integer" if kind is int else "a finite number"
    lower = f"> {low}" if low_open else f">= {low}"
    need = f"{noun} {lower}" if high == float("inf") else \
        f"in {'(' if low_open else '['}{low}, {high})"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        inside = (value > low if low_open else value >= low) and value < high
        if not inside:  # NaN compares False: refused too
            raise argparse.ArgumentTypeError(f"must be {need}, got {text}")
        return value
    return parse


def _positive(kind=int):
    return _number(kind, 0, low_open=True)


_non_negative = _number(int, 0)
_fraction = _number(float, 0.0, 1.0)


def _path(text: str) -> str:
    """An argparse ``type`` for a path: anything but an empty or blank one (``""`` is
    the current folder: a run would land in it)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got an empty one "
                                         f"({text!r})")
    return text


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block)."""

    def error(self, message: str):
        """Print ``error: <prog>: <message>`` on one line and exit with status 2."""
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m twotower", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=OneLineParser)

    run = sub.add_parser("run", help="phase 1 -> readouts -> preference (resumable)")
    run.add_argument("--preset", default="small", choices=list(PRESETS))
    run.add_argument("--family", default="causal", choices=FAMILIES)
    run.add_argument("--seed", type=_non_negative, default=0)
    run.add_argument("--out", required=True, type=_path,
                     help="run directory (rerun to resume)")
    run.add_argument("--steps", type=_positive(),
                     help="phase 1 steps (preset's default)")
    run.add_argument("--readout-steps", type=_positive(), help="phase 2/3 steps")
    run.add_argument("--batch-size", type=_positive(), help="windows per step")
    run.add_argument("--lr", type=_positive(float), help="peak learning rate")
    run.add_argument("--dropout", type=_fraction,
                     help="dropout of the towers, in [0, 1) (preset's default)")
    run.add_argument("--checkpoint-every", type=_non_negative,
                     help="steps between checkpoints (0: only at the end)")
    run.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    run.add_argument("--precision", choices=PRECISIONS)
    run.add_argument("--corpus", type=_path,
                     help="wikitext-2, wikitext-103 or a path to .txt files")
    run.add_argument("--source", choices=("auto", "bundled", "online", "hub"),
                     help="bundled copy, the Hub (online; hub means the same), or auto")
    run.add_argument("--baseline", action="store_true",
                     help="also train the parameter-matched single-tower model")
    run.add_argument("--control", choices=[c for c in CONTROLS if c],
                     help="train a control of chapter 9 instead of the two-tower model")
    run.add_argument("--threads", type=_positive(),
                     help="CPU threads of the arithmetic (default: this machine's "
                     "cores, or as many as a resumed run's checkpoints used; "
                     "OMP_NUM_THREADS is not used, so that the same command gives the "
                     "same bits)")
    run.add_argument("--compile", action="store_true", help="use torch.compile")
    run.add_argument("--detect-anomaly", action="store_true",
                     help="torch anomaly detection (slow; find where NaNs start)")
    run.add_argument("--cache-dir", type=_path, help="tokenizer and token cache "
                     "(default $TWOTOWER_CACHE or ~/.cache/twotower)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    sub.add_parser("presets", help="list the presets and their sizes")
    sub.add_parser("data", help="list the bundled corpora, check them, and say where "
                   "each comes from online")
    sub.add_parser("bench", help="speed figures (see python -m twotower bench --help)")
    sub.add_parser("gpucheck", help="CUDA tests, speed and one colab-sized run on a "
                   "GPU, as one JSON report (see python -m twotower gpucheck --help)")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The preset for ``args.family`` with the command-line overrides applied."""
    cfg = get_preset(args.preset, args.family).with_seed(args.seed)
    train_over = {k: v for k, v in {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "checkpoint_every": args.checkpoint_every,
        "device": args.device, "precision": args.precision, "compile": args.compile,
        "detect_anomaly": args.detect_anomaly}.items()
                  if v is not None and v is not False}
    readout_over = {k: v for k, v in train_over.items() if k not in ("steps", "lr")}
    if args.readout_steps:
        readout_over["steps"] = args.readout_steps
    data_over = {k: v for k, v in {"corpus": args.corpus, "source": args.source}.items()
                 if v is not None}
    for part, over in (("train", train_over), ("readout", readout_over)):
        new = dataclasses.replace(getattr(cfg, part), **over)
        if new.warmup_steps >= new.steps:  # a short override keeps a sane schedule
            new = dataclasses.replace(new, warmup_steps=max(1, new.steps // 10))
        cfg = dataclasses.replace(cfg, **{part: new})
    if args.dropout is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model,
                                                                 dropout=args.dropout))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data_over),
                              baseline=args.baseline or cfg.baseline,
                              control=args.control or cfg.control,
                              threads=args.threads or cfg.threads)
    return cfg.validate()


def _note_unused_thread_settings(cfg: RunConfig) -> None:
    """One line when the environment asks for a thread count that the run will not
    use (torchrun's own OMP_NUM_THREADS=1 goes without saying)."""
    asked = [f"{name}={os.environ[name]}" for name in ("OMP_NUM_THREADS",
                                                       "MKL_NUM_THREADS")
             if os.environ.get(name)]
    if asked and not cfg.threads and "LOCAL_WORLD_SIZE" not in os.environ:
        logging.info("%s not used: a run computes with --threads N (default: this "
                     "machine's cores), so that the same command gives the same bits",
                     " and ".join(asked))


def _print_data() -> None:
    for name, corpus in tt.sources.CORPORA.items():
        tt.sources.check(name)  # one line naming a damaged file, before any output
        files = tt.sources.checksums(name)
        folder = tt.sources.data_dir() / name
        size = sum((folder / file).stat().st_size for file in files)
        print(f"{name}: {corpus.title}\n  {len(files)} files, {size / 1e6:.2f} MB "
              f"compressed, checked against SHA256SUMS; license: {corpus.license}\n"
              f"  online: {corpus.official}")
    print(f"in {tt.sources.data_dir()}; each folder's LICENSE.md has the attribution")


def _print_presets() -> None:
    print(f"{'preset':<12} {'family':<7} {'layers':>6} {'d_model':>7} {'params':>12} "
          f"{'steps':>7} {'batch':>5} {'ctx':>4}")
    for name, by_family in PRESETS.items():
        for family, cfg in by_family.items():
            m, t = cfg.model, cfg.train
            print(f"{name:<12} {family:<7} {m.n_layers:>6} {m.d_model:>7} "
                  f"{tt.count_parameters(m, 2):>12,} {t.steps:>7} {t.batch_size:>5} "
                  f"{m.max_len:>4}")


def _file_system_advice(err: OSError) -> str:
    """One line for an operating-system error: what failed, where, and what to do."""
    where = f" at {err.filename}" if err.filename else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free disk space"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = ("choose a folder you can write to (--out, --cache-dir) or fix its "
               "permissions")
    else:
        fix = "check the paths given to --out, --corpus and --cache-dir"
    return (f"file system error{where} ({err.strerror or err}); {fix}, then rerun the "
            "same command: it resumes from the last checkpoint")


def _is_out_of_memory(err: BaseException) -> bool:
    """A failed allocation: Python's MemoryError, CUDA's OutOfMemoryError, or the CPU
    allocator's RuntimeError."""
    text = str(err).lower()
    return isinstance(err, MemoryError) or "out of memory" in text or \
        "can't allocate memory" in text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser: python -m twotower bench --help
        return tt.bench.main(argv[1:])
    if argv[:1] == ["gpucheck"]:  # its own parser too
        return tt.gpucheck.main(argv[1:])
    args = build_parser().parse_args(argv)
    # Under torchrun only rank 0 reports; the others print warnings and errors only.
    main_rank = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING,
                        format="%(message)s")
    try:
        if args.command == "presets":
            _print_presets()
            return 0
        if args.command == "data":
            _print_data()
            return 0
        cfg = config_from_args(args)
        _note_unused_thread_settings(cfg)
        if not tt.distributed.init_from_env().is_main:
            tt.store.train_run(cfg, args.out, cache_dir=args.cache_dir, progress=False)
            return 0
        started = time.perf_counter()
        results = tt.store.train_run(cfg, args.out, cache_dir=args.cache_dir,
                                  progress=not args.quiet)
        scores, pref = results["scores"], results["preference"]
        print(f"done in {time.perf_counter() - started:.1f}s -> {args.out}")
        print(f"joint ppl {scores['joint_ppl']:.1f}, "
              f"readout A {scores['readout_a_ppl']:.1f},"
              f" readout B {scores['readout_b_ppl']:.1f}; pref over "
              f"{pref['n_tokens']} tokens: sd {pref.get('sd', float('nan')):.3f}, "
              f"split-half r {results['split_half']['r']:.2f}")
        print(json.dumps({k: round(v, 1) for k, v in results["seconds"].items()}))
        return 0
    except TwotowerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        if not _is_out_of_memory(err):
            raise
        what = (str(err).splitlines() or [type(err).__name__])[0][:100]
        print(f"error: out of memory ({what}); lower "
              "--batch-size or use a smaller --preset, then rerun the same command: "
              "it resumes from the last checkpoint", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a folder without write permission...
        print(f"error: {_file_system_advice(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint",
              file=sys.stderr)
        return 130
