"""Chapter 11's first screen: one answer per claim, read off the scorecard, and an
honest "not measured" where chapter 9 left nothing on disk."""

from __future__ import annotations

import pandas as pd
import pytest

from twotower.experiments import answers
from twotower.experiments.scorecard import FAILS, HOLDS, NOT_MEASURED


def _card(primary_verdict=FAILS, pos_verdict=FAILS):
    rows = [
        ("2. a consistent preference emerges", "more stable across seeds than control "
         "(b) towers trained independently, 5 seeds (primary test)", 0.19, -0.68, 1.05,
         primary_verdict),
        ("3. stable regardless of configuration and type", "across families, seeds 0 "
         "and 1", 0.09, -0.2, 0.4, FAILS),
        ("3. stable regardless of configuration and type", "a preference emerges "
         "(causal, seed 0)", 0.5, 0.4, 0.6, HOLDS),
        ("4. the preference separates syntax and semantics", "function vs content "
         "words (5 causal seeds, pre-registered test)", 0.1, -0.1, 0.3, pos_verdict),
        ("4. the preference separates syntax and semantics", "one tower holds more of "
         "the parse tree", float("nan"), float("nan"), float("nan"), NOT_MEASURED),
    ]
    return pd.DataFrame(rows, columns=["claim", "test", "value", "low", "high",
                                       "verdict"])


def test_every_claim_gets_one_answer_and_a_null_gets_its_power(tmp_path):
    table = answers.claim_answers(_card(), tmp_path, "smoke")
    assert len(table) == 4 and list(table.index.str[0]) == ["1", "2", "3", "4"]
    assert table["answer"].iloc[0] == NOT_MEASURED  # no runs on disk
    assert table["answer"].iloc[1] == FAILS
    assert "+0.190 [-0.680, +1.050]" in table["evidence"].iloc[1]
    assert table["evidence"].iloc[1].endswith("(5 seeds a side)")
    assert "power not measured" in table["power"].iloc[1]
    assert "trend along training not measured" in table["power"].iloc[1]
    assert table["answer"].iloc[2] == FAILS  # the 'a preference emerges' row is not
    assert table["evidence"].iloc[2] == \
        "across families: r_x +0.090 [-0.200, +0.400]"  # across anything
    assert table["answer"].iloc[3] == FAILS


@pytest.mark.parametrize("verdict", [HOLDS, FAILS])
def test_the_answer_follows_the_primary_test(tmp_path, verdict):
    table = answers.claim_answers(_card(primary_verdict=verdict), tmp_path, "smoke")
    assert table["answer"].iloc[1] == verdict
    assert (table["power"].iloc[1] == "") == (verdict == HOLDS)


def test_claim_four_holds_only_when_every_measured_test_holds(tmp_path):
    assert answers.claim_answers(_card(pos_verdict=HOLDS), tmp_path,
                                 "smoke")["answer"].iloc[3] == HOLDS
    empty = _card().iloc[:3]
    assert answers.claim_answers(empty, tmp_path, "smoke")["answer"].iloc[3] == \
        NOT_MEASURED


def test_the_power_note_names_the_weakest_division_detected(tmp_path, monkeypatch):
    from twotower.experiments import power

    table = pd.DataFrame({"strength": [0.0, 0.01, 0.05], "|gap|": [0.5, 0.1, 2.4],
                          "detected": [False, False, True], "seeds": [3, 3, 3]},
                         index=["none", "weak", "medium"])
    monkeypatch.setattr(power, "pending_flops", lambda *a, **k: 0.0)
    monkeypatch.setattr(power, "ensure_power_runs", lambda *a, **k: {})
    monkeypatch.setattr(power, "power_table", lambda *a, **k: table)
    note = answers.power_note(tmp_path, "small")
    assert "from 'medium' (gap 2.40 nats) at 3 seeds" in note
    assert "misses the towers' own division (|gap| 0.50 nats)" in note
    table["detected"] = False
    assert "detects none of the planted divisions" in answers.power_note(tmp_path,
                                                                          "small")


def test_chapter_11_states_the_answers_before_anything_else():
    import json
    from pathlib import Path

    path = Path(__file__).parents[1] / "book" / "11_replication_scorecard.ipynb"
    cells = [("".join(c["source"]), c["cell_type"], c["metadata"].get("tags", []))
             for c in json.loads(path.read_text())["cells"]]
    answer = next(i for i, (src, *_) in enumerate(cells)
                  if "answers.claim_answers(" in src)
    objectives = next(i for i, (src, *_) in enumerate(cells)
                      if "Learning objectives" in src)
    assert answer < objectives
    shown_before = [src for src, kind, tags in cells[1:answer] if kind == "markdown"
                    or not {"remove-cell", "hide-input", "parameters"} & set(tags)]
    assert all(":class: tip dropdown" in src for src in shown_before)  # folded only
    assert cells[answer][2] == ["hide-input"]
