"""``python -m twotower gpucheck --out DIR``: everything a GPU has to show, in one
report.

Introduced in chapter 6 (*Training on a GPU (or not)*). It needs no network and runs in
well under 8 minutes on one H100/H200-class GPU. Three parts, each written into
``DIR/gpucheck.json`` as soon as it ends (a check cut short keeps what it measured):

1. ``tests``: the CUDA tests (``pytest -m gpu``, ``tests/test_gpu.py``): every family's
   forward and backward in bf16 and in fp16 with the grad scaler against fp32, fused
   AdamW, ``--compile`` on and off, resume bit-identical to itself, a GPU checkpoint
   loaded on the CPU.
2. ``bench``: training tokens/s, achieved FLOP/s and MFU (against the bf16 matmul peak
   measured in the same process, and against the card's datasheet peak where it is
   known), and peak memory, at the ``small`` and ``colab`` sizes, eager and compiled;
   at ``colab`` also with the loss through a full fp32 copy of the logits, to show what
   the chunked cross-entropy saves.
3. ``pipeline``: one ``colab``-sized run, phase 1 -> readouts -> scores -> preference,
   on the bundled WikiText-2 for a few hundred steps.

On a machine without a GPU it runs too (on the CPU, at tiny sizes with ``--quick``),
which is how the report itself is tested.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import torch

from twotower import atomic
from twotower.config import FAMILIES, get_preset
from twotower.experiments.bench import matmul_peak, run_case
from twotower.experiments import pipeline
from twotower.training.runtime import resolve_device, resolve_precision

# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s, without sparsity).
DATASHEET_BF16 = {"H200": 989e12, "H100 80GB HBM3": 989e12, "H100 SXM": 989e12,
                  "H100 PCIe": 756e12, "H100 NVL": 835e12, "A100": 312e12,
                  "L4": 121e12, "A10G": 70e12, "T4": 65e12, "V100": 125e12}


def measured_reports() -> list[dict]:
    """The reports shipped with the package (``twotower/_measured/gpucheck-*.json``),
    each as written by this check on a real GPU; newest first."""
    folder = resources.files("twotower") / "_measured"
    found = [json.loads(f.read_text(encoding="utf-8")) for f in folder.iterdir()
             if f.name.startswith("gpucheck-") and f.name.endswith(".json")]
    return sorted(found, key=lambda r: r["environment"]["date"], reverse=True)


def case_mode(row: dict) -> str:
    """How a bench case ran: ``eager``, ``compiled`` or a compile mode, and whether
    its loss made a full fp32 copy of the logits."""
    mode = row["compile"] if isinstance(row["compile"], str) else \
        ("compiled" if row["compile"] else "eager")
    return mode + (", fp32 logits" if row.get("plain_ce") else "")


def bench_table(report: dict):
    """One report's bench rows as a table: what ran, speed, MFU, peak memory."""
    import pandas as pd

    rows = []
    for row in report.get("bench", []):
        if "tokens_per_s" not in row:
            continue
        rows.append({"size": row["preset"], "family": row["family"],
                     "mode": case_mode(row),
                     "tokens/s": row["tokens_per_s"],
                     "TFLOP/s": row["flops_per_s"] / 1e12,
                     "MFU (datasheet)": row.get("mfu_datasheet", float("nan")),
                     "MFU (measured matmul)": row["mfu_measured_peak"],
                     "peak memory (GiB)": row["peak_memory_mib"] / 1024})
    return pd.DataFrame(rows)


def datasheet_peak(name: str) -> float | None:
    """The datasheet bf16 peak of the GPU called ``name`` (longest matching key)."""
    found = [k for k in DATASHEET_BF16 if k in name]
    return DATASHEET_BF16[max(found, key=len)] if found else None


