"""Structural probes per tower and layer, chosen on a dev split, against baselines.

Introduced in chapter 10 (*Syntax or semantics?*), which asks whether one tower holds
more of the parse tree. Word vectors of each tower at each layer come from
:meth:`~twotower.models.hooks.HookedModule.run_with_cache` on UD sentences (subwords
averaged per word; layer 0 is the towers' input), and :mod:`twotower.analysis.probes`
fits a distance and a depth probe on each (Hewitt & Manning 2019). The training
sentences are split into probe-train and probe-dev (:func:`split_probe_train`): each
probe keeps its epoch of lowest probe-dev loss, and the layer is chosen on probe-dev
UUAS (:func:`choose_layer`); the test sentences only report. Baselines: the towers'
input (layer 0), an untrained model of the same shape, and the trees drawn without
vectors of :mod:`twotower.analysis.tree_baselines`. A probe whose towers stay below
the chain cannot say what either tower holds (:func:`probe_summary`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from twotower.analysis.probes import evaluate_probe, structural_probe, word_vectors
from twotower.analysis.stats import bootstrap_distribution
from twotower.analysis.tree_metrics import keep_mask, uuas_counts
from twotower.data.ud import Sentence
from twotower.errors import require
from twotower.training.runtime import resolve_device

PROBE_REPORT = "probes.json"  # written into a run directory by chapter 10


# --- features per tower and layer for the probes --------------------------------------

TOWER_INPUT = "towers (input)"  # layer 0: no hook point; a pre-hook on model.towers


def probe_layers(model) -> dict[int, str]:
    """Layer number -> hook point of each tower's output at that layer.

    Layer 0 is the towers' input (the shared embedding through each tower's own input
    projection), read by a forward pre-hook on ``model.towers`` (:data:`TOWER_INPUT`).
    Transformers: then the residual stream after each block (1..L). The biLM exposes
    only the output of its LSTM stacks (layer L).
    """
    if model.cfg.family == "bilm":
        return {0: TOWER_INPUT, model.cfg.n_layers: "tower_out"}
    return {0: TOWER_INPUT, **{i + 1: f"towers.blocks.{i}.resid_post"
                               for i in range(model.cfg.n_layers)}}


def encode_sentences(sentences: Sequence[Sentence], tokenizer, max_len: int
                     ) -> tuple[list[Sentence], list[np.ndarray], list[list]]:
    """Tokenize UD words with the run's tokenizer ([CLS] ... [SEP] as in training).

    Sentences longer than ``max_len`` subwords, or with a word that yields no subword,
    are left out.

    Returns:
        ``(kept sentences, their (T,) id arrays, their word ids per subword)``.
    """
    encodings = tokenizer.encode_batch([list(s.words) for s in sentences],
                                       is_pretokenized=True)
    kept, ids, word_ids = [], [], []
    for sentence, enc in zip(sentences, encodings):
        words = {w for w in enc.word_ids if w is not None}
        if len(enc.ids) <= max_len and words == set(range(len(sentence))):
            kept.append(sentence)
            ids.append(np.asarray(enc.ids, dtype=np.int64))
            word_ids.append(list(enc.word_ids))
    return kept, ids, word_ids


def pad_sentences(ids: Sequence[np.ndarray], pad_id: int) -> np.ndarray:
    """``(B, T)`` int64: the id arrays of :func:`encode_sentences`, padded at the right
    to the longest."""
    rows = np.full((len(ids), max(map(len, ids))), pad_id, np.int64)
    for b, row in enumerate(ids):
        rows[b, :len(row)] = row
    return rows


def _cache_with_tower_input(model, batch: torch.Tensor, names: list[str]) -> dict:
    """``run_with_cache`` of the hook points ``names``, plus the towers' input."""
    stored = {}

    def grab(module, args):
        stored[TOWER_INPUT] = args[0].detach()

    handle = model.towers.register_forward_pre_hook(grab)
    try:
        _, cache = model.run_with_cache(batch, names=names)
    finally:
        handle.remove()
    return {**cache, **stored}


