"""Bench-Q scoring against the release's scorer (transcribed in release_reference.py) on many replies."""

from __future__ import annotations

import random

import pytest

from agents.bench.q_scoring import Failed, gold_letter, parse_answer_letter, score_q
from tests.agents.bench import release_reference as release

REPLIES = [
    "(B) Sitting", "The answer is (C).", "I think D) is right, not (A)", "D) a helmet", "B", "b.", "...A", "42",
    "a", "(a) lower case", "Answer: B", "C.", "(E)", "B)", "The object sits.", "\nA", "A\n", "(B)(C)", "x) y (D)",
    "Option (A) A helmet", "A) (B)", ". . B", "Z", "(A", "A)B)", "the (C) one", "[B]", "B: sitting",
]
CLEAN = [reply for reply in REPLIES if not reply[:1].isspace()]  # the release's rule applies unchanged to these
TYPES = ["Basic Questions", "Sequential Questions", "Relationship Questions", "Reasoning Questions",
         "Future Predictions"]


@pytest.mark.parametrize("reply", REPLIES)
def test_each_reply_is_right_or_wrong_exactly_when_the_release_says_so(reply: str) -> None:
    if reply[:1].isspace():  # fixed: the release takes the leading whitespace as the letter
        assert parse_answer_letter(reply) == parse_answer_letter(reply.lstrip())
        return
    for gold in "ABCDEZ":
        record = {"id": "0", "Answer": f"({gold}) thing", "pred": reply, "type": "t"}
        release_right = release.eval_bench_q([record])[1]["t"]
        assert score_q([record]).overall.correct == release_right, (reply, gold)


def test_fixed_release_crashes_empty_and_leading_whitespace() -> None:
    with pytest.raises(IndexError):
        release.eval_bench_q([{"Answer": "(A) x", "pred": "", "type": "t"}])
    assert parse_answer_letter("") is None
    assert parse_answer_letter("   ") is None
    assert parse_answer_letter("  (B)") == "B" and parse_answer_letter("  B") == "B"
    assert gold_letter("(C) a cat") == "C" and gold_letter("C") == "C"


def test_scores_equal_the_release_scorer_on_random_prediction_sets() -> None:
    rng = random.Random(0)
    for _ in range(30):
        records = []
        for i in range(rng.randint(1, 60)):
            answer = rng.choice("ABCD")
            records.append({"id": str(i), "type": rng.choice(TYPES), "Answer": f"({answer}) thing",
                            "pred": rng.choice([*CLEAN, f"({answer})", answer])})
        all_sum, right_num = release.eval_bench_q(records)
        score = score_q(records)
        assert {k: v.total for k, v in score.per_published_type.items()} == all_sum
        assert {k: v.correct for k, v in score.per_published_type.items()} == right_num
        assert list(score.per_published_type) == list(all_sum)  # printed in the release's order
        assert score.overall.total == sum(all_sum.values()) and score.overall.correct == sum(right_num.values())


def test_every_failed_entry_is_in_the_denominator_and_listed() -> None:
    records = [
        {"id": "0", "type": "Basic Questions", "pred": "(A)", "answer_letter": "A", "option_letters": ["A", "B"]},
        {"id": "1", "type": "Basic Questions", "pred": "", "answer_letter": "B", "option_letters": ["A", "B"]},
        {"id": "2", "type": "Future Predictions", "pred": "The object sits.", "answer_letter": "A",
         "option_letters": ["A", "B"]},
    ]
    failed = [Failed(item_id="3", qa_type="Future Predictions", reason="video_not_found"),
              Failed(item_id="4", qa_type="unknown", reason="malformed_sample")]
    score = score_q(records, failed)
    assert (score.overall.correct, score.overall.total) == (1, 5)
    assert list(score.per_type) == ["basic", "future", "unknown"]  # paper order, unknown types after
    assert score.per_type["future"].total == 2 and score.per_type["basic"].accuracy == 0.5
    assert [u.item_id for u in score.unparseable] == ["1", "2"]  # empty; "T" is no option
    assert [f["id"] for f in score.to_json()["failed"]] == ["3", "4"]
    assert "####### average #######\nall num: 5\nright num: 1\naccuracy: 0.2" in score.release_text()
