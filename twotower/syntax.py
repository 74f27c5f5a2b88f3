"""Syntax or semantics? Part of speech against pref, and a structural probe per tower.

Introduced in chapter 10 (*Syntax or semantics?*).

Two questions, two instruments:

* Do function words (ADP, DET, PRON, AUX, CCONJ, SCONJ, PART, PUNCT) prefer one tower
  and content words (NOUN, VERB, ADJ, ADV, PROPN, NUM) the other? Each WordPiece id gets
  its dominant UPOS from UD English EWT (:func:`twotower.pos.dominant_upos`); the two
  classes' ``pref`` are compared by Cohen's d and the rank-biserial correlation, with a
  permutation test; and again *within frequency bins*, because function words are
  frequent and frequency alone moves ``pref``.
* Does one tower hold more of the parse tree? Word vectors per tower and per layer come
  from :meth:`~twotower.hooks.HookedModule.run_with_cache` on UD sentences (subwords
  averaged per word), and :mod:`twotower.probes` fits a distance and a depth probe on
  each (Hewitt & Manning 2019); an untrained model of the same shape is the baseline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import mannwhitneyu

from .errors import require
from .pos import Sentence, word_class
from .probes import structural_probe, uuas_counts, word_vectors

PROBE_REPORT = "probes.json"  # written into a run directory by chapter 10


# --- part of speech ---------------------------------------------------------------


def pos_table(preference: pd.DataFrame, upos: dict[int, tuple[str, float, int]],
              values: pd.Series | None = None) -> pd.DataFrame:
    """Tokens with a preference and a UD tag, with their word class and frequency.

    Args:
        preference: a run's ``preference.csv`` indexed by id.
        upos: ``id -> (tag, share, count)`` from :func:`twotower.pos.dominant_upos`.
        values: the preference to use (e.g. centred), by id; default ``pref``.

    Returns:
        DataFrame indexed by id: ``token, count, log_count, pref, upos, upos_share,
        word_class`` ("function", "content" or "other").
    """
    pref = (preference["pref"] if values is None else values).dropna()
    ids = [i for i in pref.index if i in upos]
    out = pd.DataFrame({
        "token": preference.loc[ids, "token"] if "token" in preference else "",
        "count": preference.loc[ids, "count"],
        "pref": pref.loc[ids],
        "upos": [upos[i][0] for i in ids],
        "upos_share": [upos[i][1] for i in ids],
    }, index=pd.Index(ids, name="id"))
    out.insert(2, "log_count", np.log(out["count"].astype(float)))
    out["word_class"] = [word_class(t) for t in out["upos"]]
    return out


def effect_size(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """How far ``x`` lies above ``y``: mean difference, Cohen's d, rank-biserial.

    Cohen's d divides by the pooled standard deviation (ddof 1); the rank-biserial
    correlation is ``2 P(X > Y) - 1`` (ties count half), in [-1, 1].
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or y.size < 2:
        nan = float("nan")
        return {"mean_diff": nan, "cohens_d": nan, "rank_biserial": nan}
    diff = x.mean() - y.mean()
    pooled = pooled_sd(x, y)
    u = mannwhitneyu(x, y, alternative="two-sided").statistic  # pairs with x > y
    return {"mean_diff": float(diff),
            "cohens_d": float(diff / pooled) if pooled > 0 else float("nan"),
            "rank_biserial": float(2 * u / (x.size * y.size) - 1)}


def pooled_sd(x: np.ndarray, y: np.ndarray) -> float:
    """Pooled standard deviation of two samples (ddof 1 in each)."""
    return float(np.sqrt(((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1))
                         / (x.size + y.size - 2)))


