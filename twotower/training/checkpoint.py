"""Checkpoints that survive crashes and refuse files that are not what they claim.

Introduced in chapter 6 (*Training on a GPU (or not)*).

A checkpoint is a directory ``step-000123/`` holding ``model.safetensors`` (weights: no
code can hide in them), ``state.pt`` (optimizer, schedule and RNG states: tensors and
numbers only, read with ``torch.load(weights_only=True)``) and ``meta.json``. It is
written under a temporary name, flushed to disk, then renamed, and only then does the
``latest`` pointer move (itself replaced atomically), so a crash at any moment leaves
the previous checkpoint intact. The temporary name holds the writer's process id, so
two processes saving the same step never share it. A full disk ends in one line naming
the folder and the space the checkpoint needs; a ``state.pt`` that is no checkpoint at
all (damaged, random bytes) is told apart from one that carries code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import pickletools
import shutil
import stat
import time
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from twotower import atomic
from twotower.errors import TwotowerError

WEIGHTS, STATE, META, LATEST = "model.safetensors", "state.pt", "meta.json", "latest"


def save_checkpoint(directory: Path, step: int, module: nn.Module, state: dict,
                    meta: dict, keep: int = 2) -> Path:
    """Write checkpoint ``directory/step-{step}`` atomically and keep the newest
    ``keep``.

    Args:
        directory: the phase's checkpoint folder.
        step: optimiser steps done.
        module: whose ``state_dict`` goes to safetensors (tied weights stored once).
        state: optimizer/scheduler/RNG states (tensors, numbers, lists, dicts only).
        meta: JSON-able description (config, phase, step).

    Raises:
        TwotowerError: when the checkpoint cannot be written (a full disk, no
            permission); the half-written copy is removed and every earlier checkpoint
            is left as it was.
    """
    directory = Path(directory)
    final = directory / f"step-{step:07d}"
    tmp = directory / f".tmp-step-{step:07d}.{os.getpid()}"  # this process's own
    weights = _weights(module)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        _write_files(tmp, weights, state, {**meta, "step": step})
        _fault_injection_pause(tmp, step)
        # A rerun of a saved step: move the old copy aside (a folder cannot be renamed
        # onto a non-empty one) and delete it only once the new one is in place.
        old = directory / f".old-step-{step:07d}"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        atomic.fsync_dir(directory)
        atomic.write_text(directory / LATEST, final.name)
    except (OSError, SafetensorError, RuntimeError) as err:
        # A full disk reaches us as OSError (Python), SafetensorError (safetensors'
        # writer) or RuntimeError (torch.save's zip writer).
        shutil.rmtree(tmp, ignore_errors=True)
        raise _save_failed(err, final, _nbytes(weights) + _nbytes(state)) from None
    # Only now that the new checkpoint is in place: old ones beyond ``keep``, copies
    # set aside and the leftovers of saves a crash interrupted.
    stale = sorted(directory.glob("step-*"))[:-keep] if keep > 0 else []
    for path in (*stale, *directory.glob(".old-step-*"),
                 *filter(_abandoned, directory.glob(".tmp-step-*"))):
        shutil.rmtree(path, ignore_errors=True)
    return final


def _write_files(tmp: Path, weights: dict, state: dict, meta: dict) -> None:
    """The three files of a checkpoint in the new folder ``tmp``, flushed to disk."""
    tmp.mkdir()
    save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
    with open(tmp / STATE, "wb") as f:  # a full disk raises OSError(ENOSPC) here,
        torch.save(state, f)  # where torch's own file writer hides the errno
    (tmp / META).write_text(json.dumps(meta, indent=1))
    # safetensors writes through a private temporary file (0o600): the weights get the
    # mode any new file gets here (the umask's), which meta.json has.
    os.chmod(tmp / WEIGHTS, stat.S_IMODE((tmp / META).stat().st_mode))
    for name in (WEIGHTS, STATE, META):
        atomic.fsync_file(tmp / name)
    atomic.fsync_dir(tmp)


def _save_failed(err: BaseException, final: Path, needed: int) -> TwotowerError:
    """The one line for a save of ``final`` (``needed`` bytes) that ``err`` ended:
    a full disk in plain words, anything else with its reason."""
    directory = final.parent
    good = latest_checkpoint(directory) or "none yet"
    if atomic.out_of_space(err, directory, needed):
        return TwotowerError(
            f"{atomic.no_space(f'checkpoint {final}', directory, needed)}; last good "
            f"checkpoint: {good}. Free disk space, then rerun the same command to "
            "resume")
    reason = getattr(err, "strerror", None) or str(err).splitlines()[0][:120]
    return TwotowerError(
        f"could not write checkpoint {final} ({reason}); last good checkpoint: "
        f"{good}. Free disk space or fix the folder's permissions, then rerun the same "
        "command to resume")


def _abandoned(tmp: Path) -> bool:
    """Whether a temporary checkpoint folder was left by a save that an error or a
    crash ended (this process's, or one whose process is gone), not one that another
    process is writing now."""
    pid = tmp.name.rsplit(".", 1)[-1]
    if not pid.isdigit():
        return True
    return int(pid) == os.getpid() or not atomic.pid_alive(int(pid))


def _nbytes(obj) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts, lists, tuples)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _fault_injection_pause(tmp: Path, step: int) -> None:
    """For the crash tests: with ``TWOTOWER_FAULT_PAUSE_SAVE=<step>`` set, stop in the
    middle of that step's save (files written, not yet renamed) and wait to be
    killed."""
    if os.environ.get("TWOTOWER_FAULT_PAUSE_SAVE") == str(step):
        (tmp.parent / "PAUSED-IN-SAVE").write_text(str(step))
        while True:
            time.sleep(0.1)


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint in ``directory``, or None."""
    directory = Path(directory)
    pointer = directory / LATEST
    if pointer.exists():
        # A damaged pointer (any bytes) falls back to scanning, never to an error.
        name = pointer.read_bytes().decode("utf-8", errors="replace").strip()
        candidate = directory / name
        if name.startswith("step-") and "/" not in name and (candidate / META).exists():
            return candidate
    # Folders are renamed into place whole, so every step-* is complete. A .old-step-*
    # is a complete copy set aside while the same step was saved again (a crash at that
    # moment leaves it the only copy of its step).
    complete = [p for p in (*directory.glob("step-*"), *directory.glob(".old-step-*"))
                if (p / META).exists()]
    if not complete:
        return None
    return max(complete, key=lambda p: (p.name.split("step-")[-1], p.name[0] != "."))


def load_weights(path: Path, module: nn.Module) -> None:
    """Load ``path/model.safetensors`` (or a ``.safetensors`` file) into ``module``.

    Every name and shape is checked against the module BEFORE anything is copied, so a
    refused file leaves the module untouched.

    Raises:
        TwotowerError: when the file is missing, truncated or damaged, or its tensors
            do not match the module (a checkpoint made with another config).
    """
    path = Path(path)
    file = path / WEIGHTS if path.is_dir() else path
    if not file.exists():
        raise TwotowerError(f"no weights at {file}; point at a checkpoint directory "
                            "made by twotower")
    try:
        with safe_open(str(file), framework="pt") as f:
            stored = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise TwotowerError(f"cannot read {file} ({str(err).splitlines()[0]}); the "
                            "file is truncated or not safetensors: use an earlier "
                            "checkpoint") from None
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    # Tied tensors are stored once (safetensors' save_model): an alias may be absent.
    aliases = _aliases(module)
    missing = sorted(n for n in expected if n not in stored and
                     not any(a in stored for a in aliases.get(n, ())))
    unexpected = sorted(n for n in stored if n not in expected)
    wrong = sorted(n for n in stored if n in expected and stored[n] != expected[n])
    if missing or unexpected or wrong:
        detail = (f"{wrong[0]} is {stored[wrong[0]]} in the file but "
                  f"{expected[wrong[0]]} here" if wrong else
                  f"missing {len(missing)} tensors e.g. {missing[:2]}, unexpected "
                  f"{len(unexpected)} e.g. {unexpected[:2]}")
        raise TwotowerError(f"{file} does not fit this model ({detail}); it was saved "
                            "with another config: load it with its own config.json")
    try:
        weights = load_file(str(file), device="cpu")
        for name in expected:  # a tied tensor stored once under another name
            if name not in weights:
                weights[name] = next(weights[a] for a in aliases[name] if a in weights)
        module.load_state_dict(weights, strict=True)  # copied into the module's tensors
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise TwotowerError(f"cannot read {file} ({str(err).splitlines()[0][:160]}); "
                            "it is truncated or damaged: use an earlier checkpoint"
                            ) from None


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as CPU copies, each tied tensor once (under its first name).

    Not safetensors' ``save_model``: on a GPU, cuDNN keeps an LSTM's weights as views
    of one flat buffer, which its shared-tensor check refuses to save (and its
    ``load_model`` to load).
    """
    aliases, out = _aliases(module), {}
    for name, t in module.state_dict().items():
        if not any(a in out for a in aliases.get(name, ())):
            out[name] = t.detach().to("cpu", copy=True).contiguous()
    return out


def _aliases(module: nn.Module) -> dict[str, tuple[str, ...]]:
    """For every state-dict name, the other names that share its storage (tied)."""
    by_storage: dict[tuple, list[str]] = {}
    for name, t in module.state_dict(keep_vars=True).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        by_storage.setdefault(key, []).append(name)
    return {n: tuple(o for o in names if o != n)
            for names in by_storage.values() for n in names}


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 of ``module``'s weights: each state-dict tensor's name, dtype, shape and
    bytes, in name order.

    The same on every device, and the same for a module just trained and for one that
    :func:`load_weights` filled from its checkpoint; a run records it for the weights
    its scores came from (``book/when_things_go_wrong.md``, *A damaged run folder*).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def load_state(path: Path) -> dict:
    """``state.pt`` of a checkpoint, refusing anything that would run code.

    Raises:
        TwotowerError: for a pickle payload (code), a truncated or damaged file.
    """
    file = Path(path) / STATE
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _holds_code(file):
            raise TwotowerError(f"cannot read {file}: it is damaged or not a "
                                "checkpoint file (no zip archive or pickle that "
                                "torch.save writes is in it); delete its folder to "
                                "resume from an earlier checkpoint") from None
        raise TwotowerError(f"refusing to load {file}: it holds Python objects that "
                            f"would run code ({str(err).splitlines()[0][:120]}); only "
                            "load checkpoints made by twotower") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise TwotowerError(f"cannot read {file} ({str(err).splitlines()[0][:120]}); "
                            "it is truncated or damaged: use an earlier checkpoint"
                            ) from None


# Opcodes that import or call something: what makes a pickle run code when loaded.
_CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ",
                           "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"})


def _holds_code(file: Path) -> bool:
    """Whether ``file`` holds a pickle that imports or calls something (read with
    :mod:`pickletools`, which runs nothing): torch's zip archive around
    ``data.pkl``, or the pickles of torch's older format one after the other. Random
    bytes or a damaged file are no pickle at all."""
    try:
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as archive:
                return any(_pickles_call(archive.read(name))
                           for name in archive.namelist() if name.endswith("data.pkl"))
        with open(file, "rb") as f:
            return _pickles_call(f.read(_SCANNED))
    except (OSError, zipfile.BadZipFile):
        return False


_SCANNED = 1 << 26  # the pickles of torch's older format come first: 64 MB is plenty


def _pickles_call(data: bytes) -> bool:
    """Whether one of the pickles at the start of ``data`` has a code opcode; the scan
    stops at the first bytes that are not a pickle. (In memory: a length field in
    random bytes cannot make a read allocate gigabytes.)"""
    stream = io.BytesIO(data)
    while True:
        try:
            ops = {op.name for op, _, _ in pickletools.genops(stream)}
        except Exception:  # noqa: BLE001 - any parse failure: not a pickle (any more)
            return False
        if _CODE_OPCODES & ops:
            return True


def load_meta(path: Path) -> dict:
    """``meta.json`` of a checkpoint."""
    return atomic.read_json(Path(path) / META, "use an earlier checkpoint")


def rng_state() -> dict:
    """This process's random state (CPU, and every GPU's when there is one)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Take back a random state that :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
