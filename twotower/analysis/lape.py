"""Finding special neurons: language-specific neurons (LAPE) and their activations.

Introduced in the chapter on bilingual two towers. The top section (LAPE) works on plain
arrays of activation probabilities, following Tang et al. 2024 ("Language-Specific
Neurons") and their released selection rule; model-dependent code (hooks, ablations)
follows below it. Shape letters: ``N`` tokens, ``L`` layers, ``M`` FFN neurons per
layer, ``K`` languages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from twotower.errors import require

# ======================================================================================
# LAPE: language activation probability entropy (model-independent)
# ======================================================================================


@dataclass(frozen=True)
class LapeResult:
    """Language-specific neurons selected by LAPE.

    Attributes:
        entropy: shape (L, M), entropy (natural log) of each neuron's activation
            probabilities normalised over languages; ``log K`` for a neuron that never
            fires in any language.
        tau: the activation-probability threshold (a high quantile of all of them).
        selected: int array of shape (S, 3), rows ``(layer, neuron, language)`` sorted
            lexicographically; a neuron appears once for every language in which its
            activation probability exceeds ``tau``.
        n_candidates: neurons with activation probability above ``tau`` in at least one
            language.
        k: how many neurons the rule asked for, ``round(top_fraction * L * M)``.
        n_languages: K.
    """

    entropy: np.ndarray
    tau: float
    selected: np.ndarray
    n_candidates: int
    k: int
    n_languages: int

    def per_layer_counts(self, n_layers: int | None = None,
                         n_languages: int | None = None) -> np.ndarray:
        """Selected neurons per language and layer, shape (K, L).

        Args:
            n_layers: L; defaults to the number of layers LAPE ran on.
            n_languages: K; defaults to the number of languages LAPE ran on.
        """
        n_layers = self.entropy.shape[0] if n_layers is None else n_layers
        n_languages = self.n_languages if n_languages is None else n_languages
        require(n_layers >= self.entropy.shape[0] and n_languages >= self.n_languages,
                f"LAPE ran on {self.entropy.shape[0]} layers and {self.n_languages} "
                f"languages; pass at least that many")
        counts = np.zeros((n_languages, n_layers), dtype=np.int64)
        np.add.at(counts, (self.selected[:, 2], self.selected[:, 0]), 1)
        return counts

    def masks(self) -> np.ndarray:
        """Boolean (K, L, M): True where a neuron belongs to a language.

        ``masks()[k]`` is the set of FFN neurons to zero to deactivate language k.
        """
        n_layers, n_neurons = self.entropy.shape
        mask = np.zeros((self.n_languages, n_layers, n_neurons), dtype=bool)
        layer, neuron, language = self.selected.T
        mask[language, layer, neuron] = True
        return mask


def language_entropy(act_prob: np.ndarray) -> np.ndarray:
    """Entropy of each neuron's activation probabilities normalised over languages.

    Args:
        act_prob: shape (L, M, K), activation probabilities in [0, 1].

    Returns:
        Shape (L, M), natural-log entropy in ``[0, log K]``. A neuron with probability
        0 in every language is given the uniform distribution (entropy ``log K``): it
        says nothing about any language. (The released code sets it to 0, the most
        specific value, and relies on the threshold to filter it out.)
    """
    total = act_prob.sum(axis=-1, keepdims=True)
    n_languages = act_prob.shape[-1]
    normalised = np.where(total > 0, act_prob / np.where(total > 0, total, 1.0),
                          1.0 / n_languages)
    # 0 * log 0 is 0 in the entropy, so only positive entries contribute
    log_p = np.log(np.where(normalised > 0, normalised, 1.0))
    return -np.sum(normalised * log_p, axis=-1)


def activation_threshold(act_prob: np.ndarray, quantile: float) -> float:
    """The ``round(quantile * n)``-th smallest of all activation probabilities.

    This order statistic is what the released code takes (``kthvalue``); it can differ
    from ``np.percentile``'s interpolated value by one step between neighbours.
    """
    flat = np.sort(act_prob, axis=None)
    position = min(max(round(quantile * flat.size), 1), flat.size)
    return float(flat[position - 1])


def lape(act_prob: np.ndarray, top_fraction: float = 0.01,
         tau_quantile: float = 0.95) -> LapeResult:
    """Select language-specific neurons by low LAPE (Tang et al. 2024).

    1. LAPE of each neuron: entropy of its activation probabilities normalised over
       languages (:func:`language_entropy`).
    2. ``tau``: the ``tau_quantile`` quantile of ALL activation probabilities, over
       layers, neurons and languages (:func:`activation_threshold`).
    3. Candidates: neurons whose probability exceeds ``tau`` in at least one language;
       the others cannot be specific to a language they rarely fire in.
    4. Keep the ``k = round(top_fraction * L * M)`` candidates with the lowest LAPE
       (at least one if there is any candidate; all of them if there are fewer than
       k). Ties go to the earlier layer, then the lower neuron index.
    5. A kept neuron belongs to every language in which its probability exceeds
       ``tau``, so one neuron can be specific to two languages out of several.

    Args:
        act_prob: shape (L, M, K), share of language-k tokens on which neuron m of
            layer l has a positive activation (:class:`ActivationCounter`).
        top_fraction: share of all neurons to keep, in (0, 1].
        tau_quantile: quantile of all probabilities used as the threshold, in (0, 1).

    Returns:
        The :class:`LapeResult`.

    Raises:
        TwotowerError: wrong shape, fewer than two languages, values outside [0, 1].
    """
    p = np.asarray(act_prob, dtype=float)
    require(p.ndim == 3, f"act_prob must be (layers, neurons, languages), got shape "
                         f"{p.shape}")
    require(p.shape[0] >= 1 and p.shape[1] >= 1, f"act_prob has no neurons: {p.shape}")
    require(p.shape[2] >= 2, f"LAPE needs at least 2 languages, got {p.shape[2]}")
    require(bool(np.all(np.isfinite(p)) and p.min() >= 0 and p.max() <= 1),
            "act_prob must hold probabilities in [0, 1]; divide counts by token totals")
    require(0 < top_fraction <= 1, f"top_fraction must be in (0, 1], got "
                                   f"{top_fraction}")
    require(0 < tau_quantile < 1, f"tau_quantile must be in (0, 1), got "
                                  f"{tau_quantile}")
    n_layers, n_neurons, n_languages = p.shape
    entropy = language_entropy(p)
    tau = activation_threshold(p, tau_quantile)
    above = p > tau  # (L, M, K)
    is_candidate = above.any(axis=-1).ravel()

    k = round(top_fraction * n_layers * n_neurons)
    n_candidates = int(is_candidate.sum())
    n_keep = min(max(k, 1), n_candidates)
    candidate_ids = np.flatnonzero(is_candidate)
    # a stable sort on ids in increasing order breaks ties by position
    order = np.argsort(entropy.ravel()[candidate_ids], kind="stable")
    kept = candidate_ids[order[:n_keep]]
    layer, neuron = np.unravel_index(kept, (n_layers, n_neurons))
    rows = [(layer_id, neuron_id, language)
            for layer_id, neuron_id in zip(layer.tolist(), neuron.tolist())
            for language in np.flatnonzero(above[layer_id, neuron_id]).tolist()]
    selected = np.array(sorted(rows), dtype=np.int64).reshape(-1, 3)
    return LapeResult(entropy=entropy, tau=tau, selected=selected,
                      n_candidates=n_candidates, k=k, n_languages=n_languages)


class ActivationCounter:
    """Streaming counts of positive FFN activations per language.

    Feed batches of activations with the language of each token; read activation
    probabilities at the end. Tokens with a negative language id (padding) are skipped.

    Usage::

        counter = ActivationCounter(n_languages=2)
        for acts, lang in batches:  # acts (N, L, M), lang (N,)
            counter.update(acts, lang)
        act_prob = counter.probabilities()  # (L, M, K), the input of lape()
    """

    def __init__(self, n_languages: int, threshold: float = 0.0):
        """Start empty.

        Args:
            n_languages: K, language ids run from 0 to K - 1.
            threshold: a neuron counts as active when its activation is > threshold.
        """
        require(n_languages >= 1, f"n_languages must be positive, got {n_languages}")
        self.n_languages = n_languages
        self.threshold = threshold
        self.active_counts: np.ndarray | None = None  # (K, L, M), set by first update
        self.token_counts = np.zeros(n_languages, dtype=np.int64)  # (K,)

    def update(self, acts: np.ndarray | torch.Tensor,
               lang: np.ndarray | torch.Tensor) -> None:
        """Add one batch.

        Args:
            acts: shape (N, L, M), FFN activations (numpy or torch, any device).
            lang: shape (N,), language id of each token; negative ids are skipped.
        """
        if isinstance(acts, torch.Tensor):
            # compare on the tensor's own device; only the boolean result moves
            active = (acts.detach() > self.threshold).cpu().numpy()
        else:
            active = np.asarray(acts) > self.threshold
        lang = (lang.detach().cpu().numpy() if isinstance(lang, torch.Tensor)
                else np.asarray(lang)).astype(np.int64).ravel()
        require(active.ndim == 3, f"acts must be (tokens, layers, neurons), got shape "
                                  f"{active.shape}")
        require(lang.size == active.shape[0],
                f"{lang.size} language ids for {active.shape[0]} tokens; pass one per "
                f"token")
        require(lang.size == 0 or lang.max() < self.n_languages,
                f"language id {lang.max() if lang.size else 0} is out of range for "
                f"{self.n_languages} languages")
        if self.active_counts is None:
            self.active_counts = np.zeros((self.n_languages, *active.shape[1:]),
                                          dtype=np.int64)
        require(active.shape[1:] == self.active_counts.shape[1:],
                f"acts have (layers, neurons) {active.shape[1:]}, earlier batches had "
                f"{self.active_counts.shape[1:]}")
        # K is small, so a loop over languages costs nothing and sums stay integer
        for language in range(self.n_languages):
            is_language = lang == language
            self.token_counts[language] += int(is_language.sum())
            self.active_counts[language] += active[is_language].sum(axis=0)

    def probabilities(self) -> np.ndarray:
        """Activation probability per neuron and language, shape (L, M, K)."""
        require(self.active_counts is not None, "no activations yet; call update first")
        missing = np.flatnonzero(self.token_counts == 0)
        require(missing.size == 0, f"no tokens seen for language(s) "
                                   f"{missing.tolist()}; feed text in every language")
        return np.moveaxis(self.active_counts / self.token_counts[:, None, None], 0, -1)


def activation_probability(acts: np.ndarray | torch.Tensor,
                           lang_ids: np.ndarray | torch.Tensor,
                           n_languages: int) -> np.ndarray:
    """Share of each language's tokens on which each neuron is active (> 0).

    Args:
        acts: shape (N, L, M), FFN activations.
        lang_ids: shape (N,), language of each token (negative = skip).
        n_languages: K.

    Returns:
        Shape (L, M, K).
    """
    counter = ActivationCounter(n_languages)
    counter.update(acts, lang_ids)
    return counter.probabilities()


# ======================================================================================
# Model-dependent code (hooks, ablations) goes below this line.
# ======================================================================================


def mlp_hook_name(layer: int) -> str:
    """Hook point of the FFN neurons (after GELU) of one layer, all towers at once."""
    return f"towers.blocks.{layer}.mlp_post"


@torch.no_grad()
def count_activations(model, batches, n_languages: int) -> ActivationCounter:
    """Count positive FFN activations per language in every layer of every tower.

    Introduced in chapter 13 (*One language per tower?*). The (tower, layer) pairs are
    flattened tower-major into the counter's layer axis: row ``k * L + l`` is layer l of
    tower k, so LAPE ranks the neurons of both towers together.

    Args:
        model: a transformer two-tower model (hook points
            ``towers.blocks.{l}.mlp_post``).
        batches: iterable of ``(input_ids (B, T), lang (B, T))``; ``lang`` is the
            language of each input token, negative for specials and padding.
        n_languages: K languages.

    Returns:
        The filled :class:`ActivationCounter`; ``probabilities()`` is (K_towers * L,
        M, K).
    """
    require(hasattr(model.towers, "blocks"), "FFN neurons exist in the transformer "
                                             "families only (causal, mlm), not in bilm")
    was_training = model.training
    model.eval()
    names = [mlp_hook_name(layer) for layer in range(len(model.towers.blocks))]
    counter = ActivationCounter(n_languages)
    for input_ids, lang in batches:
        lang = torch.as_tensor(lang).reshape(-1)
        keep = lang >= 0
        _, cache = model.run_with_cache(torch.as_tensor(input_ids), names=names)
        acts = torch.stack([cache[name] for name in names], 1)  # (Kt, L, B, T, M)
        acts = acts.flatten(0, 1).flatten(1, 2)[:, keep]  # (Kt*L, n, M)
        counter.update(acts.transpose(0, 1), lang[keep])
    model.train(was_training)
    return counter


def deactivation_hooks(mask: np.ndarray | torch.Tensor) -> list:
    """Hooks that zero chosen FFN neurons: use with ``with model.hooks(...)``.

    Introduced in chapter 13. Zero is what a GELU neuron outputs when it is off, so a
    deactivated neuron sends nothing to the residual stream (Tang et al. 2024).

    Args:
        mask: (K_towers, L, M) boolean, True for every (tower, layer, neuron) to zero.

    Returns:
        ``[(hook name, fn), ...]``, one per layer with at least one chosen neuron.
    """
    mask = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
    require(mask.ndim == 3, f"mask must be (towers, layers, neurons), got {mask.shape}")
    hooks = []
    for layer in range(mask.shape[1]):
        keep = (~mask[:, layer]).float()  # (Kt, M)
        if bool((keep == 0).any()):
            def zero(acts, _point, keep=keep):
                # (Kt, B, T, M) * (Kt, 1, 1, M): a new tensor, the input is untouched
                return acts * keep.to(acts)[:, None, None, :]
            hooks.append((mlp_hook_name(layer), zero))
    return hooks


@torch.no_grad()
def perplexity(model, batches, hooks: list = ()) -> float:
    """Perplexity of the fused head over ``batches`` (token-weighted), under ``hooks``.

    Args:
        model: the model (evaluated without dropout).
        batches: :class:`twotower.data.objectives.Batch` objects.
        hooks: e.g. :func:`deactivation_hooks`.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with model.hooks(hooks):
        for batch in batches:
            n = batch.n_targets
            if n:
                total += float(model.loss(batch)) * n
                count += n
    model.train(was_training)
    require(count > 0, "no target positions in the batches")
    return float(np.exp(total / count))


def deactivation_matrix(model, batches_by_language: list, masks: dict) -> np.ndarray:
    """Perplexity on each language (columns) with each set of neurons zeroed (rows).

    Args:
        model: the model.
        batches_by_language: one list of batches per evaluated language.
        masks: ``{row name: (K_towers, L, M) bool mask}``; an all-False mask gives the
            unablated perplexity.

    Returns:
        (len(masks), len(batches_by_language)) perplexities, rows in ``masks`` order.
    """
    return np.array([[perplexity(model, batches, deactivation_hooks(mask))
                      for batches in batches_by_language] for mask in masks.values()])


def random_mask_like(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """As many randomly chosen neurons per (tower, layer) as ``mask`` holds there.

    The control of the deactivation test: zeroing that many neurons at random.
    """
    mask = np.asarray(mask, dtype=bool)
    rng = np.random.default_rng(seed)
    out = np.zeros_like(mask)
    for tower in range(mask.shape[0]):
        for layer in range(mask.shape[1]):
            n = int(mask[tower, layer].sum())
            out[tower, layer, rng.choice(mask.shape[2], n, replace=False)] = True
    return out
