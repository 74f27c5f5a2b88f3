"""A language with a planted division: two independent processes in one token stream.

Introduced in chapter 2 (*A language with a planted division*).

Real text mixes regularities of different kinds, and nobody knows where the line between
them runs. This module writes a language where we do know. Two processes with disjoint
vocabularies take turns, a fair-ish coin deciding at every position which one emits:

- the **local** process is a sparse first-order Markov chain over its own ids (a tiny
  grammar): its next token is predictable from *its* previous token, one look back;
- the **topic** process draws words from the distribution of a hidden topic that
  rarely changes along a window: a word is predictable from the topic, which only the
  long-range context reveals, hardly from the previous token.

Ids 0..4 are the special tokens (PAD, UNK, CLS, SEP, MASK) of the rest of the book,
every window starts with CLS, then come ``n_local`` local ids and ``n_topic_words``
topic ids. A model that divides its work along the planted line would give one tower
the local process and the other the topic process;
:func:`twotower.analysis.planted_split.planted_split_score` measures how far the
measured preference follows that line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotower.errors import TwotowerError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SPECIAL_IDS = tuple(range(len(SPECIAL_TOKENS)))
CLS_ID = 2
LABELS = ("special", "local", "topic")  # values of :attr:`PlantedLanguage.labels`


@dataclass(frozen=True)
class PlantedLanguageConfig:
    """Shape of the planted language. ``seed`` fixes the grammar and the topics only;
    which windows are drawn is the ``seed`` of :meth:`PlantedLanguage.sample`."""

    n_local: int = 24  # ids of the local (grammar-like) process
    local_successors: int = 2  # local tokens that may follow each local token
    n_topic_words: int = 48  # ids of the topic process
    n_topics: int = 8  # hidden topics
    topic_core: int = 12  # words each topic favours (cores of topics overlap)
    topic_core_mass: float = 0.85  # share of a topic's draws that are its core words
    p_topic: float = 0.5  # probability that a position is emitted by the topic process
    topic_switch: float = 0.01  # per-position probability of drawing a new topic
    window: int = 64  # tokens per window, CLS included
    seed: int = 0  # the grammar and the topics

    def validate(self) -> "PlantedLanguageConfig":
        """Return ``self`` or raise :class:`TwotowerError` naming the bad field."""
        if not 1 <= self.local_successors <= self.n_local:
            raise TwotowerError(f"local_successors must be in 1..n_local "
                                f"({self.n_local}), got {self.local_successors}")
        if not 1 <= self.topic_core <= self.n_topic_words:
            raise TwotowerError(f"topic_core must be in 1..n_topic_words "
                                f"({self.n_topic_words}), got {self.topic_core}")
        if self.n_topics < 1 or self.window < 2:
            raise TwotowerError("need n_topics >= 1 and window >= 2")
        for name in ("topic_core_mass", "p_topic", "topic_switch"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise TwotowerError(f"{name} must be a probability, got "
                                    f"{getattr(self, name)}")
        return self


@dataclass(frozen=True)
class PlantedSample:
    """Windows of the planted language and the hidden states that made them.

    Attributes:
        windows: ``(N, T)`` int64 token ids, column 0 is CLS.
        process: ``(N, T)`` int8, the label index (:data:`LABELS`) of each position's
            emitter: 0 for CLS, 1 local, 2 topic.
        topic: ``(N, T)`` int16, the hidden topic at each position.
    """

    windows: np.ndarray
    process: np.ndarray
    topic: np.ndarray


def _draw(rng: np.random.Generator, cdf: np.ndarray) -> np.ndarray:
    """One categorical draw per row of ``cdf (N, C)`` (cumulative probabilities)."""
    u = rng.random(cdf.shape[0])[:, None] * cdf[:, -1:]
    return np.minimum((u >= cdf).sum(1), cdf.shape[1] - 1)


def _irreducible(edges: np.ndarray) -> bool:
    """Whether every node of the directed graph ``edges (L, L)`` reaches every other."""
    reach = edges | np.eye(len(edges), dtype=bool)
    for _ in range(int(np.ceil(np.log2(len(edges)))) + 1):  # paths of length 2^k
        reach = reach | ((reach.astype(int) @ reach.astype(int)) > 0)
    return bool(reach.all())


class PlantedLanguage:
    """The grammar and topics of one :class:`PlantedLanguageConfig`.

    Attributes:
        transition: ``(L, L)`` local Markov chain, row = previous local token.
        topic_words: ``(K, W)`` each topic's distribution over the topic words.
        vocab_size: V = 5 + L + W.
        labels: ``(V,)`` str, ``"special"``, ``"local"`` or ``"topic"`` per id.
        tokens: ``(V,)`` str, readable names (``L07`` local, ``t12`` topic).
    """

    def __init__(self, cfg: PlantedLanguageConfig = PlantedLanguageConfig()):
        self.cfg = cfg.validate()
        rng = np.random.default_rng([cfg.seed, 2022])
        L, W, K = cfg.n_local, cfg.n_topic_words, cfg.n_topics
        # Local grammar: every token gets `local_successors` random successors with
        # uneven weights, like a real grammar's; a permutation makes each token some
        # token's successor, and a grammar is redrawn until every token can reach
        # every other (an irreducible chain: no token dies out along a window).
        while True:
            successor = rng.permutation(L)
            self.transition = np.zeros((L, L))
            for i in range(L):
                others = rng.permutation(np.setdiff1d(np.arange(L), successor[i]))
                nxt = np.r_[successor[i], others[: cfg.local_successors - 1]]
                self.transition[i, nxt] = rng.dirichlet(np.full(nxt.size, 2.0))
            if _irreducible(self.transition > 0):
                break
        self.topic_words = np.full((K, W), (1 - cfg.topic_core_mass) / W)
        for k in range(K):
            core = rng.choice(W, cfg.topic_core, replace=False)
            self.topic_words[k, core] += cfg.topic_core_mass / cfg.topic_core
        self.n_special = len(SPECIAL_TOKENS)
        self.vocab_size = self.n_special + L + W
        self.local_ids = np.arange(self.n_special, self.n_special + L)
        self.topic_ids = np.arange(self.n_special + L, self.vocab_size)
        self.labels = np.array(["special"] * self.n_special + ["local"] * L
                               + ["topic"] * W)
        self.tokens = np.array(list(SPECIAL_TOKENS) + [f"L{i:02d}" for i in range(L)]
                               + [f"t{i:02d}" for i in range(W)])

    def sample(self, n_windows: int, seed: int = 0) -> PlantedSample:
        """Draw ``n_windows`` windows of ``cfg.window`` tokens (deterministic in seed).

        One loop over the T positions, vectorised over the N windows.
        """
        cfg, rng = self.cfg, np.random.default_rng([seed, 1])
        N, T, L, K = n_windows, cfg.window, cfg.n_local, cfg.n_topics
        local_cdf = np.cumsum(self.transition, 1)
        topic_cdf = np.cumsum(self.topic_words, 1)
        windows = np.full((N, T), CLS_ID, dtype=np.int64)
        process = np.zeros((N, T), dtype=np.int8)
        topic = np.zeros((N, T), dtype=np.int16)
        current = rng.integers(0, K, N)  # (N,) hidden topic
        last = rng.integers(0, L, N)  # (N,) local state before the first local token
        for t in range(1, T):
            switch = rng.random(N) < cfg.topic_switch
            current = np.where(switch, rng.integers(0, K, N), current)
            is_topic = rng.random(N) < cfg.p_topic
            local_next = _draw(rng, local_cdf[last])
            word = _draw(rng, topic_cdf[current])
            last = np.where(is_topic, last, local_next)
            windows[:, t] = np.where(is_topic, self.topic_ids[word],
                                     self.local_ids[last])
            process[:, t] = np.where(is_topic, 2, 1)
            topic[:, t] = current
        topic[:, 0] = topic[:, 1]
        return PlantedSample(windows, process, topic)

    def decode(self, window: np.ndarray) -> str:
        """Readable text of one ``(T,)`` window."""
        return " ".join(self.tokens[np.asarray(window)])

    def oracle_log_probs(self, windows: np.ndarray) -> np.ndarray:
        """Log-probability of every next token under the true generator.

        The topic is tracked by exact Bayesian filtering (the forward algorithm of the
        hidden topic chain), so this is the best any causal model can do.

        Args:
            windows: ``(N, T)`` windows drawn by :meth:`sample`.

        Returns:
            ``(N, T - 1)`` log p(x_t | x_<t) for t = 1..T-1.
        """
        cfg = self.cfg
        windows = np.asarray(windows)
        N, T = windows.shape
        K, L, s = cfg.n_topics, cfg.n_local, cfg.topic_switch
        belief = np.full((N, K), 1.0 / K)  # (N, K) posterior over the hidden topic
        last = np.full(N, -1)  # the previous local token, -1 before the first
        out = np.empty((N, T - 1))
        for t in range(1, T):
            belief = (1 - s) * belief + s / K
            ids = windows[:, t]
            is_topic = ids >= self.topic_ids[0]
            word = np.clip(ids - self.topic_ids[0], 0, None)
            local = np.clip(ids - self.local_ids[0], 0, L - 1)
            column = np.minimum(word, cfg.n_topic_words - 1)
            emit = self.topic_words[:, column].T  # (N, K)
            p_word = (belief * emit).sum(1)
            # before the first local token the chain's state is uniform (see sample)
            p_local = np.where(last >= 0, self.transition[np.maximum(last, 0), local],
                               self.transition.mean(0)[local])
            with np.errstate(divide="ignore"):  # a forbidden successor: log 0
                out[:, t - 1] = np.log(np.where(is_topic, cfg.p_topic * p_word,
                                                (1 - cfg.p_topic) * p_local))
            posterior = belief * emit / p_word[:, None]
            belief = np.where(is_topic[:, None], posterior, belief)
            last = np.where(is_topic, last, local)
        return out


def conditional_entropies(sample: PlantedSample, vocab_size: int) -> pd.DataFrame:
    """Plug-in entropies (nats) of the tokens of each process, from counts.

    For the positions emitted by each process: ``H(x)`` (the token alone),
    ``H(x | previous token)`` and ``H(x | hidden topic)``. The local process should drop
    a lot given the previous token; the topic process given the topic, not the previous
    token.

    Returns:
        DataFrame indexed by process (``local``, ``topic``) with those three columns.
    """
    x = sample.windows[:, 1:].ravel()
    prev = sample.windows[:, :-1].ravel()
    proc = sample.process[:, 1:].ravel()
    topic = sample.topic[:, 1:].ravel().astype(np.int64)

    def entropy(condition: np.ndarray, target: np.ndarray) -> float:
        joint = np.bincount(condition * vocab_size + target).astype(float)
        marginal = np.bincount(condition).astype(float)
        joint, marginal = joint[joint > 0], marginal[marginal > 0]
        n = target.size
        return float(-(joint / n * np.log(joint / n)).sum()
                     + (marginal / n * np.log(marginal / n)).sum())

    rows = {}
    for index, name in enumerate(LABELS[1:], start=1):
        here = proc == index
        rows[name] = {"H(x)": entropy(np.zeros(here.sum(), dtype=np.int64), x[here]),
                      "H(x | previous token)": entropy(prev[here], x[here]),
                      "H(x | topic)": entropy(topic[here], x[here])}
    return pd.DataFrame(rows).T
