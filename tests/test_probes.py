"""Tests of the structural probes and their metrics in twotower.analysis.probes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import connected_components
from scipy.stats import spearmanr

from twotower.errors import TwotowerError
from twotower.data.ud import (
    Sentence,
    load_ud,
    tree_depths,
    tree_distances,
    ud_english_ewt_paths,
)
from twotower.analysis.probes import (
    DepthProbe,
    DistanceProbe,
    evaluate_probe,
    make_probe_batches,
    pad_probe_batch,
    probe_loss,
    structural_probe,
    train_probe,
    word_vectors,
)
from twotower.analysis.tree_metrics import (
    depth_spearman,
    distance_spearman,
    keep_mask,
    root_accuracy,
    uuas,
    uuas_counts,
)
from twotower.analysis.tree_baselines import (
    baseline_uuas_counts,
    chain_distances,
    random_tree_distances,
    random_tree_edges,
)

CHAIN = np.array([2, 0, 2, 3])  # 1 - 2 - 3 - 4, rooted at word 2
STAR = np.array([0, 1, 1, 1])  # words 2, 3, 4 hang from word 1


def random_heads(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random recursive tree on n words, its nodes shuffled into word order."""
    parent = [-1] + [int(rng.integers(0, node)) for node in range(1, n)]
    position = rng.permutation(n)
    heads = np.zeros(n, dtype=np.int64)
    for node in range(1, n):
        heads[position[node]] = position[parent[node]] + 1
    return heads


# --- metrics, checked by hand ------------------------------------------------------


def test_uuas_finds_two_of_three_chain_edges():
    pred = np.full((4, 4), 5.0)
    np.fill_diagonal(pred, 0.0)
    for i, j in [(0, 1), (1, 2), (1, 3)]:  # the predicted tree: 2 gold edges + (2, 4)
        pred[i, j] = pred[j, i] = 1.0
    assert uuas(pred, CHAIN) == pytest.approx(2 / 3)
    assert uuas_counts(pred, CHAIN) == (2, 3)


def test_uuas_of_a_chain_prediction_on_a_star_is_one_third():
    chain_pred = np.abs(np.subtract.outer(np.arange(4), np.arange(4))).astype(float)
    assert uuas(chain_pred, STAR) == pytest.approx(1 / 3)  # only edge 1 - 2 is shared
    assert uuas(chain_pred, CHAIN) == 1.0


def test_uuas_counts_zero_and_tiny_distances_as_edges():
    # scipy treats (near-)zero entries as "no edge": the gold edges here are exactly 0
    gold = tree_distances(STAR).astype(float)
    assert uuas(gold - 1.0, STAR) == 1.0
    assert uuas(gold * 1e-12, STAR) == 1.0
    assert uuas(np.zeros((4, 4)), STAR) <= 1.0  # all ties: some tree, no crash


def test_uuas_is_nan_without_edges_and_can_leave_out_words():
    assert math.isnan(uuas(np.zeros((1, 1)), np.array([0])))
    heads = np.array([2, 0, 2, 2])  # word 4 is punctuation hanging from the root
    pred = tree_distances(heads).astype(float)
    pred[0, 3] = pred[3, 0] = 0.5  # would pull "4" into the tree via word 1
    assert uuas_counts(pred, heads) == (2, 3)
    assert uuas_counts(pred, heads, keep=np.array([1, 1, 1, 0], bool)) == (2, 2)


def test_uuas_rejects_wrong_shapes_and_nan():
    with pytest.raises(TwotowerError):
        uuas(np.zeros((3, 3)), CHAIN)
    with pytest.raises(TwotowerError, match="NaN"):
        uuas(np.full((4, 4), np.nan), CHAIN)