@torch.no_grad()
def tower_layer_vectors(model, tokenizer, sentences: Sequence[Sentence], *,
                        batch_size: int = 32
                        ) -> tuple[list[Sentence], dict[tuple[str, int], list]]:
    """Word vectors of every sentence for every tower and probed layer (0 included).

    Returns:
        ``(kept sentences, {(tower "A"/"B", layer): [(n_words, D) arrays]})``, one
        array per kept sentence (see :func:`encode_sentences`).
    """
    model.eval()
    kept, ids, word_ids = encode_sentences(sentences, tokenizer, model.cfg.max_len)
    layers = probe_layers(model)
    towers = "AB"[:model.n_towers]
    out = {(t, layer): [] for t in towers for layer in layers}
    names = [name for name in layers.values() if name != TOWER_INPUT]
    for start in range(0, len(kept), batch_size):
        chunk = ids[start:start + batch_size]
        batch = torch.as_tensor(pad_sentences(chunk, model.cfg.pad_id))
        cache = _cache_with_tower_input(model, batch.to(model.device), names)
        cache = {name: cache[name].float().cpu() for name in layers.values()}  # 1 copy
        for b, row in enumerate(chunk):
            for layer, name in layers.items():
                for k, tower in enumerate(towers):
                    h = cache[name][k, b, :len(row)]  # (T, D)
                    out[tower, layer].append(
                        word_vectors(h, word_ids[start + b]).numpy())
    return kept, out


# --- probes per tower and layer -------------------------------------------------------


