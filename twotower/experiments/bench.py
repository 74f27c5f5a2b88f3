"""``python -m twotower bench``: speed of training, readouts and scoring, as figures.

Introduced in chapter 6 (*Training on a GPU (or not)*).

Prints, per family at a preset: training tokens/s, analytic FLOPs per token, achieved
FLOP/s, MFU against the matmul peak measured in the same run (fp32 and bf16), and peak
memory; the same for readout training and for scoring; the vectorised preference against
a Python loop of the authors' per-token averaging; and, when ``transformers`` is
installed, a two-tower built the authors' way (two ``GPT2LMHeadModel`` towers sharing
the embedding, each computing its own full-vocabulary loss that is then discarded, and a
fused head on their last hidden states) at the same size. Each case runs in its own
subprocess so its peak memory is its own. Speed is a benchmark, never a timed test.
``--corpus-memory MB`` instead prints the peak memory and time of preparing a corpus
of one MB-megabyte paragraph and 60 short ones (``book/when_things_go_wrong.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from twotower.analysis.preference import naive_token_preference, token_preference
from twotower.config import FAMILIES, RunConfig, get_preset
from twotower.data.objectives import Objective, step_generator
from twotower.data.scores import TokenScores
from twotower.data.synthetic import CLS_ID, SPECIAL_IDS, PlantedLanguage
from twotower.data.windows import prepare_data
from twotower.errors import TwotowerError
from twotower.experiments.planted import PLANTED_PRESETS, _windows
from twotower.models.flops import train_flops_per_token
from twotower.models.tower_lm import TwoTowerLM, select_targets
from twotower.training.readouts import TowerReadouts, freeze, score_readouts
from twotower.training.runtime import autocast, resolve_device, resolve_precision
from twotower.training.stacked import train_stacked
from twotower.training.trainer import WindowBatches, train

SPECIAL = (0, 1, 2, 3, 4)


def matmul_peak(dtype: torch.dtype, device: torch.device,
                seconds: float = 1.0) -> float:
    """Sustained FLOP/s of a square matmul (size adapted so slow dtypes finish)."""
    n = 256
    for _ in range(3):  # the first products pay for library start-up (cuBLAS, oneDNN)
        b = torch.randn(n, n, device=device).to(dtype)
        b @ b
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        _sync(device)
        t = time.perf_counter()
        a @ a
        _sync(device)
        took = time.perf_counter() - t
        if took > 0.05 or n >= (8192 if device.type == "cuda" else 4096):
            break
        n *= 2
    reps = max(1, int(seconds / max(took, 1e-6)))
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ a
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _objective(cfg: RunConfig) -> Objective:
    return Objective(cfg.model.family, SPECIAL, 0, 2, 4, cfg.model.vocab_size,
                     cfg.train.mlm_probability)


def _batches(cfg: RunConfig, n: int):
    """Random windows (speed does not depend on the text) as the objective sees them."""
    rng = np.random.default_rng(0)
    obj = _objective(cfg)
    B, T, V = cfg.train.batch_size, cfg.model.max_len, cfg.model.vocab_size
    out = []
    for i in range(n):
        w = rng.integers(5, V, size=(B, T))
        w[:, 0] = 2
        out.append(obj.make_batch(w, step_generator(0, i)))
    return out


def _timed_steps(step, batches, device, warmup: int) -> float:
    for b in batches[:warmup]:
        step(b)
    _sync(device)
    t = time.perf_counter()
    for b in batches[warmup:]:
        step(b)
    _sync(device)
    return time.perf_counter() - t


def _peak_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)


def bench_training(cfg: RunConfig, model: nn.Module, loss_fn, steps: int, warmup: int,
                   device: torch.device, dtype, frac: float, n_towers: int = 2,
                   compile_: bool | str = False) -> dict:
    """Tokens/s of full training steps (forward, backward, clip, AdamW); with
    ``compile_`` the forward pass and loss go through ``torch.compile`` (the warm-up
    steps then include compiling)."""
    model.to(device).train()
    if compile_:  # True, or a torch.compile mode such as "reduce-overhead"
        loss_fn = torch.compile(loss_fn,
                                mode=compile_ if isinstance(compile_, str) else None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98),
                            fused=device.type == "cuda" or None,
                            foreach=None if device.type == "cuda" else True)
    batches = [b.to(device) for b in _batches(cfg, steps + warmup)]

    def step(b):
        with autocast(device, dtype):
            loss = loss_fn(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    took = _timed_steps(step, batches, device, warmup)
    tokens = steps * cfg.train.batch_size * cfg.model.max_len
    flops_tok = train_flops_per_token(cfg.model, n_towers, frac)
    return {"tokens_per_s": tokens / took, "flops_per_token": flops_tok,
            "flops_per_s": flops_tok * tokens / took}


def reference_two_tower(cfg: RunConfig) -> nn.Module:
    """The authors' design with HuggingFace GPT-2 towers (needs ``transformers``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    m = cfg.model
    gcfg = GPT2Config(vocab_size=m.vocab_size, n_positions=m.max_len, n_embd=m.d_model,
                      n_layer=m.n_layers, n_head=m.n_heads, n_inner=m.d_ff,
                      resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout)

    class AuthorsTwoTower(nn.Module):
        def __init__(self):
            super().__init__()
            self.towers = nn.ModuleList(GPT2LMHeadModel(gcfg) for _ in range(2))
            self.towers[1].transformer.wte = self.towers[0].transformer.wte  # shared
            self.towers[1].lm_head.weight = self.towers[0].transformer.wte.weight
            W = 2 * m.d_model
            self.head = nn.Sequential(nn.LayerNorm(W), nn.Linear(W, W), nn.GELU(),
                                      nn.LayerNorm(W), nn.Linear(W, m.vocab_size))

        def loss(self, batch):
            hidden = []
            for tower in self.towers:
                out = tower(batch.input_ids, labels=batch.input_ids,
                            output_hidden_states=True)
                out.loss  # computed over the full vocabulary, then discarded
                hidden.append(out.hidden_states[-1])
            logits = self.head(torch.cat(hidden, -1))
            return F.cross_entropy(logits.float().flatten(0, 1),
                                   batch.targets.flatten(), ignore_index=-100)

    return AuthorsTwoTower()


