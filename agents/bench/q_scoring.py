"""Bench-Q scoring: the answer letter of a reply, and accuracy per question type and overall (micro average).

The letter is read as the release's scorer reads it: the first `(X)` in the reply, else the first `X)`, else the
reply's first character (dots removed). A reply with no letter that way, or with a letter that is not one of the
question's options, is counted wrong and listed as unparseable so that a formatting problem is visible rather
than silently scored as a wrong answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents.bench.files import Q_TYPES

_PAREN_LETTER = re.compile(r"\(([A-Z])\)")
_LETTER_PAREN = re.compile(r"([A-Z])\)")


def parse_answer_letter(reply: str) -> str | None:
    """`(X)`, then `X)`, then the first character of the reply (dots removed); None when that is no letter."""
    match = _PAREN_LETTER.search(reply) or _LETTER_PAREN.search(reply)
    if match:
        return match.group(1)
    stripped = reply.replace(".", "").strip()
    if stripped and stripped[0].isascii() and stripped[0].isalpha():
        return stripped[0].upper()
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class TypeAccuracy:
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Unparseable:
    item_id: str
    reply: str
    letter: str | None  # what the first-character rule produced, when it produced a non-option letter


@dataclass(frozen=True, slots=True, kw_only=True)
class QScore:
    """Accuracy per type key (paper order first, unknown types after) and overall, over the predictions given."""

    per_type: Mapping[str, TypeAccuracy]
    overall: TypeAccuracy
    unparseable: tuple[Unparseable, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "overall": {"accuracy": self.overall.accuracy, "correct": self.overall.correct,
                        "total": self.overall.total},
            "per_type": {key: {"accuracy": acc.accuracy, "correct": acc.correct, "total": acc.total}
                         for key, acc in self.per_type.items()},
            "unparseable": [{"id": u.item_id, "reply": u.reply, "letter": u.letter} for u in self.unparseable],
        }


def score_q(predictions: Iterable[Mapping[str, Any]]) -> QScore:
    """Score prediction records holding `id`, `pred` (the reply), `answer_letter`, `type` and `option_letters`.

    `type` may be the published name ("Basic Questions") or the short key ("basic").
    """
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    unparseable: list[Unparseable] = []
    for record in predictions:
        key = Q_TYPES.get(str(record["type"]), str(record["type"]))
        reply = str(record.get("pred") or "")
        letter = parse_answer_letter(reply)
        options: Sequence[str] = record.get("option_letters") or ()
        if letter is None or (options and letter not in options):
            unparseable.append(Unparseable(item_id=str(record["id"]), reply=reply, letter=letter))
        total[key] = total.get(key, 0) + 1
        hit = letter is not None and letter.upper() == str(record["answer_letter"]).upper()
        correct[key] = correct.get(key, 0) + int(hit)
    order = [key for key in Q_TYPES.values() if key in total] + sorted(set(total) - set(Q_TYPES.values()))
    per_type = {key: TypeAccuracy(correct=correct[key], total=total[key]) for key in order}
    overall = TypeAccuracy(correct=sum(correct.values()), total=sum(total.values()))
    return QScore(per_type=per_type, overall=overall, unparseable=tuple(unparseable))