class Report:
    """The JSON report, rewritten atomically after every part."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def __setitem__(self, key: str, value) -> None:
        self.data[key] = value
        atomic.write_text(self.path, json.dumps(self.data, indent=1, default=str))


def environment(device: torch.device) -> dict:
    """What ran the check: versions, the device, and its measured matmul peak."""
    env = {"date": datetime.date.today().isoformat(),
           "python": platform.python_version(),
           "torch": torch.__version__, "device": str(device),
           "cuda": torch.version.cuda, "hostname": platform.node()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, memory_gib=props.total_memory / 2**30,
                   capability=f"{props.major}.{props.minor}",
                   multiprocessors=props.multi_processor_count,
                   datasheet_bf16_flops=datasheet_peak(props.name))
    else:
        env["gpu"] = None
    env["measured_bf16_flops"] = matmul_peak(torch.bfloat16, device)
    env["measured_fp32_flops"] = matmul_peak(torch.float32, device)
    return env


def run_tests(repo: Path, out: Path, timeout: float) -> dict:
    """``pytest -m gpu`` in a subprocess; counts from its JUnit XML."""
    tests = repo / "tests" / "test_gpu.py"
    if not tests.exists():
        return {"error": f"{tests} not found: run the check from a clone of the "
                         "repository"}
    xml = out / "gpu-tests.xml"
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu",
                               "-p", "no:cacheprovider", f"--junitxml={xml}",
                               str(tests)],
                              cwd=repo, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"the CUDA tests ran past {timeout:.0f} s"}
    result = {"exit_code": proc.returncode, "seconds": time.perf_counter() - t,
              "tail": proc.stdout.strip().splitlines()[-15:]}
    if xml.exists():
        cases = ET.parse(xml).getroot().iter("testcase")
        outcome = {}
        for case in cases:
            kind = next((c.tag for c in case
                         if c.tag in ("failure", "error", "skipped")), "passed")
            outcome[case.get("name")] = kind
        result["cases"] = outcome
        for kind in ("passed", "failure", "error", "skipped"):
            result[kind] = sum(v == kind for v in outcome.values())
    return result


def bench_cases(quick: bool) -> list[dict]:
    """Which (preset, family, compile, plain-loss) cases the bench part measures."""
    if quick:
        return [dict(preset="smoke", family="causal", compile=False),
                dict(preset="smoke", family="causal", compile=False, plain_ce=True)]
    # most important first: a case that would start past the time budget is skipped
    cases = [dict(preset="colab", family="causal", compile=True),
             dict(preset="colab", family="causal", compile="reduce-overhead"),
             dict(preset="colab", family="causal", compile=False),
             dict(preset="colab", family="causal", compile=False, plain_ce=True),
             dict(preset="colab", family="mlm", compile=True),
             dict(preset="colab", family="mlm", compile=False),
             dict(preset="colab", family="bilm", compile=False)]
    cases += [dict(preset="small", family=f, compile=False) for f in FAMILIES]
    cases.append(dict(preset="small", family="causal", compile=True))
    return cases


def run_bench(device: torch.device, env: dict, quick: bool, steps: int,
              warmup: int, deadline: float = float("inf")) -> list[dict]:
    """Each case in this process; peak memory reset between cases on a GPU. Cases
    that would start after ``deadline`` (``time.perf_counter()``) are listed as
    skipped."""
    rows = []
    for case in bench_cases(quick):
        if time.perf_counter() > deadline:
            rows.append({**case, "error": "skipped: past the check's time budget"})
            continue
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        try:
            row = run_case("train", case["preset"], case["family"], steps, warmup,
                           str(device), "auto", compile_=case["compile"],
                           plain_ce=case.get("plain_ce", False))
        except Exception as err:  # noqa: BLE001
            # one failed case must not end the check
            row = {**case, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        row.update(compile=case["compile"], plain_ce=case.get("plain_ce", False),
                   wall_s=time.perf_counter() - t)
        print(f"  bench {case}: {row.get('tokens_per_s', row.get('error'))}",
              flush=True)
        if "flops_per_s" in row:  # against the peak of the precision it ran in
            half = row.get("precision") in ("bfloat16", "float16")
            peak = env["measured_bf16_flops" if half else "measured_fp32_flops"]
            row["mfu_measured_peak"] = row["flops_per_s"] / peak
            if half and env.get("datasheet_bf16_flops"):
                row["mfu_datasheet"] = row["flops_per_s"] / env["datasheet_bf16_flops"]
        rows.append(row)
    return rows


def run_pipeline(device: torch.device, quick: bool, steps: int, readout_steps: int,
                 work: Path) -> dict:
    """A ``colab``-sized run on the bundled WikiText-2 (``smoke`` with ``--quick``)."""
    cfg = get_preset("smoke" if quick else "colab", "causal")
    data = dataclasses.replace(cfg.data, corpus="wikitext-2", source="bundled",
                               tokenizer="train")
    train = dataclasses.replace(cfg.train, steps=steps,
                                warmup_steps=max(1, steps // 10),
                                eval_every=0, checkpoint_every=0, device=str(device))
    readout = dataclasses.replace(cfg.readout, steps=readout_steps,
                                  warmup_steps=max(1, readout_steps // 10),
                                  eval_every=0, checkpoint_every=0, device=str(device))
    cfg = dataclasses.replace(cfg, data=data, train=train, readout=readout,
                              score_batches=cfg.score_batches or 64).validate()
    t = time.perf_counter()
    results = pipeline.run(cfg, work / "run", cache_dir=work / "cache", progress=False)
    keep = ("scores", "preference", "split_half", "seconds", "data", "parameters",
            "joint_training", "readout_training")
    out = {k: results[k] for k in keep if k in results}
    out.update(wall_s=time.perf_counter() - t, steps=steps, readout_steps=readout_steps,
               model=dataclasses.asdict(cfg.model),
               precision=str(resolve_precision("auto", device)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m twotower gpucheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpucheck.json")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (how the report is tested on a CPU)")
    p.add_argument("--parts", nargs="*", default=["tests", "bench", "pipeline"],
                   choices=["tests", "bench", "pipeline"])
    p.add_argument("--steps", type=int, default=20, help="timed steps per bench case")
    p.add_argument("--pipeline-steps", type=int, default=300)
    p.add_argument("--test-timeout", type=float, default=240.0)
    p.add_argument("--budget", type=float, default=420.0,
                   help="seconds: no bench case starts later than 120 s before this")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    report = Report(out / "gpucheck.json")
    started = time.perf_counter()
    env = environment(device)
    report["environment"] = env
    print(f"gpucheck on {env['gpu'] or device}: bf16 matmul "
          f"{env['measured_bf16_flops'] / 1e12:.1f} TFLOP/s measured", flush=True)
    repo = Path(__file__).resolve().parents[2]
    parts = {
        "tests": lambda: run_tests(repo, out, args.test_timeout),
        "bench": lambda: run_bench(device, env, args.quick, args.steps,
                                   3 if args.quick else 5,
                                   started + args.budget - 120),
        "pipeline": lambda: run_pipeline(device, args.quick, args.pipeline_steps,
                                         max(1, args.pipeline_steps * 2 // 3),
                                         Path(tempfile.mkdtemp(prefix="gpucheck-"))),
    }
    for name in args.parts:
        t = time.perf_counter()
        try:
            report[name] = parts[name]()
        except Exception as err:  # noqa: BLE001 - the report says what failed
            report[name] = {"error": f"{type(err).__name__}: {err}",
                            "traceback": traceback.format_exc().splitlines()[-8:]}
        print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
    report["seconds"] = time.perf_counter() - started
    print_summary(report.data)
    return 0


def print_summary(data: dict) -> None:
    """A few lines for the terminal; the JSON holds everything."""
    tests = data.get("tests", {})
    if "passed" in tests:
        print(f"CUDA tests: {tests['passed']} passed, {tests['failure']} failed, "
              f"{tests['error']} errors, {tests['skipped']} skipped")
    elif tests:
        print(f"CUDA tests: {tests.get('error')}")
    for row in data.get("bench", []) if isinstance(data.get("bench"), list) else []:
        name = f"{row.get('preset')}/{row.get('family')} {case_mode(row)}"
        if "error" in row:
            print(f"  {name}: {row['error']}")
            continue
        mfu = row.get("mfu_datasheet", row.get("mfu_measured_peak"))
        print(f"  {name}: {row['tokens_per_s']:,.0f} tok/s, "
              f"{row['flops_per_s'] / 1e12:.1f} TFLOP/s, MFU {mfu:.1%}, "
              f"peak {row['peak_memory_mib']:,.0f} MiB")
    pipe = data.get("pipeline", {})
    if "scores" in pipe:
        print(f"pipeline: {pipe['wall_s']:.0f} s, joint ppl "
              f"{pipe['scores']['joint_ppl']:.1f}")
    elif pipe:
        print(f"pipeline: {pipe.get('error')}")
    print(f"total {data.get('seconds', 0):.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