def run_case(case: str, preset: str, family: str, steps: int, warmup: int,
             device: str, precision: str, compile_: bool | str = False,
             plain_ce: bool = False) -> dict:
    """One measurement (in this process). ``plain_ce``: the loss through a full fp32
    copy of the logits (``F.cross_entropy(logits.float())``, as before the chunked
    cross-entropy), to measure what that costs in memory and time."""
    torch.manual_seed(0)
    cfg = get_preset(preset, family)
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    frac = cfg.train.mlm_probability if family == "mlm" else 1.0
    out = {"case": case, "preset": preset, "family": family, "device": str(dev),
           "precision": str(dtype).replace("torch.", "") if dtype else "float32"}
    if case == "train":
        model = TwoTowerLM(cfg.model)
        loss_fn = model.loss
        if plain_ce:
            def loss_fn(b):
                fused = model.fuse(model.features(b.input_ids))
                hidden, target = select_targets(fused, b.targets, b.positions)
                return F.cross_entropy(model.head_logits(hidden).float(), target)
        out.update(bench_training(cfg, model, loss_fn, steps, warmup, dev, dtype, frac,
                                  compile_=compile_))
    elif case == "reference":
        model = reference_two_tower(cfg)
        out.update(bench_training(cfg, model, model.loss, steps, warmup, dev, dtype,
                                  frac))
        out["note"] = "authors' design: 2 x GPT2LMHeadModel, per-tower losses discarded"
    elif case in ("readouts", "scoring"):
        model = freeze(TwoTowerLM(cfg.model)).to(dev)
        readouts = TowerReadouts(cfg.model.d_model, cfg.model.vocab_size).to(dev)
        if case == "readouts":
            out.update(bench_training(cfg, readouts, lambda b: readouts.loss(model, b),
                                      steps, warmup, dev, dtype, frac))
            out.pop("flops_per_token"), out.pop("flops_per_s")
        else:
            batches = _batches(cfg, steps + warmup)
            score_readouts(model, readouts, batches[:warmup], dev, precision)
            t = time.perf_counter()
            score_readouts(model, readouts, batches[warmup:], dev, precision)
            tokens = steps * cfg.train.batch_size * cfg.model.max_len
            out["tokens_per_s"] = tokens / (time.perf_counter() - t)
    elif case == "preference":
        out.update(bench_preference())
    elif case == "peak":
        out["fp32_flops_per_s"] = matmul_peak(torch.float32, dev)
        out["bf16_flops_per_s"] = matmul_peak(torch.bfloat16, dev)
    out["peak_memory_mib"] = _peak_memory(dev)
    return out


