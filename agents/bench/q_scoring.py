"""Bench-Q scoring as the release's `eval_videorefer_bench_q.py` scores, with its two crashes fixed.

The gold letter is the `(X)` of `Answer` (the whole `Answer` when it has none); the predicted letter is the first
`(X)` of the reply, else the first `X)`, else the reply's first character with dots removed; the two compare
case-insensitively. Fixed (and documented in the README): an empty reply is a wrong answer (the release crashes
on it) and leading whitespace is ignored (the release takes the space as the letter). Every entry of the
benchmark file is in the denominator: entries that could not be run (unreadable entry, missing video, a runner
fault) are passed as `failed` and counted wrong in their type, and listed. Accuracy per type and overall (a micro
average over entries), with the release's printout (`release_text`) beside our table order.
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
    """The release's predicted letter: `(X)`, then `X)`, then the first character without dots.

    Leading whitespace of the reply is skipped (the release takes it as the letter); None for an empty reply.
    The first-character rule can give a character that is no option at all ("4").
    """
    match = _PAREN_LETTER.search(reply)
    if match is None:
        match = _LETTER_PAREN.search(reply)
    if match is not None:
        return match.group(1)
    rest = reply.lstrip().replace(".", "")
    return rest[0] if rest else None


def gold_letter(answer: str) -> str:
    """The release's gold letter: the `(X)` of the published answer, or the answer itself when it has none."""
    match = _PAREN_LETTER.search(answer)
    return match.group(1) if match else answer


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
    letter: str | None  # what the release's rule read, when it is not one of the options


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    """An entry that could not be run: scored wrong, listed with its reason."""

    item_id: str
    qa_type: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QScore:
    """Accuracy per type (short keys, paper order), per published type (file order), and overall."""

    per_type: Mapping[str, TypeAccuracy]
    per_published_type: Mapping[str, TypeAccuracy]
    overall: TypeAccuracy
    unparseable: tuple[Unparseable, ...]
    failed: tuple[Failed, ...]

    def to_json(self) -> dict[str, Any]:
        def block(acc: TypeAccuracy) -> dict[str, Any]:
            return {"accuracy": acc.accuracy, "correct": acc.correct, "total": acc.total}

        return {
            "overall": block(self.overall),
            "per_type": {key: block(acc) for key, acc in self.per_type.items()},
            "per_published_type": {key: block(acc) for key, acc in self.per_published_type.items()},
            "unparseable": [{"id": u.item_id, "reply": u.reply, "letter": u.letter} for u in self.unparseable],
            "failed": [{"id": f.item_id, "type": f.qa_type, "reason": f.reason} for f in self.failed],
        }

    def release_text(self) -> str:
        """The figures in the layout the release's scorer prints."""
        lines = []
        for name, acc in self.per_published_type.items():
            lines += [f"####### {name} #######", f"all num: {acc.total}", f"right num: {acc.correct}",
                      f"accuracy: {acc.accuracy}"]
        lines += ["####### average #######", f"all num: {self.overall.total}", f"right num: {self.overall.correct}",
                  f"accuracy: {self.overall.accuracy}"]
        return "\n".join(lines)


def score_q(predictions: Iterable[Mapping[str, Any]], failed: Iterable[Failed] = ()) -> QScore:
    """Score prediction records and count the `failed` entries wrong.

    A record holds `id`, `pred` (the reply), `type`, and the gold answer as `answer_letter` (our files) or
    `Answer` (the release's files); `option_letters`, when present, lists the options for the unparseable list.
    """
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    unparseable: list[Unparseable] = []

    def count(qa_type: str, hit: bool) -> None:
        total[qa_type] = total.get(qa_type, 0) + 1
        correct[qa_type] = correct.get(qa_type, 0) + int(hit)

    for record in predictions:
        reply = str(record.get("pred") or "")
        letter = parse_answer_letter(reply)
        gold = str(record.get("answer_letter") or gold_letter(str(record.get("Answer", ""))))
        options: Sequence[str] = record.get("option_letters") or ()
        if letter is None or (options and letter.upper() not in options):
            unparseable.append(Unparseable(item_id=str(record.get("id", record.get("video", ""))), reply=reply,
                                           letter=letter))
        count(str(record["type"]), letter is not None and letter.lower() == gold.lower())
    failures = tuple(failed)
    for failure in failures:
        count(failure.qa_type, False)
    short: dict[str, TypeAccuracy] = {}
    for name in total:
        key = Q_TYPES.get(name, name)
        previous = short.get(key, TypeAccuracy(correct=0, total=0))
        short[key] = TypeAccuracy(correct=previous.correct + correct[name], total=previous.total + total[name])
    order = [key for key in Q_TYPES.values() if key in short] + sorted(set(short) - set(Q_TYPES.values()))
    return QScore(
        per_type={key: short[key] for key in order},
        per_published_type={name: TypeAccuracy(correct=correct[name], total=total[name]) for name in total},
        overall=TypeAccuracy(correct=sum(correct.values()), total=sum(total.values())),
        unparseable=tuple(unparseable),
        failed=failures,
    )
