"""The one parsing and text-bounding layer for everything users and models hand in: JSON, YAML, text, messages.

Files from outside (manifests, the 700K JSON, configs, mask, truth and bench files) are decoded and parsed here,
never with a bare `json.loads` / `yaml.safe_load`, so hostile structure ends the same way everywhere:

- bytes: a UTF-8 byte-order mark is dropped; bytes that are not UTF-8 raise `ParseError` naming the offset;
- JSON: integers longer than `MAX_INT_DIGITS` digits become floats (Python's int parser refuses 4300+ digits and
  is quadratic below that), a duplicate key marks its object (`DUPLICATE_KEYS`), nesting beyond the interpreter's
  limit is a `ParseError`; `structure_problem` then names an item's duplicate keys, nesting deeper than
  `MAX_DEPTH`, or text that is not valid Unicode (lone surrogates), so a caller rejects that row or item alone;
- YAML: duplicate keys, aliases that expand beyond `MAX_YAML_NODES` nodes ("billion laughs"), nesting beyond the
  interpreter's limit and huge numbers are a `ConfigError` of one line;
- text: `clean_text` removes control characters (C0 and C1 except tab and newline, NUL and ESC included) and
  Unicode bidi overrides/isolates, and replaces lone surrogates with U+FFFD; `text_problem` names a text longer
  than a limit or not clean;
- the process's text bound: `text_limit(n)` (the stage runner, `validate`, `doctor`) is what `current_text_limit`
  gives model-reply validation and sample validation;
- messages: `preview` and `bounded` keep every message that quotes input to a bounded length on one line.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from engine.errors import ConfigError

MAX_INT_DIGITS = 64  # longer integers are read as floats (inf beyond ~308 digits): nothing of ours counts that far
MAX_DEPTH = 64  # nesting deeper than this in one item or row is hostile: none of our formats goes beyond ~8
MAX_YAML_NODES = 100_000  # nodes of a YAML document once its aliases are expanded
MAX_YAML_CHARS = 1 << 20  # a config file of more than 1 MiB of text is not a config
MESSAGE_CHARS = 2000  # the most characters of any error or reject message
DUPLICATE_KEYS = "\x00duplicate_keys"  # set on a parsed JSON object whose text repeated a key (the repeated keys)

# C0 controls but tab and newline, DEL, C1 controls; bidi embeddings/overrides (U+202A..E) and isolates (U+2066..9).
_UNCLEAN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class ParseError(ValueError):
    """A file or field that cannot be parsed as the format it claims (its message is bounded)."""


# ------------------------------------------------------------------------------------------ messages


def bounded(text: object, limit: int = MESSAGE_CHARS) -> str:
    """`text` on one line, at most `limit` characters (the cut says how long it was)."""
    line = _SURROGATE.sub("\ufffd", " ".join(str(text).split()))
    if len(line) <= limit:
        return line
    return f"{line[: max(0, limit - 40)]}... ({len(line)} characters)"


def preview(value: object, limit: int = 80) -> str:
    """A short repr of an input value for a message: never the whole of a huge field."""
    if isinstance(value, str | bytes):
        head = value[:limit]
        unit = "characters" if isinstance(value, str) else "bytes"
        more = f"... ({len(value)} {unit})" if len(value) > limit else ""
        return _SURROGATE.sub("\ufffd", repr(head)) + more
    if isinstance(value, Mapping):
        return f"a mapping of {len(value)} keys"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    return bounded(repr(value), limit)


# ------------------------------------------------------------------------------------------ text


DEFAULT_TEXT_CHARS = 20_000  # `limits.max_text_chars` by default (engine.config.LimitsConfig)
_LIMIT = {"chars": DEFAULT_TEXT_CHARS, "depth": 0, "outside": DEFAULT_TEXT_CHARS}
_LIMIT_GUARD = threading.Lock()


@contextlib.contextmanager
def text_limit(chars: int) -> Iterator[None]:
    """Make `chars` the bound of every text this process admits into a record (model replies and exported
    samples) for the block: the stage runner, `validate` and `doctor` set the run's `limits.max_text_chars`."""
    with _LIMIT_GUARD:
        if _LIMIT["depth"] == 0:
            _LIMIT["outside"] = _LIMIT["chars"]
        _LIMIT["chars"] = int(chars)
        _LIMIT["depth"] += 1
    try:
        yield
    finally:
        with _LIMIT_GUARD:
            # Stage tasks of one run overlap on threads with the same limit: it holds until the last one ends.
            _LIMIT["depth"] -= 1
            if _LIMIT["depth"] == 0:
                _LIMIT["chars"] = _LIMIT["outside"]


def current_text_limit() -> int:
    """The bound `text_limit` set (`DEFAULT_TEXT_CHARS` outside any)."""
    return _LIMIT["chars"]


def clean_text(text: str) -> str:
    """`text` without control characters and bidi controls, lone surrogates replaced (tab and newline kept)."""
    if _UNCLEAN.search(text):
        text = _UNCLEAN.sub("", text)
    if _SURROGATE.search(text):
        text = _SURROGATE.sub("\ufffd", text)
    return text


def is_clean(text: str) -> bool:
    return not (_UNCLEAN.search(text) or _SURROGATE.search(text))