def bench_preference(n_tokens: int = 10_000_000, n_loop: int = 200_000,
                     vocab_size: int = 30528) -> dict:
    """Vectorised ``token_preference`` on 10M scores vs the Python loop on a subset."""
    rng = np.random.default_rng(0)
    ids = np.minimum(rng.zipf(1.2, n_tokens), vocab_size) - 1
    ll = -rng.exponential(3.0, size=(2, n_tokens)).astype(np.float32)
    scores = TokenScores(ids.astype(np.int32), ll, ll[0])
    t = time.perf_counter()  # numba compiles (or loads its cache) on the first call
    token_preference(TokenScores(scores.target[:10], ll[:, :10], ll[0, :10]),
                     vocab_size)
    first_call = time.perf_counter() - t
    t = time.perf_counter()
    token_preference(scores, vocab_size, 5)
    vec = time.perf_counter() - t
    small = TokenScores(scores.target[:n_loop], ll[:, :n_loop], ll[0, :n_loop])
    t = time.perf_counter()
    naive_token_preference(small, 5)
    loop = (time.perf_counter() - t) / n_loop
    return {"tokens": n_tokens, "vectorised_s": vec, "first_call_s": first_call,
            "tokens_per_s": n_tokens / vec,
            "loop_tokens_per_s": 1 / loop, "speedup": (n_tokens / vec) * loop}


