"""A stub OpenAI-compatible HTTP server for tests and benchmarks: chat completions with injectable latency and faults.

`StubOpenAIServer` listens on 127.0.0.1 (port 0 picks a free port) and serves `POST /v1/chat/completions` and
`GET /v1/models` from its own asyncio event loop in a background thread, so a test or benchmark starts it with
`with StubOpenAIServer(...) as server:` and points a client at `server.base_url`. It is written on bare asyncio
streams (HTTP/1.1 with keep-alive, Content-Length bodies) rather than a web framework: nothing to install, no
import cost, hundreds of overlapping requests per second, and exact control over broken replies (dropped
connections, truncated JSON bodies). Latency is an `asyncio.sleep`, so concurrent requests overlap. Faults are
injected by a seeded fraction or by a scripted sequence. Every request body is recorded, and the peak number of
requests being served at once is counted, so tests can check request shapes and concurrency bounds.
It is a real server for tests, not a model: replies come from a pluggable `responder`.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

Fault = Literal[
    "rate_limit", "server_error", "unavailable", "timeout", "malformed", "drop", "bad_request", "unauthorized"
]
FAULTS: tuple[Fault, ...] = (
    "rate_limit", "server_error", "unavailable", "timeout", "malformed", "drop", "bad_request", "unauthorized"
)
Responder = Callable[[Mapping[str, Any]], str]

_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
    429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable",
}
# Longest a request may hang before the server gives up on its own (a "timeout" fault that no client cut short).
_MAX_HANG_S = 30.0


def minimal_json_for_schema(schema: Mapping[str, Any]) -> Any:
    """The smallest value that satisfies a (simple) JSON schema: required keys, first enum value, min lengths."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if schema.get(combinator):
            return minimal_json_for_schema(schema[combinator][0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: minimal_json_for_schema(properties.get(name, {})) for name in schema.get("required", properties)}
    if kind == "array":
        item = minimal_json_for_schema(schema.get("items", {"type": "string"}))
        return [item] * int(schema.get("minItems", 0))
    if kind == "string":
        return "x" * max(1, int(schema.get("minLength", 1)))
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return float(schema.get("minimum", 0.0))
    if kind == "boolean":
        return False
    return None


def default_responder(request: Mapping[str, Any]) -> str:
    """A schema-valid minimal JSON when the request asks for a JSON schema, `{}` in JSON mode, else "ok"."""
    response_format = request.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        return json.dumps(minimal_json_for_schema(response_format.get("json_schema", {}).get("schema", {})))
    if response_format.get("type") == "json_object":
        return "{}"
    return "ok"


class StubOpenAIServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1, run in a background thread.

    latency_s: seconds every completion waits before answering (overlapping across requests).
    fault_rate / fault_kinds / seed: each completion request fails with that probability, with a kind drawn
        uniformly from `fault_kinds` (seeded, so a run is reproducible for a given arrival order).
    fault_script: faults for the first requests in arrival order (`None` = answer normally); takes precedence.
    retry_after_s: the `Retry-After` header sent with 429 / 503 faults (None sends none).
    hang_s: how long a "timeout" fault keeps the request open (set it above the client's timeout).
    """

    def __init__(
        self,
        *,
        responder: Responder = default_responder,
        latency_s: float = 0.0,
        fault_rate: float = 0.0,
        fault_kinds: Sequence[Fault] = ("rate_limit", "server_error", "timeout"),
        fault_script: Sequence[Fault | None] = (),
        retry_after_s: float | None = None,
        hang_s: float = 5.0,
        model: str = "stub-model",
        seed: int = 0,
        port: int = 0,
    ) -> None:
        unknown = [f for f in (*fault_kinds, *fault_script) if f is not None and f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; expected some of {FAULTS}")
        self.responder = responder
        self.latency_s = latency_s
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        self.retry_after_s = retry_after_s
        self.hang_s = min(hang_s, _MAX_HANG_S)
        self.model = model
        self._script = list(fault_script)
        self._random = random.Random(seed)
        self._requested_port = port
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._authorizations: list[str] = []
        self._faults: list[Fault] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._busy_s = 0.0  # summed time requests were being served: busy / wall = average in flight
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self.port = 0

    # ------------------------------------------------------------ life cycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> StubOpenAIServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 10.0) -> None:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle_connection, "127.0.0.1", self._requested_port, backlog=1024)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="stub-openai-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise RuntimeError("stub server did not start in time")
        if errors:
            raise errors[0]

    def stop(self, timeout_s: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(timeout_s)

    # ------------------------------------------------------------ what tests read

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of all chat-completion requests received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def authorizations(self) -> list[str]:
        """The `Authorization` header of every HTTP request received (empty string when absent)."""
        with self._lock:
            return list(self._authorizations)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def faults_injected(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    @property
    def busy_seconds(self) -> float:
        """Summed seconds chat-completion requests were being served (over a wall time: the average in flight)."""
        with self._lock:
            return self._busy_s

    def set_fault_script(self, script: Sequence[Fault | None]) -> None:
        """Replace the faults for the next requests (an empty script: the server answers normally again)."""
        unknown = [f for f in script if f is not None and f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; expected some of {FAULTS}")
        with self._lock:
            self._script = list(script)

    @property
    def max_concurrent(self) -> int:
        """The most chat-completion requests that were being served at the same moment."""
        with self._lock:
            return self._max_in_flight

    # ------------------------------------------------------------ HTTP

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, path, headers, body = request
                with self._lock:
                    self._authorizations.append(headers.get("authorization", ""))
                keep_alive = await self._dispatch(method, path, body, writer)
                if not keep_alive or headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _dispatch(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        path = path.split("?", 1)[0].rstrip("/")
        if path.endswith("/models") and method == "GET":
            models = {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "stub"}]}
            await _respond(writer, 200, json.dumps(models).encode())
            return True
        if not path.endswith("/chat/completions"):
            await _respond(writer, 404, _error_body("not found", "not_found"))
            return True
        if method != "POST":
            await _respond(writer, 405, _error_body("method not allowed", "invalid_request_error"))
            return True
        try:
            payload = json.loads(body)
        except json.JSONDecodeError:
            await _respond(writer, 400, _error_body("request body is not JSON", "invalid_request_error"))
            return True
        return await self._complete(payload, writer)

    async def _complete(self, payload: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        with self._lock:
            self._requests.append(payload)
            fault = self._next_fault()
            if fault is not None:
                self._faults.append(fault)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        started = time.perf_counter()
        try:
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            if fault is not None:
                return await self._inject(fault, writer)
            content = self.responder(payload)
            await _respond(writer, 200, json.dumps(self._completion(payload, content)).encode())
            return True
        finally:
            with self._lock:
                self._in_flight -= 1
                self._busy_s += time.perf_counter() - started

    def _next_fault(self) -> Fault | None:
        if self._script:
            return self._script.pop(0)
        if self.fault_rate > 0 and self._random.random() < self.fault_rate:
            return self._random.choice(self.fault_kinds)
        return None

    async def _inject(self, fault: Fault, writer: asyncio.StreamWriter) -> bool:
        retry_headers = {} if self.retry_after_s is None else {"Retry-After": f"{self.retry_after_s:g}"}
        if fault == "rate_limit":
            await _respond(writer, 429, _error_body("rate limited", "rate_limit_exceeded"), retry_headers)
        elif fault == "server_error":
            await _respond(writer, 500, _error_body("internal error", "server_error"))
        elif fault == "unavailable":
            await _respond(writer, 503, _error_body("overloaded", "server_error"), retry_headers)
        elif fault == "bad_request":
            await _respond(writer, 400, _error_body("context length exceeded", "invalid_request_error"))
        elif fault == "unauthorized":
            await _respond(writer, 401, _error_body("invalid api key", "invalid_api_key"))
        elif fault == "malformed":
            await _respond(writer, 200, b'{"id": "chatcmpl-stub", "object": "chat.completion", "choices": [{')
        elif fault == "timeout":
            await asyncio.sleep(self.hang_s)
            return False
        elif fault == "drop":
            writer.transport.abort()
            return False
        return True

    def _completion(self, payload: Mapping[str, Any], content: str) -> dict[str, Any]:
        prompt_tokens = sum(_count_words(m.get("content")) for m in payload.get("messages", []))
        completion_tokens = _count_words(content)
        return {
            "id": f"chatcmpl-stub-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model", self.model),
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _count_words(content: Any) -> int:
    """A deterministic stand-in for a tokenizer: words of text parts, 1 per image part."""
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        return sum(_count_words(part.get("text", "")) if part.get("type") == "text" else 1 for part in content)
    return 0


def _error_body(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": code, "code": code}}).encode()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    """One HTTP/1.1 request (request line, headers, Content-Length body); None when the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return method, path, headers, body


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes, extra_headers: Mapping[str, str] | None = None
) -> None:
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(extra_headers or {})}
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