def split_probe_train(n_train: int, dev_share: float = 0.2, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of probe-train and probe-dev among ``n_train`` training sentences.

    A share ``dev_share`` of them, drawn with ``seed``, is held out to choose the
    early-stopping epoch and the layer; both index arrays are sorted.
    """
    require(0 < dev_share < 1, f"dev_share must lie strictly between 0 and 1, got "
            f"{dev_share}")
    n_dev = int(round(dev_share * n_train))
    require(0 < n_dev < n_train, f"{n_train} training sentences leave no probe-train "
            f"or probe-dev sentence at dev_share={dev_share}; use more sentences")
    order = np.random.default_rng(seed).permutation(n_train)
    return np.sort(order[n_dev:]), np.sort(order[:n_dev])


def probe_towers(vectors: dict[tuple[str, int], list], sentences: Sequence[Sentence],
                 n_train: int, *, tasks: Sequence[str] = ("distance", "depth"),
                 rank: int = 64, epochs: int = 30, lr: float = 1e-3, seed: int = 0,
                 dev_share: float = 0.2, device: str | torch.device = "auto"
                 ) -> tuple[pd.DataFrame, dict[tuple[str, int], np.ndarray]]:
    """Fit a probe per tower, layer and task on the first ``n_train`` sentences.

    Those are split by :func:`split_probe_train` (``dev_share``, ``seed``): probes
    train on probe-train and keep their epoch of lowest probe-dev loss; the other
    sentences are the test set. The probes train on ``device`` (``auto``: a GPU when
    there is one); on a CPU their matrices are tiny, so they use one thread (on a busy
    machine more threads only wait for each other).

    Returns:
        ``(table, uuas_counts)``: the table has one row per (tower, layer, task) with
        ``epochs`` (kept by early stopping), ``dev_spearman``, ``dev_uuas``,
        ``dev_root_accuracy`` on probe-dev and ``spearman`` (averaged over sentence
        lengths 5-50), ``uuas``, ``root_accuracy`` on the test set;
        ``uuas_counts[(tower, layer)]`` is an (n_test, 2) array of gold edges found
        and gold edges per test sentence (distance probe), for
        :func:`uuas_difference`.
    """
    train_i, dev_i = split_probe_train(n_train, dev_share, seed)
    train_s, dev_s = [sentences[i] for i in train_i], [sentences[i] for i in dev_i]
    test_s = list(sentences[n_train:])
    require(test_s, "probe_towers needs test sentences after the n_train first")
    position = {id(s): i for i, s in enumerate(sentences)}
    rows, counts = [], {}
    device = resolve_device(device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        for (tower, layer), vecs in vectors.items():
            def features(batch, vecs=vecs):
                return [vecs[position[id(s)]] for s in batch]

            for task in tasks:
                probe, scores = structural_probe(
                    features, train_s, test_s, task=task, lr=lr, seed=seed,
                    rank=min(rank, vecs[0].shape[1]), epochs=epochs,
                    dev_sentences=dev_s, device=device)
                dev = evaluate_probe(probe, features(dev_s), dev_s)
                rows.append({"tower": tower, "layer": layer, "task": task,
                             "epochs": scores.epochs, "dev_spearman": dev.spearman,
                             "dev_uuas": dev.uuas,
                             "dev_root_accuracy": dev.root_accuracy,
                             "spearman": scores.spearman, "uuas": scores.uuas,
                             "root_accuracy": scores.root_accuracy})
                if task == "distance":
                    counts[tower, layer] = sentence_uuas_counts(
                        probe, features(test_s), test_s)
    finally:
        torch.set_num_threads(threads)
    return pd.DataFrame(rows), counts


@torch.no_grad()
def sentence_uuas_counts(probe, vectors: Sequence[np.ndarray],
                         sentences: Sequence[Sentence]) -> np.ndarray:
    """(n, 2): gold edges found by ``probe`` and gold edges, per sentence (no PUNCT)."""
    out = []
    for v, sentence in zip(vectors, sentences):
        pred = probe(torch.as_tensor(np.asarray(v), dtype=torch.float32,
                                     device=probe.proj.device)[None])[0]
        out.append(uuas_counts(pred.double().cpu().numpy(), sentence.heads,
                               keep_mask(sentence)))
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def _micro(counts: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Micro UUAS of the sentences ``index`` picks: (..., n) indices -> (...)."""
    return counts[index, 0].sum(-1) / np.maximum(counts[index, 1].sum(-1), 1)


def micro_uuas(counts: np.ndarray) -> float:
    """Gold edges found over gold edges, summed over the sentences of (n, 2) counts."""
    counts = np.asarray(counts, float)
    return float(_micro(counts, np.arange(len(counts))))


def uuas_difference(counts_a: np.ndarray, counts_b: np.ndarray, n_boot: int = 1000,
                    seed: int = 0) -> tuple[float, float, float]:
    """UUAS of A minus UUAS of B (micro averages), with a paired bootstrap over
    sentences. Returns ``(difference, low, high)``."""
    a, b = np.asarray(counts_a, float), np.asarray(counts_b, float)
    require(a.shape == b.shape, f"counts of shapes {a.shape} and {b.shape}: score "
            "both on the same test sentences (one row per sentence)")
    diff = micro_uuas(a) - micro_uuas(b)
    draws = bootstrap_distribution(len(a), lambda i: _micro(a, i) - _micro(b, i),
                                   n_boot, seed)
    lo, hi = np.quantile(draws, [0.025, 0.975])  # the quantiles it has always reported
    return diff, float(lo), float(hi)


# --- the report a run keeps -----------------------------------------------------------


ProbeResult = tuple[pd.DataFrame, dict[tuple[str, int], np.ndarray]]  # probe_towers


def save_probe_report(run_dir: str | Path, trained: ProbeResult,
                      untrained: ProbeResult | None = None,
                      baselines: dict[str, np.ndarray] | None = None, **extra) -> Path:
    """Write chapter 10's probe results next to the run (``probes.json``).

    Args:
        trained: :func:`probe_towers` of the trained model.
        untrained: the same for the untrained model of the same shape.
        baselines: :func:`twotower.analysis.tree_baselines.tree_baselines` of the
            same test sentences.
        extra: other JSON-able facts (e.g. the number of sentences).
    """
    def encode(result):
        if result is None:
            return None
        table, counts = result
        return {"table": table.to_dict("records"),
                "uuas_counts": {f"{t}:{layer}": c.tolist()
                                for (t, layer), c in counts.items()}}

    report = {"trained": encode(trained), "untrained": encode(untrained),
              "baselines": None if baselines is None else
              {kind: np.asarray(c).tolist() for kind, c in baselines.items()}, **extra}
    path = Path(run_dir) / PROBE_REPORT
    path.write_text(json.dumps(report, indent=1, default=float), encoding="utf-8")
    return path


def load_probe_report(run_dir: str | Path) -> dict | None:
    """The report of :func:`save_probe_report` (results as :data:`ProbeResult`,
    ``baselines`` as (n, 2) float arrays, or None in a report written without them),
    or None if chapter 10 has not run on this run directory."""
    path = Path(run_dir) / PROBE_REPORT
    if not path.exists():
        return None
    report = json.loads(path.read_text(encoding="utf-8"))

    def decode(result):
        if result is None:
            return None
        counts = {(k.split(":")[0], int(k.split(":")[1])):
                  np.asarray(v, dtype=np.int64).reshape(-1, 2)
                  for k, v in result["uuas_counts"].items()}
        return pd.DataFrame(result["table"]), counts

    report["trained"] = decode(report["trained"])
    report["untrained"] = decode(report["untrained"])
    baselines = report.get("baselines")
    report["baselines"] = None if baselines is None else {
        kind: np.asarray(c, dtype=np.float64).reshape(-1, 2)
        for kind, c in baselines.items()}
    return report


# --- the summary: every decision on probe-dev -----------------------------------------


def choose_layer(table: pd.DataFrame) -> tuple[int, str]:
    """The layer of highest mean probe-dev UUAS of the towers (distance probes).

    Layer 0 (the towers' input) is a baseline and competes only when it is the sole
    layer. Test scores are never read.

    Returns:
        ``(layer, how)``: ``how`` is "dev", or "only layer" when there was no choice.

    Raises:
        TwotowerError: if several layers compete but the table has no ``dev_uuas``
            (a report written before layers were chosen on probe-dev).
    """
    dist = table[table["task"] == "distance"]
    require(len(dist) > 0, "the probe table has no distance probe; run probe_towers "
            "with 'distance' among its tasks")
    layers = sorted(set(dist["layer"]) - {0}) or [0]
    if len(layers) == 1:
        return int(layers[0]), "only layer"
    require("dev_uuas" in dist, "this probe report has no probe-dev scores to choose a "
            "layer with (written before dev selection); rerun chapter 10")
    dev = dist[dist["layer"].isin(layers)].groupby("layer")["dev_uuas"].mean()
    return int(dev.idxmax()), "dev"


def _pooled(counts: dict, layer: int) -> np.ndarray:
    """Both towers' (n, 2) counts at ``layer`` added: their joint micro UUAS."""
    return sum(np.asarray(c, float) for (_, lay), c in counts.items() if lay == layer)


def _versus(out: dict, name: str, a, b, n_boot: int, seed: int) -> None:
    out[name], out[name + "_low"], out[name + "_high"] = uuas_difference(a, b, n_boot,
                                                                         seed)


def probe_summary(trained: ProbeResult, untrained: ProbeResult | None = None,
                  n_boot: int = 1000, seed: int = 0, *,
                  baselines: dict[str, np.ndarray] | None = None) -> dict:
    """Which tower holds more of the tree, at the layer chosen on probe-dev.

    Args:
        trained: :func:`probe_towers` of the trained model.
        untrained: the same for the untrained model, or None.
        n_boot: bootstrap resamples of the test sentences (paired).
        seed: seed of the bootstrap.
        baselines: :func:`twotower.analysis.tree_baselines.tree_baselines` of the
            same test sentences, or None.

    Returns:
        A dict. ``best_layer`` (:func:`choose_layer`, never the test set),
        ``selected_on`` ("dev", or "only layer" when there was no choice),
        ``dev_uuas`` (mean probe-dev UUAS of the towers there; NaN if not recorded),
        ``uuas_a``, ``uuas_b`` (test UUAS there), ``diff``/``low``/``high``
        (:func:`uuas_difference` of A and B). With layer 0 probed: ``embedding``
        (both towers' test UUAS at layer 0) and ``vs_embedding``/``vs_embedding_low``/
        ``vs_embedding_high`` (both towers at the chosen layer minus layer 0). With
        ``untrained``: ``vs_untrained``/``vs_low``/``vs_high`` (both towers minus the
        untrained model at the same layer). With ``baselines``: ``chain``,
        ``random`` (their test UUAS), ``vs_chain``/``vs_chain_low``/``vs_chain_high``
        (both towers minus the chain), ``tower_vs_chain`` ({tower: (diff, low,
        high)}) and ``instrument_fails``: True when every tower's interval lies
        below the chain, so the probe cannot tell what a tower holds from what word
        order gives for free.
    """
    table, counts = trained
    best, how = choose_layer(table)
    dist = table[(table["task"] == "distance") & (table["layer"] == best)]
    uuas = dist.set_index("tower")["uuas"]
    dev = dist["dev_uuas"].mean() if "dev_uuas" in dist else float("nan")
    diff, lo, hi = uuas_difference(counts["A", best], counts["B", best], n_boot, seed)
    out = {"best_layer": best, "selected_on": how, "dev_uuas": float(dev),
           "uuas_a": float(uuas["A"]), "uuas_b": float(uuas["B"]),
           "diff": diff, "low": lo, "high": hi}
    both = _pooled(counts, best)
    if best != 0 and ("A", 0) in counts:
        out["embedding"] = micro_uuas(_pooled(counts, 0))
        _versus(out, "vs_embedding", both, _pooled(counts, 0), n_boot, seed)
    if untrained is not None:
        out["vs_untrained"], out["vs_low"], out["vs_high"] = uuas_difference(
            both, _pooled(untrained[1], best), n_boot, seed)
    if baselines is not None:
        chain = baselines["chain"]
        out["chain"], out["random"] = (micro_uuas(chain),
                                       micro_uuas(baselines["random"]))
        _versus(out, "vs_chain", both, chain, n_boot, seed)
        out["tower_vs_chain"] = {t: uuas_difference(c, chain, n_boot, seed)
                                 for (t, layer), c in counts.items() if layer == best}
        out["instrument_fails"] = all(
            high < 0 for _, _, high in out["tower_vs_chain"].values())
    return out


def probe_uuas_table(trained: ProbeResult, untrained: ProbeResult | None = None,
                     baselines: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Test UUAS by layer beside its baselines, for reading (decisions use dev).

    Returns:
        One row per layer (0: the towers' input): ``dev A``, ``dev B`` (probe-dev
        UUAS, where recorded), ``A``, ``B`` (test), ``A untrained``, ``B untrained``,
        ``chain``, ``random`` (the same on every row) and ``chosen`` (the layer of
        :func:`choose_layer`).
    """
    table = trained[0][trained[0]["task"] == "distance"]
    out = table.pivot(index="layer", columns="tower", values="uuas")
    if "dev_uuas" in table:
        dev = table.pivot(index="layer", columns="tower", values="dev_uuas")
        out = dev.add_prefix("dev ").join(out)
    if untrained is not None:
        base = untrained[0][untrained[0]["task"] == "distance"]
        out = out.join(base.pivot(index="layer", columns="tower", values="uuas")
                       .add_suffix(" untrained"))
    for kind, counts in (baselines or {}).items():
        out[kind] = micro_uuas(counts)
    out["chosen"] = out.index == choose_layer(trained[0])[0]
    out.columns.name = None
    return out


def describe_probe_summary(summary: dict) -> str:
    """:func:`probe_summary` in a few printed lines, its verdict on the chain last."""
    def ci(name: str, low: str, high: str) -> str:
        return f"{summary[name]:+.3f} [{summary[low]:+.3f}, {summary[high]:+.3f}]"

    lines = [f"layer {summary['best_layer']} (chosen: {summary['selected_on']}): UUAS "
             f"tower A {summary['uuas_a']:.3f}, tower B {summary['uuas_b']:.3f}; "
             f"A - B = {ci('diff', 'low', 'high')}"]
    if "vs_untrained" in summary:
        lines.append("both towers minus the untrained model: "
                     + ci("vs_untrained", "vs_low", "vs_high"))
    if "vs_embedding" in summary:
        lines.append("both towers minus their input (layer 0): "
                     + ci("vs_embedding", "vs_embedding_low", "vs_embedding_high"))
    if "instrument_fails" in summary:
        lines.append(f"chain {summary['chain']:.3f}, random tree "
                     f"{summary['random']:.3f}")
        lines += [f"tower {t} minus the chain: {d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                  for t, (d, lo, hi) in summary["tower_vs_chain"].items()]
        lines.append("verdict: every tower stays below the chain, so the probe cannot "
                     "speak at this scale" if summary["instrument_fails"] else
                     "verdict: a tower reaches the chain, so the probe can speak")
    return "\n".join(lines)