def _subprocess(args: list[str], one: bool = True) -> dict:
    proc = subprocess.run([sys.executable, "-m", "twotower.experiments.bench",
                           *(["--one"] if one else []), *args],
                          capture_output=True, text=True)
    if proc.returncode:
        return {"case": args[0], "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m twotower bench", description=__doc__)
    p.add_argument("--preset", default="small")
    p.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--stacked", type=int, default=0, metavar="SEEDS",
                   help="instead: chapter 2's planted model, SEEDS seeds trained "
                   "one after another and then as one stacked computation")
    p.add_argument("--corpus-memory", type=float, metavar="MB",
                   help="instead: peak memory and time of preparing (smoke data "
                   "settings) a .txt corpus of one MB-megabyte paragraph + 60 short")
    p.add_argument("--one", nargs=3, metavar=("CASE", "PRESET", "FAMILY"),
                   help=argparse.SUPPRESS)
    p.add_argument("--prepare", metavar="CORPUS", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m twotower bench ...``: one of the special figures, or the whole table."""
    args = _parser().parse_args(argv)
    if args.prepare:
        print(json.dumps(prepare_figures(args.prepare)))
        return 0
    if args.corpus_memory:
        figures = corpus_memory(args.corpus_memory)
        print(json.dumps(figures, indent=1) if args.json else
              f"{figures['file_mb']:.0f} MB corpus, one paragraph of "
              f"{args.corpus_memory:g} MB: prepared in {figures['wall_s']:.1f} s, peak "
              f"memory {figures['peak_mb']:.0f} MB ({figures['import_mb']:.0f} MB "
              f"after imports), {figures['growth_over_file']:.1f}x the file")
        return 0
    common = [str(args.steps), str(args.warmup), args.device, args.precision]
    if args.stacked:
        figures = stacked_seeds(args.stacked, args.steps, args.preset)
        print(json.dumps(figures, indent=1) if args.json else
              f"{figures['seeds']} seeds x {figures['steps']} steps of chapter 2's "
              f"planted model ({figures['preset']}): separate "
              f"{figures['separate_s']:.1f} s, stacked {figures['stacked_s']:.1f} s, "
              f"{figures['speedup']:.2f}x; largest weight difference "
              f"{figures['max_abs_diff']:.1e}")
        return 0
    if args.one:
        case, preset, family = args.one
        print(json.dumps(run_case(case, preset, family, args.steps, args.warmup,
                                  args.device, args.precision)))
        return 0
    results = speed_table(args.preset, args.families, common)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print_table(results)
    return 0


def speed_table(preset: str, families: list[str], common: list[str]) -> list[dict]:
    """Every case of the speed table, each in its own subprocess, with MFU added."""
    results = [_subprocess(["peak", preset, "causal", *_flags(common)])]
    peak = results[0]
    try:
        import transformers  # noqa: F401
        has_hf = True
    except ImportError:
        has_hf = False
    for family in families:
        for case in ("train", "readouts", "scoring"):
            results.append(_subprocess([case, preset, family, *_flags(common)]))
        if family == "causal" and has_hf:
            results.append(_subprocess(["reference", preset, family,
                                        *_flags(common)]))
    results.append(_subprocess(["preference", preset, "causal", *_flags(common)]))
    for r in results:
        if "flops_per_s" in r and "fp32_flops_per_s" in peak:
            r["mfu_fp32"] = r["flops_per_s"] / peak["fp32_flops_per_s"]
            r["mfu_bf16"] = r["flops_per_s"] / peak["bf16_flops_per_s"]
    ours = next((r for r in results if r.get("case") == "train"
                 and r.get("family") == "causal"), None)
    ref = next((r for r in results if r.get("case") == "reference"), None)
    if ours and ref and "tokens_per_s" in ref:
        ref["ours_over_reference"] = ours["tokens_per_s"] / ref["tokens_per_s"]
    return results


def long_paragraph_corpus(path: Path, megabytes: float, seed: int = 0) -> Path:
    """Write 30 short paragraphs, one of ``megabytes`` MB on one line, 30 short."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}{'ing' if i % 3 else 'ed'}" for i in range(5000)] +
                     ["the", "of", "a", "and", "."] * 400)

    def text(n_words: int) -> str:
        return " ".join(words[rng.zipf(1.3, n_words) % len(words)])

    with open(path, "w", encoding="utf-8") as out:
        out.write("".join(text(80) + "\n\n" for _ in range(30)))
        target = int(megabytes * 2**20)
        while out.tell() < target:
            out.write(text(100_000) + " ")
        out.write("\n\n" + "".join(text(80) + "\n\n" for _ in range(30)))
    return path


def corpus_memory(megabytes: float) -> dict:
    """Figures of :func:`prepare_figures` on a fresh long-paragraph corpus."""
    with tempfile.TemporaryDirectory() as folder:
        corpus = long_paragraph_corpus(Path(folder) / "long.txt", megabytes)
        figures = _subprocess(["--prepare", str(corpus)], one=False)
    if "error" in figures:
        raise TwotowerError(f"preparing the corpus failed: {figures['error']}")
    figures["growth_over_file"] = (
        (figures["peak_mb"] - figures["import_mb"]) / figures["file_mb"])
    return figures


def prepare_figures(corpus: str) -> dict:
    """Peak resident memory and seconds of :func:`prepare_data` on ``corpus`` with the
    smoke preset's data settings and an empty cache (tokenizer trained, text tokenized).
    """
    import_mb = _peak_memory(torch.device("cpu"))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        cfg = dataclasses.replace(get_preset("smoke").data, corpus=corpus)
        data = prepare_data(cfg, cache_dir=cache)
    return {"file_mb": Path(corpus).stat().st_size / 2**20, "import_mb": import_mb,
            "peak_mb": _peak_memory(torch.device("cpu")),
            "wall_s": time.perf_counter() - start,
            "tokens": data.n_train_tokens + data.n_val_tokens}