def test_distance_spearman_matches_a_hand_computation():
    gold = tree_distances(np.array([2, 0, 2]))  # [[0,1,2],[1,0,1],[2,1,0]]
    pred = np.array([[0, 1, 3], [1, 0, 2], [3, 2, 0]], dtype=float)
    # rows 1 and 3 rank alike (1.0); row 2: ranks (2.5, 1, 2.5) vs (2, 1, 3), centred
    # (.5, -1, .5) . (0, -1, 1) = 1.5 over sqrt(1.5) sqrt(2): sqrt(3) / 2
    assert distance_spearman(pred, gold) == pytest.approx((2 + math.sqrt(3) / 2) / 3)
    pred[0] = 0.0  # a constant row has no rank correlation and is skipped
    assert distance_spearman(pred, gold) == pytest.approx((1 + math.sqrt(3) / 2) / 2)
    assert math.isnan(distance_spearman(np.zeros((1, 1)), np.zeros((1, 1))))


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 12), st.integers(0, 2**31))
def test_distance_spearman_agrees_with_scipy_row_by_row(n, seed):
    rng = np.random.default_rng(seed)
    pred = rng.random((n, n))
    gold = tree_distances(random_heads(rng, n))
    expected = np.mean([spearmanr(pred[i], gold[i])[0] for i in range(n)])
    assert distance_spearman(pred, gold) == pytest.approx(expected)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 15), st.integers(0, 2**31))
def test_any_increasing_map_of_gold_distances_scores_perfectly(n, seed):
    rng = np.random.default_rng(seed)
    heads = random_heads(rng, n)
    pred = 3.0 * tree_distances(heads).astype(float) ** 2 - 7.0
    assert uuas(pred, heads) == 1.0
    assert distance_spearman(pred, tree_distances(heads)) == pytest.approx(1.0)
    assert root_accuracy(tree_depths(heads) + 0.5, heads) == 1.0


def test_depth_spearman_and_root_accuracy_by_hand():
    heads = np.array([2, 0, 2])  # depths (1, 0, 1)
    assert depth_spearman(np.array([1.0, 0.2, 3.0]), tree_depths(heads)) == (
        pytest.approx(math.sqrt(3) / 2))  # ranks (2.5, 1, 2.5) vs (2, 1, 3)
    assert depth_spearman(np.array([0.1, 0.5, 2.0]), np.array([0, 1, 2])) == 1.0
    assert depth_spearman(np.array([1.0, 2.0, 3.0]), np.array([3, 2, 1])) == -1.0
    assert math.isnan(depth_spearman(np.ones(3), tree_depths(heads)))
    assert root_accuracy(np.array([1.0, 0.0, 2.0]), heads) == 1.0
    assert root_accuracy(np.array([0.0, 1.0, 2.0]), heads) == 0.0
    assert root_accuracy(np.array([0.0, 1.0, 2.0]), heads, keep=np.array([0, 1, 1],
                                                                          bool)) == 1.0


# --- probes ------------------------------------------------------------------------


