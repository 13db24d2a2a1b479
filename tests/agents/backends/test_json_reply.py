"""extract_json: the local parse-and-repair of JSON replies wrapped in fences, prose or with small syntax slips."""

from __future__ import annotations

import pytest

from agents.backends.json_reply import extract_json
from engine.errors import InvalidReplyError


@pytest.mark.parametrize(
    "text",
    [
        '{"subject": "dog", "others": ["ball"]}',
        'Sure! Here is the JSON:\n```json\n{"subject": "dog", "others": ["ball"]}\n```\nAnything else?',
        '```\n{"subject": "dog", "others": ["ball",],}\n```',
        'The answer is {"subject": "dog", "others": ["ball"]} as requested.',
        "{\u201csubject\u201d: \u201cdog\u201d, \u201cothers\u201d: [\u201cball\u201d]}",
        '{"subject": "dog", "others": ["ball"',  # truncated by max_tokens
    ],
)
def test_repairs_common_wrappings(text: str) -> None:
    assert extract_json(text) == {"subject": "dog", "others": ["ball"]}


def test_braces_inside_strings_do_not_confuse_the_scan() -> None:
    text = 'note: {"caption": "a {curly} dog", "n": 2} trailing }'
    assert extract_json(text) == {"caption": "a {curly} dog", "n": 2}


def test_skips_a_non_object_fragment_before_the_object() -> None:
    assert extract_json('{oops} then {"ok": true}') == {"ok": True}


@pytest.mark.parametrize("text", ["", "   ", "no json here", "[1, 2, 3]", "{not: json: at all}"])
def test_no_object_raises_invalid_reply(text: str) -> None:
    with pytest.raises(InvalidReplyError):
        extract_json(text)