def frequency_bins(log_count: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index (0..n_bins-1) of each token by quantiles of its log frequency."""
    log_count = np.asarray(log_count, float)
    edges = np.unique(np.quantile(log_count, np.linspace(0, 1, n_bins + 1))[1:-1])
    return np.searchsorted(edges, log_count, side="right")


def class_difference(values: np.ndarray, labels: np.ndarray,
                     strata: np.ndarray | None = None) -> np.ndarray:
    """Mean of ``values`` where the label is True minus where it is False.

    With ``strata``, the differences within each stratum that holds both labels are
    averaged with weights ``n1 n0 / (n1 + n0)`` (the Cochran-Mantel-Haenszel weights).

    Args:
        values: (N,) numbers.
        labels: (N,) or (S, N) booleans: S labellings are scored at once.
        strata: (N,) stratum of each value, or None for one stratum.

    Returns:
        (S,) differences, or a 0-d array for (N,) labels.
    """
    values = np.asarray(values, float)
    labels = np.asarray(labels, bool)
    single = labels.ndim == 1
    labels = np.atleast_2d(labels)
    strata = np.zeros(values.size, int) if strata is None else np.asarray(strata)
    total = np.zeros(labels.shape[0])
    weight = np.zeros(labels.shape[0])
    for s in np.unique(strata):
        inside = strata == s
        lab, v = labels[:, inside], values[inside]
        n1 = lab.sum(1)
        n0 = inside.sum() - n1
        ok = (n1 > 0) & (n0 > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = (lab @ v) / n1 - ((~lab) @ v) / n0
            w = n1 * n0 / (n1 + n0)
        total += np.where(ok, w * diff, 0.0)
        weight += np.where(ok, w, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / weight
    return out[0] if single else out


def permutation_p(values: np.ndarray, labels: np.ndarray,
                  strata: np.ndarray | None = None, n_perm: int = 2000,
                  seed: int = 0) -> float:
    """Two-sided permutation p-value of :func:`class_difference`.

    Labels are shuffled within each stratum (so the frequency profile of each class is
    kept when the strata are frequency bins). ``p = (1 + #{|perm| >= |observed|}) /
    (1 + n_perm)``.
    """
    labels = np.asarray(labels, bool)
    strata_ = np.zeros(labels.size, int) if strata is None else np.asarray(strata)
    observed = abs(float(class_difference(values, labels, strata_)))
    rng = np.random.default_rng(seed)
    shuffled = np.broadcast_to(labels, (n_perm, labels.size)).copy()
    for s in np.unique(strata_):
        cols = np.flatnonzero(strata_ == s)
        order = np.argsort(rng.random((n_perm, cols.size)), axis=1)
        shuffled[:, cols] = labels[cols][order]
    perm = np.abs(class_difference(values, shuffled, strata_))
    return float((1 + np.sum(perm >= observed - 1e-12)) / (1 + n_perm))


@dataclass(frozen=True)
class ClassEffect:
    """Function against content words, raw and within frequency bins.

    ``mean_diff`` > 0: function words have the higher pref (prefer tower A).
    """

    n_function: int
    n_content: int
    mean_function: float
    mean_content: float
    mean_diff: float
    cohens_d: float
    rank_biserial: float
    p_value: float
    n_bins: int
    binned_diff: float  # frequency-stratified mean difference (nats)
    binned_d: float  # binned_diff / pooled standard deviation
    p_binned: float  # labels permuted within frequency bins

    @property
    def function_tower(self) -> str:
        """The tower function words prefer ("A" or "B")."""
        return "A" if self.mean_diff > 0 else "B"


def _function_content(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["word_class"].isin(("function", "content"))]


def function_content_effect(table: pd.DataFrame, n_perm: int = 2000, n_bins: int = 5,
                            seed: int = 0) -> ClassEffect:
    """Compare ``pref`` of function and content tokens of a :func:`pos_table`."""
    sub = _function_content(table)
    values = sub["pref"].to_numpy(float)
    is_function = (sub["word_class"] == "function").to_numpy()
    require(is_function.any() and (~is_function).any(), "the table needs function "
            "and content tokens; is the UD tokenizer the run's tokenizer?")
    effect = effect_size(values[is_function], values[~is_function])
    bins = frequency_bins(sub["log_count"].to_numpy(), n_bins)
    binned = float(class_difference(values, is_function, bins))
    pooled = pooled_sd(values[is_function], values[~is_function])
    return ClassEffect(
        n_function=int(is_function.sum()), n_content=int((~is_function).sum()),
        mean_function=float(values[is_function].mean()),
        mean_content=float(values[~is_function].mean()), **effect,
        p_value=permutation_p(values, is_function, None, n_perm, seed),
        n_bins=int(bins.max() + 1), binned_diff=binned,
        binned_d=float(binned / pooled) if pooled else float("nan"),
        p_binned=permutation_p(values, is_function, bins, n_perm, seed))


def binned_effects(table: pd.DataFrame, n_bins: int = 5) -> pd.DataFrame:
    """Per frequency bin: token counts, mean pref of each class, their difference."""
    sub = _function_content(table)
    bins = frequency_bins(sub["log_count"].to_numpy(), n_bins)
    rows = []
    for b in range(bins.max() + 1):
        part = sub[bins == b]
        f, c = (part.loc[part["word_class"] == k, "pref"] for k in ("function",
                                                                    "content"))
        rows.append({"bin": b, "min count": int(part["count"].min()),
                     "max count": int(part["count"].max()), "n function": len(f),
                     "n content": len(c), "mean function": f.mean(),
                     "mean content": c.mean(), "difference": f.mean() - c.mean()})
    return pd.DataFrame(rows)


# --- features per tower and layer for the probes --------------------------------------


def probe_layers(model) -> dict[int, str]:
    """Layer number -> hook point of each tower's output at that layer.

    Transformers: the residual stream after each block (1..L). The biLM exposes only
    the output of its LSTM stacks (layer L).
    """
    if model.cfg.family == "bilm":
        return {model.cfg.n_layers: "tower_out"}
    return {i + 1: f"towers.blocks.{i}.resid_post" for i in range(model.cfg.n_layers)}


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


@torch.no_grad()
def tower_layer_vectors(model, tokenizer, sentences: Sequence[Sentence], *,
                        batch_size: int = 32
                        ) -> tuple[list[Sentence], dict[tuple[str, int], list]]:
    """Word vectors of every sentence for every tower and probed layer.

    Returns:
        ``(kept sentences, {(tower "A"/"B", layer): [(n_words, D) arrays]})``, one
        array per kept sentence (see :func:`encode_sentences`).
    """
    model.eval()
    kept, ids, word_ids = encode_sentences(sentences, tokenizer, model.cfg.max_len)
    layers = probe_layers(model)
    towers = "AB"[:model.n_towers]
    out = {(t, layer): [] for t in towers for layer in layers}
    for start in range(0, len(kept), batch_size):
        chunk = ids[start:start + batch_size]
        batch = torch.full((len(chunk), max(map(len, chunk))), model.cfg.pad_id,
                           dtype=torch.long)
        for b, row in enumerate(chunk):
            batch[b, :len(row)] = torch.as_tensor(row)
        _, cache = model.run_with_cache(batch.to(model.device),
                                        names=list(layers.values()))
        for b, row in enumerate(chunk):
            for layer, name in layers.items():
                for k, tower in enumerate(towers):
                    h = cache[name][k, b, :len(row)].float().cpu()  # (T, D)
                    out[tower, layer].append(
                        word_vectors(h, word_ids[start + b]).numpy())
    return kept, out


# --- probes per tower and layer -------------------------------------------------------


def probe_towers(vectors: dict[tuple[str, int], list], sentences: Sequence[Sentence],
                 n_train: int, *, tasks: Sequence[str] = ("distance", "depth"),
                 rank: int = 64, epochs: int = 30, lr: float = 1e-3, seed: int = 0
                 ) -> tuple[pd.DataFrame, dict[tuple[str, int], np.ndarray]]:
    """Fit a probe per tower, layer and task; the first ``n_train`` sentences train it.

    The probes' matrices are tiny, so they train on one CPU thread (on a busy machine
    more threads only wait for each other).

    Returns:
        ``(table, uuas_counts)``: the table has one row per (tower, layer, task) with
        ``spearman`` (averaged over sentence lengths 5-50), ``uuas`` and
        ``root_accuracy``; ``uuas_counts[(tower, layer)]`` is an (n_test, 2) array of
        gold edges found and gold edges per test sentence (distance probe), for
        :func:`uuas_difference`.
    """
    train_s, test_s = list(sentences[:n_train]), list(sentences[n_train:])
    require(train_s and test_s, "probe_towers needs training and test sentences")
    position = {id(s): i for i, s in enumerate(sentences)}
    rows, counts = [], {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for (tower, layer), vecs in vectors.items():
            def features(batch, vecs=vecs):
                return [vecs[position[id(s)]] for s in batch]

            for task in tasks:
                probe, scores = structural_probe(
                    features, train_s, test_s, task=task, lr=lr, seed=seed,
                    rank=min(rank, vecs[0].shape[1]), epochs=epochs)
                rows.append({"tower": tower, "layer": layer, "task": task,
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
        pred = probe(torch.as_tensor(np.asarray(v), dtype=torch.float32)[None])[0]
        keep = np.array([u != "PUNCT" for u in sentence.upos])
        out.append(uuas_counts(pred.double().numpy(), sentence.heads, keep))
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def uuas_difference(counts_a: np.ndarray, counts_b: np.ndarray, n_boot: int = 1000,
                    seed: int = 0) -> tuple[float, float, float]:
    """UUAS of A minus UUAS of B (micro averages), with a paired bootstrap over
    sentences. Returns ``(difference, low, high)``."""
    a, b = np.asarray(counts_a, float), np.asarray(counts_b, float)
    require(a.shape == b.shape, "both towers must be scored on the same sentences")

    def micro(c, idx):
        return c[idx, 0].sum(-1) / np.maximum(c[idx, 1].sum(-1), 1)

    diff = float(micro(a, np.arange(len(a))) - micro(b, np.arange(len(b))))
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    lo, hi = np.quantile(micro(a, idx) - micro(b, idx), [0.025, 0.975])
    return diff, float(lo), float(hi)


# --- the report a run keeps -----------------------------------------------------------


ProbeResult = tuple[pd.DataFrame, dict[tuple[str, int], np.ndarray]]  # probe_towers


def save_probe_report(run_dir: str | Path, trained: ProbeResult,
                      untrained: ProbeResult | None = None, **extra) -> Path:
    """Write chapter 10's probe results next to the run (``probes.json``).

    Args:
        trained: :func:`probe_towers` of the trained model.
        untrained: the same for the untrained model of the same shape.
        extra: other JSON-able facts (e.g. the number of sentences).
    """
    def encode(result):
        if result is None:
            return None
        table, counts = result
        return {"table": table.to_dict("records"),
                "uuas_counts": {f"{t}:{layer}": c.tolist()
                                for (t, layer), c in counts.items()}}

    report = {"trained": encode(trained), "untrained": encode(untrained), **extra}
    path = Path(run_dir) / PROBE_REPORT
    path.write_text(json.dumps(report, indent=1, default=float), encoding="utf-8")
    return path


def load_probe_report(run_dir: str | Path) -> dict | None:
    """The report of :func:`save_probe_report` (results as :data:`ProbeResult`), or
    None if chapter 10 has not run on this run directory."""
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
    return report


def probe_summary(trained: ProbeResult, untrained: ProbeResult | None = None,
                  n_boot: int = 1000, seed: int = 0) -> dict:
    """Which tower holds more of the tree, at the layer where the towers hold most.

    Returns:
        ``best_layer`` (highest mean UUAS of the two towers), ``uuas_a``, ``uuas_b``,
        ``diff``/``low``/``high`` (:func:`uuas_difference` of A and B there) and, with
        ``untrained``, ``vs_untrained``/``vs_low``/``vs_high``: UUAS of both towers
        together minus the untrained model's at the same layer.
    """
    table, counts = trained
    dist = table[table["task"] == "distance"]
    best = int(dist.groupby("layer")["uuas"].mean().idxmax())
    uuas = dist[dist["layer"] == best].set_index("tower")["uuas"]
    diff, lo, hi = uuas_difference(counts["A", best], counts["B", best], n_boot, seed)
    out = {"best_layer": best, "uuas_a": float(uuas["A"]), "uuas_b": float(uuas["B"]),
           "diff": diff, "low": lo, "high": hi}
    if untrained is not None:
        both = counts["A", best] + counts["B", best]
        base = untrained[1]["A", best] + untrained[1]["B", best]
        out["vs_untrained"], out["vs_low"], out["vs_high"] = uuas_difference(
            both, base, n_boot, seed)
    return out


def class_effect_dict(effect: ClassEffect) -> dict:
    """A :class:`ClassEffect` as plain JSON-able numbers."""
    return {**asdict(effect), "function_tower": effect.function_tower}