def text_problem(text: str, limit: int | None) -> str | None:
    """Why `text` may not enter a record (longer than `limit`, control characters, lone surrogates), or None."""
    if limit is not None and len(text) > limit:
        return f"{len(text)} characters, above limits.max_text_chars ({limit})"
    if not is_clean(text):
        found = (_UNCLEAN.search(text) or _SURROGATE.search(text)).group()  # type: ignore[union-attr]
        return f"holds the control character U+{ord(found):04X} (texts are stored clean)"
    return None


# ------------------------------------------------------------------------------------------ JSON


def decode_utf8(data: bytes, what: str) -> str:
    """`data` as text: a UTF-8 BOM dropped; `ParseError` (naming the byte offset) when it is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParseError(f"{what} is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 4]!r})") from None


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        value[DUPLICATE_KEYS] = sorted({key for key, _ in pairs if key in seen or seen.add(key)})  # type: ignore[func-returns-value]
    return value


def _int(digits: str) -> int | float:
    return int(digits) if len(digits) <= MAX_INT_DIGITS else float(digits)


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_int=_int)


def loads_json(text: str | bytes, what: str) -> Any:
    """Parse a JSON document (see the module docstring); `ParseError` with a bounded message when it is none."""
    if isinstance(text, bytes | bytearray):
        text = decode_utf8(bytes(text), what)
    elif text.startswith("\ufeff"):
        text = text[1:]
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ParseError(f"{what} nests deeper than this reader allows") from None
    except ValueError as exc:  # a number the float parser refuses
        raise ParseError(f"{what} is not valid JSON: {bounded(exc, 200)}") from None


def structure_problem(value: Any, max_depth: int = MAX_DEPTH) -> str | None:
    """What makes one parsed item hostile (duplicate keys, nesting deeper than `max_depth`, lone surrogates in a
    key or text), or None. Iterative: a deep item cannot exhaust the stack here."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return f"nests deeper than {max_depth} levels"
        if isinstance(node, Mapping):
            if DUPLICATE_KEYS in node:
                keys = ", ".join(preview(k, 40) for k in node[DUPLICATE_KEYS][:5])
                return f"repeats the key(s) {keys}"
            for key, item in node.items():
                if isinstance(key, str) and _SURROGATE.search(key):
                    return f"key {preview(key, 40)} is not valid Unicode (a lone surrogate)"
                stack.append((item, depth + 1))
        elif isinstance(node, list | tuple):
            stack.extend((item, depth + 1) for item in node)
        elif isinstance(node, str) and _SURROGATE.search(node):
            return f"text {preview(node, 40)} is not valid Unicode (a lone surrogate)"
    return None


# ------------------------------------------------------------------------------------------ YAML


def load_yaml(text: str | bytes, what: str) -> Any:
    """Parse a YAML document with the safe loader; duplicate keys, alias bombs, runaway nesting, huge numbers and
    anything unparsable are a one-line `ConfigError` naming `what`."""
    import yaml

    class _Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            keys = [self.construct_object(key, deep=True) for key, _ in node.value]
            hashable = [key for key in keys if isinstance(key, str | int | float | bool) or key is None]
            if len(set(hashable)) != len(hashable):
                repeated = sorted({str(k) for k in hashable if hashable.count(k) > 1})
                raise ConfigError(f"{what}: the key(s) {', '.join(preview(k, 40) for k in repeated[:5])} appear "
                                  "twice in one mapping")
            return super().construct_mapping(node, deep=deep)

    if isinstance(text, bytes | bytearray):
        try:
            text = decode_utf8(bytes(text), what)
        except ParseError as exc:
            raise ConfigError(str(exc)) from None
    if len(text) > MAX_YAML_CHARS:
        raise ConfigError(f"{what} holds {len(text)} characters; a config has at most {MAX_YAML_CHARS}")
    if _flow_depth(text) > MAX_DEPTH:  # PyYAML takes quadratic time on deep flow nesting before it fails
        raise ConfigError(f"{what} nests deeper than {MAX_DEPTH} levels")
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_size(node, what)
        return loader.construct_document(node)
    except ConfigError:
        raise
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {bounded(exc, 400)}") from None
    except RecursionError:
        raise ConfigError(f"{what} nests deeper than a config may") from None
    except (ValueError, TypeError, OverflowError) as exc:  # a number of 4300+ digits, an unhashable key, ...
        raise ConfigError(f"{what} holds a value that cannot be read: {bounded(exc, 200)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _flow_depth(text: str) -> int:
    """The deepest nesting of `[` / `{` in `text` (brackets inside quotes count too: an upper bound)."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def _check_yaml_size(root: Any, what: str) -> None:
    """Refuse a document whose node graph, aliases expanded, has more than MAX_YAML_NODES nodes (computed without
    expanding it: each node's expanded size once, from its children's)."""
    import yaml

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # nodes whose children are being sized: meeting one again is a cycle
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if not children_done and id(node) in open_nodes:
            raise ConfigError(f"{what} holds a recursive alias (a value that contains itself)")
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        if children_done or not children:
            sizes[id(node)] = 1 + sum(sizes.get(id(child), 1) for child in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise ConfigError(f"{what} expands to more than {MAX_YAML_NODES} values (aliases that expand?)")
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
