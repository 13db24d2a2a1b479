"""Bench-Q answer letters (`(X)`, `X)`, first character) and per-type / overall accuracy."""

from __future__ import annotations

import pytest

from agents.bench.q_scoring import parse_answer_letter, score_q


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("(B) Sitting", "B"),
        ("The answer is (C).", "C"),
        ("I think D) is right, not (A)", "A"),  # (X) wins over X)
        ("D) a helmet", "D"),
        ("B", "B"),
        ("b.", "B"),
        ("...A", "A"),
        ("", None),
        ("42", None),
    ],
)
def test_parse_answer_letter(reply: str, letter: str | None) -> None:
    assert parse_answer_letter(reply) == letter


def _record(i: int, qa_type: str, pred: str, answer: str) -> dict:
    return {"id": i, "type": qa_type, "pred": pred, "answer_letter": answer, "option_letters": ["A", "B", "C", "D"]}


def test_accuracy_per_type_and_micro_overall() -> None:
    records = [
        _record(0, "Basic Questions", "(A)", "A"),
        _record(1, "Basic Questions", "(B)", "A"),
        _record(2, "Future Predictions", "C", "C"),
        _record(3, "Sequential Questions", "The object sits.", "A"),  # "T" is no option: unparseable, wrong
        _record(4, "Sequential Questions", "", "B"),
    ]
    score = score_q(records)
    assert list(score.per_type) == ["basic", "sequential", "future"]  # paper order
    assert score.per_type["basic"].accuracy == 0.5
    assert score.per_type["future"].accuracy == 1.0
    assert score.per_type["sequential"].accuracy == 0.0
    assert (score.overall.correct, score.overall.total) == (2, 5)
    assert [u.item_id for u in score.unparseable] == ["3", "4"]
    assert score.unparseable[0].letter == "T"
    assert score.to_json()["overall"]["accuracy"] == pytest.approx(0.4)
