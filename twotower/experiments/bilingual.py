"""Bilingual two towers on Multi30k: data, tokenizers per language set, runs, metrics.

Introduced in chapter 13 (*One language per tower?*) and used again in chapter 14
(*The tokenizer matters*).

Multi30k (Elliott et al. 2016) holds image captions translated sentence by sentence:
line i of the English, German and French files say the same thing. The pipeline is
:func:`load_multi30k` (the copy bundled with the package, the Hub's
``bentrevett/multi30k`` for English and German, or your own files, all through
``datasets``) -> a WordPiece tokenizer trained
on a chosen set of languages (:func:`twotower.data.tokenizer.train_wordpiece`) ->
:func:`pack_windows`: ``[CLS] s1 [SEP] s2 [SEP] ...`` of whole sentences of ONE
language, so every window, and every token in it, has a language id. A metric that stays
comparable across tokenizers: :func:`loss_per_character` (nats per character of
text). Chapter 14's tokenizer experiments are in :mod:`twotower.experiments.plasticity`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from twotower import atomic
from twotower.config import DataConfig, RunConfig, get_preset
from twotower.data import sources
from twotower.data.objectives import Objective
from twotower.data.sources import default_cache_dir
from twotower.data.tokenizer import (SpecialIds, get_tokenizer, hub_is_reachable,
                                     padded_vocab_size)
from twotower.errors import TwotowerError, require
from twotower.models.tower_lm import TwoTowerLM
from twotower.training import checkpoint as ckpt
from twotower.training.readouts import (TokenScores, TowerReadouts, freeze,
                                        score_readouts, train_readouts)
from twotower.training.run_folder import RESULTS, is_finished, read_results
from twotower.training.runtime import seed_everything
from twotower.training.trainer import WindowBatches, train

LANGUAGES = ("en", "de", "fr")
CORPUS = "multi30k"  # its folder in twotower/_data (see twotower.data.sources)
HUB_NAME = "bentrevett/multi30k"  # English and German only
HUB_LANGUAGES = ("en", "de")
DIR_ENV = "TWOTOWER_MULTI30K_DIR"
FILE_SPLITS = {"train": "train", "validation": "val", "test": "test_2016_flickr"}

log = logging.getLogger(__name__)


# --- loading --------------------------------------------------------------------------


def multi30k_dir(directory: str | os.PathLike | None = None) -> Path | None:
    """A folder of your own ``{split}.{lang}.gz`` files: ``directory``, else
    ``$TWOTOWER_MULTI30K_DIR``, else None (the bundled copy is used)."""
    explicit = directory or os.environ.get(DIR_ENV)
    return Path(explicit) if explicit else None


def load_multi30k(languages: Sequence[str] = ("en", "de"), split: str = "train",
                  source: str = "auto", directory: str | os.PathLike | None = None
                  ) -> dict[str, list[str]]:
    """Aligned Multi30k sentences: ``{language: [sentence, ...]}``, same length each.

    Args:
        languages: any of ``"en"``, ``"de"``, ``"fr"``.
        split: ``"train"``, ``"validation"`` or ``"test"`` (test_2016_flickr).
        source: ``"bundled"`` (the whole of task 1 in three languages ships with the
            package), ``"online"`` (``datasets.load_dataset("bentrevett/multi30k")``
            from the Hub for English and German; French, which the Hub copy lacks,
            still comes from the bundled copy), ``"local"`` (the ``.gz`` files of
            :func:`multi30k_dir`), or ``"auto"`` (that folder when one is named, else
            the bundled copy).
        directory: a folder of your own files (see :func:`multi30k_dir`).

    Raises:
        TwotowerError: unknown language, split or source; missing or damaged files;
            the Hub asked for while it does not answer.
    """
    unknown = sorted(set(languages) - set(LANGUAGES))
    require(not unknown, f"unknown language(s) {unknown}; Multi30k has {LANGUAGES}")
    require(split in FILE_SPLITS, f"unknown split {split!r}; use {tuple(FILE_SPLITS)}")
    source = sources.parse_source(source)
    folder = multi30k_dir(directory)
    if source == "local" or (source == "auto" and folder is not None):
        require(folder is not None, "source='local' needs a folder: pass directory=... "
                                    f"or set {DIR_ENV}")
        files = {lang: folder / f"{FILE_SPLITS[split]}.{lang}.gz" for lang in languages}
        missing = [path.name for path in files.values() if not path.is_file()]
        require(not missing, f"Multi30k files {missing} not found in {folder}; put "
                             f"them there, unset {DIR_ENV}, or use source='bundled'")
        return _read_lines(files)
    if source == "online":
        hub = [lang for lang in languages if lang in HUB_LANGUAGES]
        rest = [lang for lang in languages if lang not in HUB_LANGUAGES]
        if rest:
            log.info("Multi30k %s: %s from the bundled copy (not on the Hub)", split,
                     ", ".join(rest))
        online = _from_hub(hub, split) if hub else {}
        bundled = _read_lines({lang: _bundled(lang, split) for lang in rest})
        return {lang: online.get(lang) or bundled[lang] for lang in languages}
    return _read_lines({lang: _bundled(lang, split) for lang in languages})


def _bundled(lang: str, split: str) -> Path:
    return sources.bundled_file(CORPUS, f"{FILE_SPLITS[split]}.{lang}.xz")


def _read_lines(files: dict[str, Path]) -> dict[str, list[str]]:
    # one code path for every copy on disk: datasets' text builder, cached as Arrow
    import datasets

    cache = str(default_cache_dir() / "datasets")
    return {lang: datasets.load_dataset("text", data_files=str(path), split="train",
                                        cache_dir=cache)["text"]
            for lang, path in files.items()}


def _from_hub(languages: list[str], split: str) -> dict[str, list[str]]:
    import datasets

    require(hub_is_reachable(), f"the Hugging Face Hub does not answer, so {HUB_NAME} "
                                "cannot be read; use source='bundled' (the same "
                                "corpus)")
    try:
        table = datasets.load_dataset(HUB_NAME, split=split)
    except (ConnectionError, OSError) as error:
        raise TwotowerError(f"could not load {HUB_NAME} from the Hugging Face Hub "
                            f"({type(error).__name__}); retry, or use source='bundled'"
                            ) from None
    return {lang: list(table[lang]) for lang in languages}


def bilingual_tokenizer(sentences: dict[str, list[str]], languages: Sequence[str],
                        vocab_size: int) -> Tokenizer:
    """WordPiece trained on the sentences of ``languages`` only (cached on disk)."""
    texts = [s for lang in languages for s in sentences[lang]]
    cfg = DataConfig(tokenizer="train", vocab_size=vocab_size)
    return get_tokenizer(cfg, texts, default_cache_dir())


# --- windows with a language ----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LanguageWindows:
    """Windows of whole sentences, one language per window.

    Attributes:
        windows: (N, T) int64 token ids, ``[CLS] s1 [SEP] s2 [SEP] ... [PAD]...``.
        language: (N,) index of each window's language.
        n_chars: (N,) characters of text in each window (each sentence + 1 for its
            end, the character that its ``[SEP]`` predicts).
    """

    windows: np.ndarray
    language: np.ndarray
    n_chars: np.ndarray

    def of(self, language: int) -> LanguageWindows:
        """Only the windows of one language."""
        keep = self.language == language
        return LanguageWindows(self.windows[keep], self.language[keep],
                               self.n_chars[keep])


def pack_windows(sentences: list[list[int]], texts: list[str], language: int,
                 max_len: int, special: SpecialIds) -> tuple[LanguageWindows, int]:
    """Pack whole tokenized sentences greedily into windows of ``max_len``.

    A sentence is never cut: one longer than ``max_len - 2`` tokens is dropped.

    Returns:
        The windows and the number of dropped sentences.
    """
    rows, chars, row, row_chars, dropped = [], [], [special.cls], 0, 0
    for ids, text in zip(sentences, texts):
        if not ids or len(ids) > max_len - 2:
            dropped += bool(ids)
            continue
        if len(row) + len(ids) + 1 > max_len:
            rows.append(row)
            chars.append(row_chars)
            row, row_chars = [special.cls], 0
        row += [*ids, special.sep]
        row_chars += len(text) + 1
    if len(row) > 1:
        rows.append(row)
        chars.append(row_chars)
    windows = np.full((len(rows), max_len), special.pad, dtype=np.int64)
    for i, r in enumerate(rows):
        windows[i, :len(r)] = r
    return LanguageWindows(windows, np.full(len(rows), language, dtype=np.int64),
                           np.asarray(chars, dtype=np.int64)), dropped


def token_languages(lw: LanguageWindows, special: SpecialIds) -> np.ndarray:
    """(N, T) language of every token; -1 for special tokens and padding."""
    lang = np.broadcast_to(lw.language[:, None], lw.windows.shape).copy()
    lang[np.isin(lw.windows, special.all)] = -1
    return lang


def type_languages(lw: LanguageWindows, vocab_size: int, n_languages: int,
                   purity: float = 0.9) -> np.ndarray:
    """(V,) the language a token type belongs to: the one holding at least ``purity``
    of its occurrences; -1 for types shared between languages or never seen."""
    counts = np.stack([np.bincount(lw.windows[lw.language == k].ravel(),
                                   minlength=vocab_size)[:vocab_size]
                       for k in range(n_languages)])  # (K, V)
    total = counts.sum(0)
    top = counts.argmax(0)
    pure = counts.max(0) >= purity * np.maximum(total, 1)
    return np.where(pure & (total > 0), top, -1)


@dataclass(frozen=True, eq=False)
class BilingualData:
    """Everything a bilingual run needs from the data side."""

    tokenizer: Tokenizer
    special: SpecialIds
    vocab_size: int  # padded to a multiple of 64: the model's V
    languages: tuple[str, ...]  # language ids index this tuple
    tokenizer_languages: tuple[str, ...]
    train: LanguageWindows
    val: LanguageWindows
    n_dropped: int  # sentences longer than a window


def _encode(tok: Tokenizer, text: list[str], budget: float = 0,
            chunk: int = 2048) -> list[list[int]]:
    """Token ids of the first sentences, up to ``budget`` tokens (0 = all of them);
    encoded chunk by chunk, so a small budget does not pay for the whole corpus."""
    ids: list[list[int]] = []
    total = 0
    for start in range(0, len(text), chunk):
        for enc in tok.encode_batch(text[start:start + chunk],
                                    add_special_tokens=False):
            if budget and total >= budget:
                return ids
            ids.append(enc.ids)
            total += len(enc.ids) + 1  # + its [SEP]
    return ids


def prepare_bilingual(languages: Sequence[str] = ("en", "de"),
                      tokenizer_languages: Sequence[str] | None = None, *,
                      vocab_size: int = 8192, max_len: int = 128,
                      max_train_tokens: int = 0, source: str = "auto") -> BilingualData:
    """Load Multi30k, train the tokenizer, pack windows for every language.

    Args:
        languages: the languages of the model's text.
        tokenizer_languages: the languages the tokenizer is trained on (default
            ``languages``); its training text is the train split.
        vocab_size: target tokenizer size.
        max_len: tokens per window.
        max_train_tokens: keep about this many training tokens in all, split equally
            between languages, taking the first sentences (0 = all).
        source: see :func:`load_multi30k`.
    """
    tok_langs = tuple(tokenizer_languages or languages)
    needed = tuple(dict.fromkeys([*languages, *tok_langs]))
    train_text = load_multi30k(needed, "train", source)
    val_text = load_multi30k(languages, "validation", source)
    tok = bilingual_tokenizer(train_text, tok_langs, vocab_size)
    special = SpecialIds.from_tokenizer(tok)
    parts = {"train": [], "val": []}
    n_dropped = 0
    for index, lang in enumerate(languages):
        for split, text in (("train", train_text[lang]), ("val", val_text[lang])):
            budget = max_train_tokens / len(languages) if split == "train" else 0
            ids = _encode(tok, text, budget)
            text = text[:len(ids)]
            packed, dropped = pack_windows(ids, text, index, max_len, special)
            parts[split].append(packed)
            n_dropped += dropped
    joined = {split: LanguageWindows(*(np.concatenate([getattr(p, f) for p in ps])
                                       for f in ("windows", "language", "n_chars")))
              for split, ps in parts.items()}
    return BilingualData(tok, special, padded_vocab_size(tok), tuple(languages),
                         tok_langs,
                         joined["train"], joined["val"], n_dropped)


# --- a metric that compares tokenizers ------------------------------------------------


@torch.no_grad()
def loss_per_character(model, lw: LanguageWindows, objective: Objective,
                       batch_size: int = 32) -> float:
    """Fused-head loss summed over every target token, divided by the characters.

    Nats per character do not depend on how the text was cut into tokens, so they
    compare models with different tokenizers (divide by ``log 2`` for bits).
    """
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(lw.windows), batch_size):
        batch = objective.make_batch(lw.windows[start:start + batch_size],
                                     torch.Generator().manual_seed(start))
        batch = batch.to(model.device)
        if batch.n_targets:
            total += float(model.loss(batch)) * batch.n_targets
    model.train(was_training)
    return total / max(int(lw.n_chars.sum()), 1)


# --- runs -----------------------------------------------------------------------------


def prepare_for_preset(preset: str, languages: Sequence[str] = ("en", "de"),
                       tokenizer_languages: Sequence[str] | None = None,
                       source: str = "auto") -> BilingualData:
    """:func:`prepare_bilingual` sized by a preset: its vocabulary size and training
    token budget, and windows of half its length (a caption is ~15 tokens, and
    captions are unrelated to each other, so long windows would add no context)."""
    d = get_preset(preset, "causal").data
    return prepare_bilingual(languages, tokenizer_languages, vocab_size=d.vocab_size,
                             max_len=d.max_len // 2,
                             max_train_tokens=d.max_train_tokens,
                             source=source)


def bilingual_config(preset: str, data: BilingualData, seed: int = 0,
                     device: str = "auto", step_fraction: float = 0.5) -> RunConfig:
    """The preset's causal config with the bilingual vocabulary and a shorter schedule.

    Multi30k has ~0.4M tokens per language, so the preset's steps would be many
    epochs: both phases get ``step_fraction`` of them (warm-up scaled the same way).
    """
    cfg = get_preset(preset, "causal").with_seed(seed)
    model = dataclasses.replace(cfg.model, vocab_size=data.vocab_size,
                                max_len=data.train.windows.shape[1],
                                pad_id=data.special.pad).validate()

    def shorter(t):
        steps = max(2, round(t.steps * step_fraction))
        return dataclasses.replace(t, steps=steps, device=device,
                                   warmup_steps=max(1, round(t.warmup_steps
                                                             * step_fraction)),
                                   eval_every=0, checkpoint_every=steps)
    return dataclasses.replace(cfg, model=model, train=shorter(cfg.train),
                               readout=shorter(cfg.readout))


def objective_for(data: BilingualData) -> Objective:
    """Next-token objective with the bilingual tokenizer's special ids."""
    s = data.special
    return Objective("causal", s.all, s.pad, s.cls, s.mask,
                     data.tokenizer.get_vocab_size())


