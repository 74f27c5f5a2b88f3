"""The book's prose never types a number that the code determines (issue #16).

A preset's sizes (layers, width, vocabulary, steps, probes, seeds, ...) live in
``twotower.config``; a chapter that needs one prints it from a code cell. Sizes typed
into the prose went stale when the presets changed ("3-layer model" when ``small`` had
two layers, "8,192-id vocabulary" when it had 4,096, "200 steps" when the code ran 80).
A number about the paper or another source (its authors' 12- and 24-layer models,
BERT's 30,522 ids) is a fact about that source and may be typed, in a sentence that
names it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from twotower.config import get_preset
from twotower.experiments import planted

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
PAGES = sorted((ROOT / "book").glob("*.md"))

#: Phrases that issue #16 found stale, and a file the book cited but never had.
STALE = ("3-layer", "8,192-id", "8192-id", "200 steps", "24 probes", "PAPER.md")

_NUMBER = r"(?<![\w.,$/-])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_SIZE_NOUN = (r"(?:layers?|ids?|steps?|probes?|heads?|tokens?|seeds?|runs?|epochs?"
              r"|blocks?|dimensions?)")
#: A digit-bearing size phrase: "3-layer", "200 steps", "120,000 training tokens",
#: "8,192-id", "width 256", "vocabulary of 4096", "256 wide".
SIZE_PHRASE = re.compile(
    rf"{_NUMBER}(?:-| )(?:(?:training|validation|test|joint|readout|optimiser) )?"
    rf"{_SIZE_NOUN}\b"
    rf"|\b(?:width|vocabulary|vocabulary size|context|window) (?:of )?{_NUMBER}\b"
    rf"|{_NUMBER} wide\b")
#: A sentence that names its source states that source's numbers, not the code's.
SOURCE = re.compile(r"the paper|paper's|the authors|authors'|He (?:&|and) Toyoizumi"
                    r"|\{cite\}", re.IGNORECASE)


def markdown_texts() -> list[tuple[str, str]]:
    """(where, text) of every markdown cell of every chapter and of every page."""
    texts = []
    for path in CHAPTERS:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        texts += [(f"{path.name} cell {i} ({cell.get('id')})", "".join(cell["source"]))
                  for i, cell in enumerate(cells) if cell["cell_type"] == "markdown"]
    texts += [(path.name, path.read_text(encoding="utf-8")) for path in PAGES]
    return texts


def sentences(markdown: str) -> list[str]:
    """The sentences of ``markdown``, with math and code blocks left out."""
    text = re.sub(r"```.*?```|\$\$.*?\$\$|\$[^$\n]*\$", " ", markdown, flags=re.DOTALL)
    text = re.sub(r"\s+", " ", text)
    return re.split(r"(?<=[.!?;:])\s+(?=[A-Z`*(\[\-])", text)


def typed_sizes(markdown: str) -> list[str]:
    """Size phrases of ``markdown`` in sentences that do not name their source."""
    return [f"{match.group(0)!r} in: {sentence.strip()[:140]}"
            for sentence in sentences(markdown) if not SOURCE.search(sentence)
            for match in SIZE_PHRASE.finditer(sentence)]


@pytest.mark.parametrize("text, found", [
    ("`small` trains a 3-layer model for 200 steps.", ["3-layer", "200 steps"]),
    ("All the training text and an 8,192-id vocabulary.", ["8,192-id"]),
    ("It trains 24 probes over 3 layers.", ["24 probes", "3 layers"]),
    ("The `colab` tower is 6 layers of width 256.", ["6 layers", "width 256"]),
    ("A vocabulary of 4096, 120,000 training tokens.", ["vocabulary of 4096",
                                                        "120,000 training tokens"]),
    ("The paper trained 12 and 24-layer models on GPUs.", []),
    ("It may still appear in the authors' 12- and 24-layer models.", []),
    ("BERT {cite}`devlin2019bert` has a vocabulary of 30,522 ids.", []),
    ("Chapter 10 uses layer 0, step 0, phase 1 and 2 CPU cores in 2022.", []),
    ("A shared embedding of width 2h; about 0.4M tokens; $L$ layers.", []),
])
def test_size_phrases_are_found_unless_the_sentence_names_its_source(text, found):
    assert [hit.split("'")[1] for hit in typed_sizes(text)] == found


def test_no_stale_fact_of_issue_16_is_in_the_book():
    hits = [f"{where}: {phrase!r}" for where, text in markdown_texts()
            for phrase in STALE if phrase in text]
    for path in CHAPTERS:  # a missing file is no better cited from a code comment
        if "PAPER.md" in path.read_text(encoding="utf-8"):
            hits.append(f"{path.name}: 'PAPER.md'")
    assert hits == [], "stale facts in the prose:\n" + "\n".join(hits)


def test_no_size_that_the_code_determines_is_typed_in_the_prose():
    hits = [f"{where}: {hit}" for where, text in markdown_texts()
            for hit in typed_sizes(text)]
    assert hits == [], ("sizes typed by hand (print them from a code cell, or name the "
                        "source they belong to):\n" + "\n".join(hits))


def test_chapter_2_describes_the_towers_of_every_planted_preset():
    """Its argument (one head cannot do both jobs at once) is stated in words."""
    text = (ROOT / "book" / "02_planted_division.ipynb").read_text(encoding="utf-8")
    if "one layer with a single attention head each" not in text:
        pytest.skip("chapter 2 no longer states the planted towers' size")
    for name, cfg in planted.PLANTED_PRESETS.items():
        assert (cfg.model.n_layers, cfg.model.n_heads) == (1, 1), name


def test_the_papers_layer_counts_in_the_prose_are_its_presets():
    """The paper's sizes may be typed, but they must be those of its presets."""
    paper = {get_preset(name).model.n_layers for name in ("paper_base", "paper_large")}
    stated = re.compile(r"((?:\d+-? and )?\d+)[- ]layers?\b")
    found = {int(n) for _, text in markdown_texts() for sentence in sentences(text)
             if SOURCE.search(sentence) for match in stated.finditer(sentence)
             for n in re.findall(r"\d+", match.group(1))}
    assert found <= paper, f"the prose gives the paper {sorted(found)} layers"