def test_distance_probe_predicts_squared_projected_distances():
    probe = DistanceProbe(6, rank=3, seed=1)
    h = torch.randn(2, 5, 6)
    z = h @ probe.proj
    brute = ((z[:, :, None, :] - z[:, None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(probe.predict(h), brute, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(DepthProbe(6, 3, seed=1).predict(h), (z**2).sum(-1))


def test_padding_changes_neither_the_loss_nor_its_normalisation():
    rng = np.random.default_rng(0)
    heads = [random_heads(rng, 3), random_heads(rng, 7)]
    vectors = [rng.standard_normal((len(h), 4)) for h in heads]
    for probe in (DistanceProbe(4, 2), DepthProbe(4, 2)):
        (both,) = make_probe_batches(vectors, heads, batch_size=2)
        alone = [make_probe_batches([v], [h])[0] for v, h in zip(vectors, heads)]
        expected = (probe_loss(probe, alone[0]) + probe_loss(probe, alone[1])) / 2
        torch.testing.assert_close(probe_loss(probe, both), expected)
    assert both.features.shape == (2, 7, 4) and both.mask.sum() == 10


def test_pad_probe_batch_rejects_targets_of_the_wrong_size():
    with pytest.raises(TwotowerError, match="targets"):
        pad_probe_batch([np.zeros((3, 2))], [np.zeros((2, 2))], [np.zeros(3)])


def test_word_vectors_average_subwords_and_drop_special_tokens():
    subwords = np.arange(10, dtype=np.float32).reshape(5, 2)  # [CLS] a b c [SEP]
    words = word_vectors(subwords, [None, 0, 0, 1, None])
    np.testing.assert_allclose(words, [[3.0, 4.0], [6.0, 7.0]])
    as_tensor = word_vectors(torch.from_numpy(subwords), np.array([-1, 0, 0, 1, -1]))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == (2, 2)
    with pytest.raises(TwotowerError, match="no subword"):
        word_vectors(subwords, [0, 0, 2, 2, 2])


# --- probes recover a planted tree ---------------------------------------------------

SYNTAX_DIM, NOISE_DIM = 24, 40


def planted_vectors(rng, heads, rotation):
    """Word vectors whose first SYNTAX_DIM coordinates, before ``rotation``, embed the
    tree exactly: a word is the sum of orthonormal edge vectors on its path from the
    root, so squared distance is tree distance and squared norm is depth."""
    n = len(heads)
    edges, _ = np.linalg.qr(rng.standard_normal((SYNTAX_DIM, n)))  # (S, n) orthonormal
    syntax = np.zeros((n, SYNTAX_DIM))
    for word in np.argsort(tree_depths(heads), kind="stable"):  # parents first
        if heads[word]:
            syntax[word] = syntax[heads[word] - 1] + edges[:, word]
    noise = rng.standard_normal((n, NOISE_DIM))
    return np.concatenate([syntax, noise], axis=1) @ rotation


@pytest.fixture(autouse=True)
def one_torch_thread():
    # these tensors are tiny: on a busy 2-core machine, threads only add waiting
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    dim = SYNTAX_DIM + NOISE_DIM
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    sentences = []
    for _ in range(150):
        n = int(rng.integers(6, 17))
        sentences.append(Sentence([f"w{i}" for i in range(n)], ["NOUN"] * n,
                                  random_heads(rng, n)))
    vectors = {id(s): planted_vectors(rng, s.heads, rotation) for s in sentences}
    shuffled = {key: v[rng.permutation(len(v))] for key, v in vectors.items()}
    return sentences, vectors, shuffled


@pytest.mark.parametrize("task", ["distance", "depth"])
def test_probe_recovers_a_planted_tree_and_not_a_shuffled_one(planted, task):
    sentences, vectors, shuffled = planted
    train, test = sentences[:110], sentences[110:]
    options = dict(task=task, rank=32, epochs=40, lr=1e-2, batch_size=25)
    _, scores = structural_probe(lambda ss: [vectors[id(s)] for s in ss],
                                 train, test, **options)
    _, control = structural_probe(lambda ss: [shuffled[id(s)] for s in ss],
                                  train, test, **options)
    assert scores.n_sentences == 40 and scores.task == task
    assert set(scores.spearman_by_length) <= set(range(6, 17))
    assert scores.spearman > 0.85 and control.spearman < 0.5
    if task == "distance":
        assert scores.uuas > 0.9 and control.uuas < 0.5
        assert math.isnan(scores.root_accuracy)
    else:
        assert scores.root_accuracy > 0.9 and control.root_accuracy < 0.5
        assert math.isnan(scores.uuas)


def test_probe_training_is_deterministic_in_its_seed(planted):
    sentences, vectors, _ = planted
    batches = make_probe_batches([vectors[id(s)] for s in sentences[:40]],
                                 [s.heads for s in sentences[:40]], batch_size=10)
    runs = []
    for _ in range(2):
        probe = DistanceProbe(SYNTAX_DIM + NOISE_DIM, rank=8, seed=3)
        fit = train_probe(probe, batches, epochs=3, lr=1e-2, seed=5)
        runs.append((fit.train_loss, probe))
        assert fit.epochs == 3 and fit.dev_loss == []  # no dev set: every epoch kept
    assert runs[0][0] == runs[1][0] and runs[0][0][-1] < runs[0][0][0]
    torch.testing.assert_close(runs[0][1].proj, runs[1][1].proj, rtol=0, atol=0)


def test_evaluate_probe_rejects_features_of_the_wrong_length(planted):
    sentences, vectors, _ = planted
    probe = DepthProbe(SYNTAX_DIM + NOISE_DIM, rank=4)
    with pytest.raises(TwotowerError, match="one vector per UD word"):
        evaluate_probe(probe, [vectors[id(sentences[0])][:-1]], sentences[:1])
    with pytest.raises(TwotowerError, match="one per sentence"):
        evaluate_probe(probe, [], sentences[:1])


def test_early_stopping_keeps_the_epoch_of_lowest_dev_loss(planted):
    sentences, vectors, _ = planted
    dim = SYNTAX_DIM + NOISE_DIM
    batches = make_probe_batches([vectors[id(s)] for s in sentences[:40]],
                                 [s.heads for s in sentences[:40]], batch_size=10)
    # one-word dev sentences have depth 0: any depth the probe learns is dev error, so
    # the dev loss must rise once training makes the probe's norms grow
    rng = np.random.default_rng(1)
    dev = make_probe_batches([rng.standard_normal((1, dim)) for _ in range(10)],
                             [np.array([0])] * 10, batch_size=5)
    stopped = DepthProbe(dim, rank=8, seed=3)
    fit = train_probe(stopped, batches, epochs=8, lr=1e-2, seed=5, dev_batches=dev)
    assert len(fit.dev_loss) == len(fit.train_loss) == 8
    assert fit.epochs == int(np.argmin(fit.dev_loss)) + 1 < 8
    short = DepthProbe(dim, rank=8, seed=3)  # the same run, stopped by hand
    train_probe(short, batches, epochs=fit.epochs, lr=1e-2, seed=5)
    torch.testing.assert_close(stopped.proj, short.proj, rtol=0, atol=0)
    with torch.no_grad():
        dev_loss = np.mean([probe_loss(stopped, b).item() for b in dev])
    assert dev_loss == pytest.approx(min(fit.dev_loss))


def test_structural_probe_reports_the_epochs_it_kept(planted):
    sentences, vectors, _ = planted
    features = lambda ss: [vectors[id(s)] for s in ss]  # noqa: E731
    _, fixed = structural_probe(features, sentences[:60], sentences[60:80],
                                rank=8, epochs=4, lr=1e-2)
    _, stopped = structural_probe(features, sentences[:60], sentences[60:80],
                                  rank=8, epochs=4, lr=1e-2,
                                  dev_sentences=sentences[80:100])
    assert fixed.epochs == 4 and 1 <= stopped.epochs <= 4


# --- trees drawn without vectors: the baselines a probe must beat ---------------------


def sentence(heads, upos=None) -> Sentence:
    n = len(heads)
    return Sentence([f"w{i}" for i in range(n)], upos or ["NOUN"] * n, np.array(heads))


def chain_uuas(s: Sentence, ignore_punct: bool = True) -> float:
    counts = baseline_uuas_counts([s], "chain", ignore_punct=ignore_punct)
    return counts[0, 0] / counts[0, 1]


def test_the_chain_finds_every_edge_of_a_chain_and_one_of_a_star():
    assert chain_uuas(sentence([0, 1, 2, 3, 4, 5])) == 1.0  # right-branching chain
    assert chain_uuas(sentence([2, 3, 4, 5, 0])) == 1.0  # left-branching: same edges
    assert chain_uuas(sentence([0, 1, 1, 1, 1, 1, 1])) == 1 / 6  # star: only 1 - 2
    assert chain_uuas(sentence([4, 4, 4, 0, 4, 4, 4])) == 2 / 6  # 3 - 4 and 4 - 5
    assert uuas(chain_distances(4), STAR) == pytest.approx(1 / 3)


def test_the_chain_skips_punctuation_as_the_probes_do():
    s = sentence([0, 1, 1], ["NOUN", "PUNCT", "NOUN"])  # w0 , w2: gold w0-, w0-w2
    assert keep_mask(s).tolist() == [True, False, True]
    assert keep_mask(s, ignore_punct=False) is None
    assert chain_uuas(s) == 1.0  # kept words w0, w2: the chain is w0 - w2
    assert chain_uuas(s, ignore_punct=False) == 0.5  # w0 - , - w2


@pytest.mark.slow
def test_the_chain_scores_0_430_on_ud_english_ewt_test():
    _, test_path = ud_english_ewt_paths()
    counts = baseline_uuas_counts(load_ud(test_path), "chain")
    found, total = counts.sum(0)
    print(f"chain UUAS on EWT test: {found:.0f} / {total:.0f} = {found / total:.4f}")
    assert (found, total) == (8589, 19952) and round(found / total, 3) == 0.430


class FixedSequence:
    """Stands in for a numpy Generator: ``integers`` returns one chosen sequence."""

    def __init__(self, sequence):
        self.sequence = np.asarray(sequence)

    def integers(self, low, high, size):
        assert len(self.sequence) == size and self.sequence.max(initial=0) < high
        return self.sequence


def test_random_trees_are_uniform_over_all_labelled_trees():
    # the k^(k-2) Pruefer sequences, drawn uniformly, must decode to k^(k-2) distinct
    # spanning trees (a bijection), so that every labelled tree is equally likely
    k = 5
    trees = set()
    for sequence in itertools.product(range(k), repeat=k - 2):
        edges = random_tree_edges(k, FixedSequence(sequence))
        graph = np.zeros((k, k))
        for a, b in edges:
            graph[a, b] = graph[b, a] = 1
        assert len(edges) == k - 1 and connected_components(graph)[0] == 1
        trees.add(frozenset(frozenset(e) for e in edges))
    assert len(trees) == k ** (k - 2) == 125  # Cayley's formula
    rng = np.random.default_rng(0)
    drawn = {frozenset(frozenset(e) for e in random_tree_edges(k, rng))
             for _ in range(2000)}
    assert drawn == trees  # a real generator reaches every one of them


def test_a_random_tree_finds_two_in_k_gold_edges_among_k_kept_words():
    # six words, one of them punctuation: k = 5 kept words, 4 gold edges among them
    s = sentence([0, 1, 2, 3, 4, 5], ["NOUN"] * 5 + ["PUNCT"])
    n_draws = 1500
    counts = baseline_uuas_counts([s], "random", n_draws=n_draws, seed=0)
    assert counts[0, 1] == 4
    # found lies in [0, 4], so its standard deviation is at most 2 per draw
    assert abs(counts[0, 0] / 4 - 2 / 5) < 4 * (2 / 4) / np.sqrt(n_draws)
    again = baseline_uuas_counts([s], "random", n_draws=n_draws, seed=0)
    np.testing.assert_array_equal(counts, again)  # a fixed seed, the same trees


def test_random_tree_distances_span_only_the_kept_words():
    keep = np.array([1, 0, 1, 1, 0, 1], bool)
    pred = random_tree_distances(6, np.random.default_rng(3), keep)
    kept = np.flatnonzero(keep)
    assert (pred[np.ix_(kept, kept)] == 1).sum() == 2 * (len(kept) - 1)
    assert (pred[1] != 1).all() and (pred[:, 4] != 1).all()
    with pytest.raises(TwotowerError, match="baseline"):
        baseline_uuas_counts([sentence([0, 1])], "left")