@dataclass(frozen=True, eq=False)
class BilingualRun:
    """A trained bilingual two-tower model, its readouts and paired scores.

    ``score_language`` (N,) is the language of each scored validation position.
    ``readouts`` and ``scores`` are None for a run trained without readouts.
    """

    path: Path
    config: RunConfig
    data: BilingualData
    model: TwoTowerLM
    readouts: TowerReadouts | None
    scores: TokenScores | None
    score_language: np.ndarray | None
    results: dict


def ensure_bilingual_run(run_dir: str | Path, cfg: RunConfig, data: BilingualData, *,
                         readouts: bool = True, progress: bool = True) -> BilingualRun:
    """Train (or load) the joint model and, if asked, the readouts on both languages.

    Every window of every language is training data; validation is the Multi30k
    validation split. Resumes like :func:`twotower.experiments.pipeline.run`.

    ``run_dir`` is named like a run (chapter 13 uses the variant ``multi30k-en-de`` of
    :class:`twotower.training.run_folder.RunSpec`), but this is not a run of the run
    cache (:mod:`twotower.experiments.store`): its config depends on ``data`` (the
    tokenizer's vocabulary, the window), and its ``results.json`` records each phase
    as it finishes, so a run made without readouts gets them later without training
    its joint phase again.
    """
    run_dir = Path(run_dir)
    results = read_results(run_dir) if is_finished(run_dir) else {}
    objective = objective_for(data)
    train_b = WindowBatches(data.train.windows, objective, cfg.train.batch_size,
                            cfg.train.seed)
    seed_everything(cfg.train.seed)
    model = TwoTowerLM(cfg.model)
    if "joint" in results:
        ckpt.load_weights(ckpt.latest_checkpoint(run_dir / "joint"), model)
    else:
        results["joint"] = train(model, model.loss,
                                 train_b, cfg.train, phase="joint", run_dir=run_dir,
                                 progress=progress)
        results["loss_per_char"] = {lang: loss_per_character(
            model, data.val.of(k), objective) for k, lang in enumerate(data.languages)}
    freeze(model)
    heads = scores = score_language = None
    if readouts:
        if "readouts" in results:
            heads = TowerReadouts(cfg.model.d_model, cfg.model.vocab_size, 2)
            ckpt.load_weights(ckpt.latest_checkpoint(run_dir / "readouts"), heads)
            heads = freeze(heads)
        else:
            readout_b = dataclasses.replace(train_b, batch_size=cfg.readout.batch_size,
                                            seed=cfg.readout.seed)
            heads, results["readouts"] = train_readouts(model, readout_b, cfg.readout,
                                                        run_dir=run_dir,
                                                        progress=progress)
        val_b = WindowBatches(data.val.windows, objective, cfg.train.batch_size,
                              cfg.train.seed).score_batches()
        scores = score_readouts(model, heads, val_b, cfg.train.device)
        score_language = data.val.language[scores.window]
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / RESULTS, json.dumps(results, indent=1, default=float))
    return BilingualRun(run_dir, cfg, data, model.cpu(), heads, scores, score_language,
                        results)
