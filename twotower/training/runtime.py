"""Where, in what precision and with how many threads to run: device choice,
autocast, the CPU thread count, seeding.

Introduced in chapter 6 (*Training on a GPU (or not)*); why a run fixes its thread
count: ``book/when_things_go_wrong.md``, *Same command, same bits*.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from twotower.config import PRECISIONS
from twotower.errors import TwotowerError
from twotower.training import checkpoint as ckpt

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA if present, else Apple MPS, else CPU; other names are
    checked."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise TwotowerError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N "
                            "or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TwotowerError("device cuda asked for but no CUDA GPU is visible; use "
                            "--device auto or cpu")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = plain fp32).

    ``"auto"``: bf16 on CPUs with native bf16 matmuls (AVX512-BF16 or AMX; on other
    CPUs bf16 is emulated and hundreds of times slower than fp32, so fp32 there) and on
    GPUs that support it, fp16 (with a grad scaler) on older GPUs, fp32 on MPS.
    """
    if precision not in PRECISIONS:
        raise TwotowerError(f"unknown precision {precision!r}; choose one of "
                            f"{', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if device.type == "cuda":
        # Without including_emulation=False a T4/V100 reports bf16 (emulated, slow).
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    return None


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX).

    Read from the kernel's CPU flags; ``TWOTOWER_CPU_BF16=0/1`` overrides.
    """
    override = os.environ.get("TWOTOWER_CPU_BF16")
    if override in ("0", "1"):
        return override == "1"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a do-nothing context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def sum_dtype(device: torch.device) -> torch.dtype:
    """Sums of losses kept on the device: fp64 (as Python floats), fp32 on MPS (which
    has no fp64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def machine_threads() -> int:
    """The CPU threads a run computes with unless ``--threads`` says otherwise: the
    physical cores this process may run on, shared among the processes that
    ``torchrun`` started on this machine.

    Read from the machine, never from ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``: the
    thread count decides how a sum is split up, so it changes the last bits of every
    result (``book/when_things_go_wrong.md``, *Same command, same bits*).
    """
    cpus = (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity")
            else set(range(os.cpu_count() or 1)))
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")  # torchrun's processes here
    share = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, _physical_cores(cpus) // share)


def _physical_cores(cpus: set[int]) -> int:
    """How many distinct cores the logical CPUs ``cpus`` sit on (two hardware threads
    of a core share its arithmetic units; torch's own default counts cores too)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            blocks = f.read().strip().split("\n\n")
    except OSError:
        return len(cpus)
    cores = set()
    for block in blocks:
        info = {key.strip(): value.strip() for key, _, value in
                (line.partition(":") for line in block.splitlines())}
        cpu = info.get("processor", "")
        if cpu.isdigit() and int(cpu) in cpus:
            cores.add((info.get("physical id"), info.get("core id", cpu)))
    return len(cores) or len(cpus)


def run_threads(threads: int, out: str | Path) -> int:
    """The thread count of the run in folder ``out``: ``threads`` (its config's), else
    the count that its checkpoints were computed with (a resume on a machine with other
    cores stays bit for bit), else :func:`machine_threads`."""
    return threads or checkpoint_threads(out) or machine_threads()


@contextlib.contextmanager
def fixed_threads(threads: int) -> Iterator[int]:
    """Compute with ``threads`` CPU threads inside the block (torch's pool, which sets
    OpenMP's and MKL's with MKL's dynamic choice off; oneDNN follows OpenMP), then go
    back to the count before."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def computing_with_run_threads(run: Callable) -> Callable:
    """Decorate ``run(cfg, out, ...)`` (a whole run: training and scoring) to compute
    with the run's own thread count (:func:`run_threads`), whatever the process used
    before and goes back to after."""
    @functools.wraps(run)
    def with_run_threads(cfg, out, *args, **kwargs):
        with fixed_threads(run_threads(cfg.threads, out)):
            return run(cfg, out, *args, **kwargs)
    return with_run_threads


def checkpoint_threads(out: str | Path) -> int | None:
    """The CPU threads the newest checkpoint of the first phase found in the run
    folder ``out`` was computed with (None: no checkpoint records it)."""
    for pointer in sorted(Path(out).glob(f"*/{ckpt.LATEST}")):
        last = ckpt.latest_checkpoint(pointer.parent)
        try:
            threads = ckpt.load_meta(last).get("threads") if last else None
        except (TwotowerError, AttributeError):  # the phase's resume names the damage
            continue
        if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0:
            return threads
    return None


def warn_of_other_threads(checkpoint, threads, device: torch.device) -> None:
    """Warn when a CPU run resumes from a ``checkpoint`` computed with another count of
    ``threads``: it goes on, but its sums are split differently from then on."""
    now = torch.get_num_threads()
    if device.type == "cpu" and isinstance(threads, int) and threads != now:
        log.warning("%s was computed with %d CPU threads, this process uses %d: the "
                    "run goes on, but not bit for bit as an uninterrupted one would",
                    checkpoint, threads, now)


def reproducibility(device: str | torch.device = "auto") -> dict:
    """What decides the last bits of a run's numbers besides its config, as
    ``results.json`` records it: the CPU threads in use, torch's version, the CPU and
    the instruction set torch's kernels were chosen for, whether deterministic
    algorithms were on, and the device."""
    device = resolve_device(device)
    record = {"threads": torch.get_num_threads(), "torch": torch.__version__,
              "cpu": _cpu_name(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
              "device": device.type}
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next((line for line in f if line.startswith("model name")), "")
    except OSError:
        line = ""
    return line.partition(":")[2].strip() or platform.processor() or platform.machine()
