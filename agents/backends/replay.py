"""The replay chat backend: answers from a cassette of recorded requests, keyed by a hash of the canonical request.

A cassette is a JSONL file (one `{"key", "request", "reply"}` entry a line; new entries are appended with one
`write` on an `O_APPEND` descriptor, and a torn last line from a killed run is skipped when read) or, when its
name ends in `.json`, one JSON object `{key: entry}` rewritten through a temporary name and a rename.
The key is `stable_hash` of the canonical request: the messages with every image replaced by the SHA-256 of
its JPEG bytes, the reply schema and its name, temperature, max_tokens, and the model of the recorded backend
(the `inner` backend, or `config.inner.model` when replaying without one). `task` is not part
of it: a real model sees only the messages. Modes: `strict` raises `ReplayMissError` on a miss (and
`complete_batch` propagates it, because a stale cassette should fail the run, not reject every item);
`record` answers hits from the cassette and sends misses to `inner`, appending their replies; `fallthrough`
answers misses from `inner` without recording them. Reruns are free and tests deterministic.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agents.backends.base import ChatBackend, ChatReply, ChatRequest, ImagePart
from engine.config import ReplayChatConfig
from engine.errors import BackendUnavailableError, ConfigError, ReplayMissError
from engine.ids import bytes_hash, stable_hash


def canonical_request(request: ChatRequest, model: str) -> dict[str, Any]:
    """The parts of a request that decide a model's reply, as plain JSON (images by content hash)."""
    messages = [
        {
            "role": message.role,
            "content": [
                {"image_sha256": bytes_hash(part.jpeg, length=64)} if isinstance(part, ImagePart) else {"text": part}
                for part in message.content
            ],
        }
        for message in request.messages
    ]
    canonical = {
        "model": model,
        "messages": messages,
        "json_schema": _plain(request.json_schema),
        "schema_name": request.schema_name if request.json_schema is not None else None,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
    }
    if request.top_p is not None:  # only when set, so cassettes recorded before top_p existed still match
        canonical["top_p"] = request.top_p
    return canonical


def request_key(request: ChatRequest, model: str) -> str:
    """The cassette key of a request: a 32-hex-digit hash of its canonical form."""
    return stable_hash(canonical_request(request, model), length=32)


class ReplayChatBackend:
    """`ChatBackend` answering from a cassette; see the module docstring for the modes."""

    kind = "replay"

    def __init__(self, config: ReplayChatConfig, inner: ChatBackend | None = None) -> None:
        if config.mode != "strict" and inner is None:
            raise ConfigError(f"replay mode {config.mode!r} needs an inner backend to answer misses")
        self.config = config
        self.inner = inner
        if inner is not None:
            self.model = inner.model
        else:
            self.model = config.inner.model if config.inner is not None else ""
        self.path = Path(config.cassette)
        self._entries: dict[str, dict[str, Any]] = _load(self.path)
        self._pending: dict[str, asyncio.Future[ChatReply]] = {}
        self.hits = 0
        self.misses = 0
        self.recorded = 0

    def __repr__(self) -> str:
        return f"ReplayChatBackend(cassette={str(self.path)!r}, mode={self.config.mode!r}, entries={len(self)})"

    def __len__(self) -> int:
        return len(self._entries)

    async def complete(self, request: ChatRequest) -> ChatReply:
        key = request_key(request, self.model)
        entry = self._entries.get(key)
        if entry is not None:
            self.hits += 1
            return _reply_from(entry["reply"])
        self.misses += 1
        if self.config.mode == "strict" or self.inner is None:
            raise ReplayMissError(f"cassette {self.path} holds no reply for request {key} (task {request.task!r})")
        pending = self._pending.get(key)
        if pending is not None:  # the same request is already on its way: share its reply, record it once
            return await asyncio.shield(pending)
        future: asyncio.Future[ChatReply] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            reply = await self.inner.complete(request)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marks it retrieved when nobody else waits
            raise
        finally:
            self._pending.pop(key, None)
        future.set_result(reply)
        if self.config.mode == "record":
            self._record(key, request, reply)
        return reply

    async def complete_batch(self, requests: Sequence[ChatRequest]) -> list[ChatReply | Exception]:
        results = await asyncio.gather(*(self.complete(r) for r in requests), return_exceptions=True)
        for result in results:
            if isinstance(result, BackendUnavailableError | ConfigError | ReplayMissError):
                raise result
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        return list(results)

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()

    def _record(self, key: str, request: ChatRequest, reply: ChatReply) -> None:
        entry = {
            "key": key,
            "request": canonical_request(request, self.model),
            "reply": {
                "text": reply.text,
                "model": reply.model,
                "backend": reply.backend,
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
            },
        }
        self._entries[key] = entry
        self.recorded += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.suffix == ".json":
            _write_json_atomic(self.path, self._entries)
        else:
            _append_line(self.path, json.dumps(entry, sort_keys=True, ensure_ascii=False))


def _reply_from(recorded: Mapping[str, Any]) -> ChatReply:
    return ChatReply(
        text=recorded["text"],
        model=recorded.get("model", ""),
        backend="replay",
        latency_s=0.0,
        prompt_tokens=int(recorded.get("prompt_tokens", 0)),
        completion_tokens=int(recorded.get("completion_tokens", 0)),
    )


def _load(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"cassette {path} is not valid JSON: {exc}") from exc
        return {str(key): entry for key, entry in data.items()}
    entries: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a killed writer; its request is simply recorded again
        if isinstance(entry, dict) and "key" in entry and "reply" in entry:
            entries[entry["key"]] = entry
    return entries


def _append_line(path: Path, line: str) -> None:
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)  # one write on an O_APPEND descriptor: concurrent writers do not interleave lines
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, entries: Mapping[str, Any]) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(entries, handle, sort_keys=True, ensure_ascii=False, indent=1)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _plain(value: Any) -> Any:
    """Mappings and sequences (frozen or not) as plain JSON-able dicts and lists, so equal schemas hash equally."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
