"""Shared fixtures: a private cache, tiny configs, synthetic windows, a tiny corpus.

Everything here is small enough to run on 2 CPU cores in fp32: the tests never use
autocast (this CPU has no native bf16, so bf16 would be ~1000x slower).
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from twotower.config import ModelConfig, TrainConfig
from twotower.models.tower_lm import TowerLM
from twotower.data.objectives import Objective
from twotower.data.tokenizer import SpecialIds
from twotower.training import runtime

# The special ids of a tokenizer trained by twotower.data.tokenizer.train_wordpiece.
SPECIAL = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: end-to-end runs that take seconds (still run by default)")
    config.addinivalue_line(
        "markers", "gpu: needs a CUDA GPU (skipped without one; run by python -m "
        "twotower gpucheck)")


@pytest.fixture(scope="session", autouse=True)
def private_twotower_cache(tmp_path_factory):
    """No test may read or write ~/.cache/twotower."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TWOTOWER_CACHE", str(tmp_path_factory.mktemp("twotower-cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine
    OpenMP threads spinning against other processes make a step ~20x slower. A run
    made in this process (default ``threads=0``) computes with one thread too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    patch = pytest.MonkeyPatch()
    patch.setattr(runtime, "machine_threads", lambda: 1)
    yield
    patch.undo()
    torch.set_num_threads(before)


@pytest.fixture
def special() -> SpecialIds:
    return SPECIAL


# --- tiny configurations --------------------------------------------------------------

def _tiny_config(family: str = "causal", **overrides) -> ModelConfig:
    base = dict(family=family, n_layers=2, d_model=16, n_heads=2, d_ff=32,
                vocab_size=64, max_len=16, dropout=0.0)
    if family == "bilm":
        base.update(d_ff=24)
    base.update(overrides)
    return ModelConfig(**base).validate()


def _fp32_train_config(**overrides) -> TrainConfig:
    base = dict(steps=10, batch_size=4, lr=3e-3, warmup_steps=2, precision="fp32",
                device="cpu", eval_every=0, eval_batches=2, checkpoint_every=0,
                log_every=1, keep_checkpoints=2, seed=0)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture
def tiny_config():
    """Factory: ``tiny_config(family, **overrides)`` -> a small ModelConfig."""
    return _tiny_config


@pytest.fixture
def train_config():
    """Factory: ``train_config(**overrides)`` -> a TrainConfig for CPU in fp32."""
    return _fp32_train_config


# --- synthetic windows ----------------------------------------------------------------

def _synthetic_windows(n: int, T: int, n_tokens: int, seed: int = 0,
                       pad: bool = True, special: SpecialIds = SPECIAL) -> np.ndarray:
    """``(n, T)`` int64 windows like ``data.make_windows``: [CLS] first, PAD at the end.

    Real tokens are drawn from the non-special ids below ``n_tokens``, with an
    occasional [SEP]; with ``pad`` about half of the rows end in padding.
    """
    rng = np.random.default_rng(seed)
    ordinary = np.setdiff1d(np.arange(n_tokens), special.all)
    windows = rng.choice(ordinary, size=(n, T)).astype(np.int64)
    windows[rng.random((n, T)) < 0.08] = special.sep
    windows[:, 0] = special.cls
    if pad:
        for row in np.flatnonzero(rng.random(n) < 0.5):
            length = int(rng.integers(max(2, T // 2), T))
            windows[row, length:] = special.pad
    return windows


@pytest.fixture
def synthetic_windows():
    """Factory: ``synthetic_windows(n, T, n_tokens, seed=0, pad=True)``."""
    return _synthetic_windows


def _objective(family: str, n_tokens: int = 60, special: SpecialIds = SPECIAL,
               mlm_probability: float = 0.15) -> Objective:
    return Objective(family=family, special_ids=special.all, pad_id=special.pad,
                     cls_id=special.cls, mask_id=special.mask, n_tokens=n_tokens,
                     mlm_probability=mlm_probability)


@pytest.fixture
def make_objective():
    """Factory: ``make_objective(family, n_tokens=60, special=SPECIAL)``."""
    return _objective


@dataclass(frozen=True)
class SyntheticData:
    """The parts of :class:`twotower.data.windows.PreparedData` that training reads."""

    special: SpecialIds
    vocab_size: int  # the model's V (padded)
    n_tokens: int  # the "tokenizer's" real size; ids >= n_tokens never occur
    train: np.ndarray
    val: np.ndarray

    def objective(self, family: str) -> Objective:
        return _objective(family, self.n_tokens, self.special)


@pytest.fixture
def synthetic_data() -> SyntheticData:
    """Tiny train/val windows of length 12 over 60 real ids (V = 64)."""
    return SyntheticData(special=SPECIAL, vocab_size=64, n_tokens=60,
                         train=_synthetic_windows(32, 12, 60, seed=1),
                         val=_synthetic_windows(8, 12, 60, seed=2))


# --- models ---------------------------------------------------------------------------

def _randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Give every parameter (norms and biases too) random values, so no symmetry hides
    a bug (fresh LayerNorms are all ones and zeros, fresh biases all zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            is_norm_scale = "norm" in name and name.endswith("weight")
            p.copy_(1.0 + noise if is_norm_scale else noise)


@pytest.fixture
def randomise():
    """``randomise(module, seed=0, scale=0.3)``: random values for every parameter."""
    return _randomise


def _swapped_tower_state(model: TowerLM) -> dict[str, torch.Tensor]:
    """The model's state_dict with towers 0 and 1 exchanged.

    Stacked parameters (the per-tower input projection and the transformer towers) are
    flipped along their leading tower axis; the LSTM towers are lists of modules, so
    ``fwd.0`` and ``fwd.1`` (and ``bwd``) trade places. Shared parts stay put.
    """
    assert model.n_towers == 2
    state = model.state_dict()
    out = {}
    for name, tensor in state.items():
        parts = name.split(".")
        if parts[0] == "tower_in" or (parts[0] == "towers" and parts[1] == "blocks"):
            out[name] = tensor.flip(0).clone()
        elif parts[0] == "towers" and parts[1] in ("fwd", "bwd"):
            parts[2] = str(1 - int(parts[2]))
            out[".".join(parts)] = tensor.clone()
        else:
            out[name] = tensor.clone()
    return out


@pytest.fixture
def swapped_tower_state():
    """``swapped_tower_state(model)``: a state_dict with the two towers exchanged."""
    return _swapped_tower_state


# --- a tiny text corpus ---------------------------------------------------------------

_SUBJECTS = ["the old miller", "a young sailor", "the river", "her brother", "the king",
             "a small village", "the northern army", "my neighbour", "the blue bird",
             "his daughter", "the council", "an engineer"]
_VERBS = ["crossed", "built", "watched", "remembered", "sold", "painted", "followed",
          "defended", "described", "visited", "repaired", "found"]
_OBJECTS = ["the bridge", "a wooden boat", "the harbour", "an ancient tower",
            "the market", "a letter", "the long road", "the mountain", "a new school",
            "the garden", "the stone wall", "a quiet church"]
_TAILS = ["in the spring of 1820", "before the storm", "after the war", "at dawn",
          "with great care", "for the first time", "during the festival",
          "near the old mill", "without a word", "in the evening"]


def write_tiny_corpus(path: Path, n_articles: int = 6, paragraphs: int = 5,
                      seed: int = 0) -> Path:
    """A WikiText-shaped .txt: `` = Title = `` lines, each article a few paragraphs of
    generated English-like sentences (about 30 paragraphs in all)."""
    rng = random.Random(seed)
    lines = []
    for a in range(n_articles):
        topic = rng.choice(_OBJECTS).split(" ", 1)[1]  # "the bridge" -> "bridge"
        lines += ["", f" = Article {a + 1} about the {topic} = ", ""]
        for _ in range(paragraphs):
            sentences = []
            for _ in range(rng.randint(4, 7)):
                s = (f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} "
                     f"{rng.choice(_OBJECTS)} {rng.choice(_TAILS)}")
                sentences.append(s[0].upper() + s[1:] + ".")
            lines += [" " + " ".join(sentences) + " ", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def corpus_writer():
    """Factory: ``corpus_writer(path, n_articles=6, paragraphs=5, seed=0)`` writes a
    WikiText-shaped corpus of any size and returns its path."""
    return write_tiny_corpus


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A ~30-paragraph local corpus file with six articles."""
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus") / "tiny.txt")


# --- processes ------------------------------------------------------------------------

def start_and_kill_when(cmd: list[str], env: dict, ready, timeout: float = 300.0
                        ) -> None:
    """Start ``cmd``, wait until ``ready()`` is true, then kill it with SIGKILL."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "run never reached the kill point"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def kill_when():
    """Factory: ``kill_when(cmd, env, ready)`` starts a process and SIGKILLs it as soon
    as ``ready()`` returns true (e.g. once a checkpoint file exists)."""
    return start_and_kill_when


# --- network --------------------------------------------------------------------------

def _refuse(*args, **kwargs):
    raise OSError("network disabled by the test")


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection fails, as on a machine that is offline."""
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Bit-identical state dicts."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def weights_equal():
    """``weights_equal(module_a, module_b)``: bit-identical state dicts."""
    return same_weights



class LoopbackServer:
    """An HTTP server on 127.0.0.1 in a thread: serves ``files`` (URL path -> bytes),
    answers 404 otherwise, and records every path asked for."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the stdlib's name)
                server.requests.append(self.path)
                body = server.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def loopback():
    """A :class:`LoopbackServer`: the network as the code meets it, on this machine."""
    server = LoopbackServer()
    yield server
    server.close()


@pytest.fixture
def hub_online(loopback, monkeypatch):
    """The Hugging Face Hub 'answers': HF_ENDPOINT points at a loopback server, so the
    reachability probe connects for real. What the Hub serves is up to the test (it
    replaces ``datasets.load_dataset``, the library call that would download)."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", loopback.url)
    return loopback


@pytest.fixture
def hub_datasets(hub_online, monkeypatch):
    """``serve(tables)``: the Hub answers, and ``datasets.load_dataset(name)`` returns
    ``tables[name]`` for the names given (local files still go through ``datasets``).
    Returns the list of ``(name, config)`` the code asked the Hub for."""
    import datasets

    real, calls = datasets.load_dataset, []

    def serve(tables: dict) -> list:
        def load_dataset(path, name=None, **kwargs):
            if path not in tables:
                return real(path, name, **kwargs)
            calls.append((path, name))
            return tables[path]

        monkeypatch.setattr(datasets, "load_dataset", load_dataset)
        return calls

    return serve