def stacked_seeds(seeds: int, steps: int, preset: str = "small") -> dict:
    """Seconds for ``seeds`` seeds of chapter 2's planted model (``preset``'s planted
    config, ``steps`` steps each) trained one after another with
    :func:`twotower.training.trainer.train`, then as one stacked computation
    (:func:`twotower.training.stacked.train_stacked`), in one process; and how far the
    weights of the two ways differ. Both ways compute in fp32 (the stacked trainer has
    no autocast; with "auto", a CPU with bf16 matmuls would train the separate seeds in
    bf16 and the weights would differ by bf16's rounding, not by the stacking)."""
    cfg = PLANTED_PRESETS.get(preset, PLANTED_PRESETS["small"])
    joint = dataclasses.replace(cfg.joint, steps=steps, checkpoint_every=0,
                                precision="fp32")
    language = PlantedLanguage(cfg.language)
    objective = Objective("causal", SPECIAL_IDS, pad_id=0, cls_id=CLS_ID, mask_id=4,
                          n_tokens=language.vocab_size)
    batches = [WindowBatches(_windows(cfg, language, s)[0], objective,
                             joint.batch_size, s) for s in range(seeds)]

    def model(seed: int) -> TwoTowerLM:
        torch.manual_seed(seed)
        return TwoTowerLM(cfg.resolved_model(language.vocab_size))
    start, separate = time.perf_counter(), []
    for seed, b in enumerate(batches):
        separate.append(model(seed))
        train(separate[-1], separate[-1].loss, b, joint, progress=False)
    separate_s = time.perf_counter() - start
    stacked = [model(s) for s in range(seeds)]
    start = time.perf_counter()
    train_stacked(stacked, batches, joint)
    stacked_s = time.perf_counter() - start
    with torch.no_grad():
        diff = max(float((p - q).abs().max()) for a, b in zip(separate, stacked)
                   for p, q in zip(a.parameters(), b.parameters()))
    return {"preset": preset, "seeds": seeds, "steps": steps, "separate_s": separate_s,
            "stacked_s": stacked_s, "speedup": separate_s / stacked_s,
            "max_abs_diff": diff, "precision": joint.precision,
            "threads": torch.get_num_threads()}


def _flags(common: list[str]) -> list[str]:
    steps, warmup, device, precision = common
    return ["--steps", steps, "--warmup", warmup, "--device", device,
            "--precision", precision]


def print_table(results: list[dict]) -> None:
    peak = results[0]
    if "fp32_flops_per_s" in peak:
        print(f"matmul peak on {peak['device']}: "
              f"fp32 {peak['fp32_flops_per_s']/1e9:.0f} GFLOP/s, "
              f"bf16 {peak['bf16_flops_per_s']/1e9:.1f} GFLOP/s")
    print(f"{'case':<11}{'family':<8}{'precision':<10}{'tokens/s':>10}{'MFLOP/tok':>10}"
          f"{'GFLOP/s':>9}{'MFU32':>7}{'MFU16':>7}{'mem MiB':>9}")
    for r in results[1:]:
        if "error" in r:
            print(f"{r['case']:<11} failed: {r['error']}")
            continue
        if r["case"] == "preference":
            print(f"preference: 10M tokens in {r['vectorised_s']:.2f}s "
                  f"({r['tokens_per_s']/1e6:.1f}M tok/s), Python loop "
                  f"{r['loop_tokens_per_s']/1e3:.0f}k tok/s: {r['speedup']:.0f}x "
                  f"(first call, compiling: {r['first_call_s']:.1f}s)")
            continue

        def cell(key, scale, fmt, width):  # "-" where a case has no such figure
            return f"{format(r[key] * scale, fmt):>{width}}" if key in r else \
                f"{'-':>{width}}"
        print(f"{r['case']:<11}{r['family']:<8}{r['precision']:<10}"
              f"{r['tokens_per_s']:>10.0f}{cell('flops_per_token', 1e-6, '.1f', 10)}"
              f"{cell('flops_per_s', 1e-9, '.1f', 9)}{cell('mfu_fp32', 1, '.0%', 7)}"
              f"{cell('mfu_bf16', 1, '.0%', 7)}{r['peak_memory_mib']:>9.0f}")
        if "ours_over_reference" in r:
            print(f"{'':<11}twotower / authors' design: "
                  f"{r['ours_over_reference']:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
