"""Parse-and-repair of a model's JSON reply: the fallback for servers or models without reliable structured output.

`extract_json(text)` accepts the usual ways a chat model wraps a JSON object (a Markdown code fence, prose
before and after, trailing commas, smart quotes around keys) and returns the object as a dict, or raises
`InvalidReplyError`. It does not re-ask the model: one repair re-ask with the error message is the agent's job.
"""

from __future__ import annotations

import json
import re
from typing import Any

from engine.errors import InvalidReplyError

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_SMART_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})


def extract_json(text: str) -> dict[str, Any]:
    """The first JSON object in `text`, repaired when needed; `InvalidReplyError` when there is none."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidReplyError("empty reply: expected a JSON object")
    candidates = [match.group(1) for match in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        for snippet in _object_snippets(candidate):
            parsed = _parse_leniently(snippet)
            if isinstance(parsed, dict):
                return parsed
    preview = text.strip().replace("\n", " ")[:120]
    raise InvalidReplyError(f"reply holds no parsable JSON object: {preview!r}")


def _object_snippets(text: str) -> list[str]:
    """Balanced `{...}` spans of `text`, outermost first, honouring strings and escapes."""
    snippets = []
    start = text.find("{")
    while start != -1:
        end = _matching_brace(text, start)
        if end is None:
            # Unbalanced (a truncated reply): offer the tail anyway so a missing final brace can be repaired.
            snippets.append(text[start:])
            break
        snippets.append(text[start : end + 1])
        start = text.find("{", end + 1)
    return snippets


def _matching_brace(text: str, start: int) -> int | None:
    depth = 0
    in_string = False
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
    return None


def _parse_leniently(snippet: str) -> Any:
    attempts = (snippet, _repair(snippet), _close_brackets(_repair(snippet)))
    for attempt in attempts:
        try:
            return json.loads(attempt)
        except json.JSONDecodeError:
            continue
    return None


def _repair(snippet: str) -> str:
    return _TRAILING_COMMA.sub(r"\1", snippet.translate(_SMART_QUOTES)).strip()


def _close_brackets(snippet: str) -> str:
    """Append the closing brackets a truncated object is missing (strings left open are closed first)."""
    stack: list[str] = []
    in_string = False
    escaped = False
    for char in snippet:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
        elif char in "}]" and stack:
            stack.pop()
    closed = snippet + ('"' if in_string else "")
    closed = _TRAILING_COMMA.sub(r"\1", closed.rstrip().rstrip(",") + "".join(reversed(stack)))
    return closed
