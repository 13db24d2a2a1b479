"""The chat backend for any OpenAI-compatible server (vLLM's `vllm serve`, the OpenAI API), lean or through the SDK.

It sends text and JPEG images (as data URLs), asks for structured output the way the config says (a strict
JSON schema, JSON mode, or nothing), keeps at most `max_in_flight` requests on the wire, and retries transient
failures itself (timeouts, 429, 408/409, 5xx, dropped connections, malformed bodies) with exponential backoff
and full jitter, honouring `Retry-After`. The client's own retries are off so every retry is counted here.
A backend that stays down raises `BackendUnavailableError` (fail the run); a request the server refuses as
bad (other 4xx) raises `InvalidReplyError` (reject the item); bad credentials or an unknown model/URL raise
`ConfigError`. Tokens, requests and retries are counted on the backend (`usage`). The API key is read from the
environment variable the config names and never appears in reprs, logs or error messages. Two request paths
(`config.client`), both behind the same retries, bound, accounting and reply parsing: `lean`
(agents/backends/openai_lean.py) writes the JSON body, serialised once per request, with a head built once per
client straight onto our pooled HTTP/1.1 connections (plain http://, the default for vLLM-style servers),
because at hundreds of requests per second the SDK's own request building, not the server, is what limits the
rate; `sdk` goes through `AsyncOpenAI`'s documented raw `post` with the body already serialised (`content=`)
and the raw `httpx2.Response` back (`cast_to`), over `PooledHttp11Transport` behind `LeanAsyncClient` or the
SDK's own httpx transport (`config.transport`); it is the path for https:// and proxies. Either way the reply
JSON is read by `_reply` (no second validation of our own payload, no SDK models) and an HTTP error status is
sorted by `_status_error`. `timeout_s` bounds each attempt as a whole on the lean path (connect, send and
reply: one timer), and each phase on the SDK path (httpx's connect/write/read timeouts).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents.backends.base import ChatMessage, ChatReply, ChatRequest, ImagePart
from engine.config import OpenAIChatConfig
from engine.errors import (
    BackendUnavailableError,
    ConfigError,
    InvalidReplyError,
    TransientBackendError,
)

log = logging.getLogger(__name__)

# vLLM accepts any key; the OpenAI client refuses to start without one.
PLACEHOLDER_API_KEY = "EMPTY"
# A server asking for longer than this is treated as down for our purposes; we wait at most this long.
_MAX_RETRY_AFTER_S = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatUsage:
    """Cumulative counters of one backend: what it asked, what it got, what it cost."""

    requests: int = 0  # calls to `complete` (items), not HTTP attempts
    attempts: int = 0  # HTTP attempts, retries included
    replies: int = 0
    failures: int = 0
    retries: int = 0
    retry_wait_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_in_flight: int = 0  # the most attempts this backend had on the wire at once


class _MalformedReply(TransientBackendError):
    """A reply body that could not be parsed: retried, and an `InvalidReplyError` if it never parses."""


class OpenAIChatBackend:
    """`ChatBackend` over the OpenAI chat-completions protocol; see the module docstring."""

    kind = "openai"

    def __init__(self, config: OpenAIChatConfig) -> None:
        if config.max_in_flight < 1:
            raise ConfigError("openai backend: max_in_flight must be at least 1")
        if config.transport == "pooled" and not config.base_url.startswith("http://"):
            raise ConfigError("openai backend: transport 'pooled' speaks plain http://; use 'httpx' for https")
        if config.client == "lean" and not config.base_url.startswith("http://"):
            raise ConfigError("openai backend: client 'lean' speaks plain http://; use client 'sdk' for https")
        if config.client == "lean" and config.transport == "httpx":
            raise ConfigError("openai backend: transport 'httpx' is the SDK's; it needs client 'sdk' (or 'auto')")
        self.config = config
        self.model = config.model
        self._api_key = os.environ.get(config.api_key_env) or PLACEHOLDER_API_KEY
        if not (self._api_key.isascii() and self._api_key.isprintable()):
            # It goes into a header line: a line break would smuggle headers onto the wire. Never quote it.
            raise ConfigError(f"openai backend: the API key in ${config.api_key_env} is not one line of ASCII text")
        if self.uses_lean_client:
            from agents.backends.openai_lean import LeanChatClient

            LeanChatClient(config.base_url, self._api_key)  # a bad base_url or key fails here, not on first use
        self._random = random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._semaphore: asyncio.Semaphore | None = None
        self._counts: dict[str, Any] = dict.fromkeys(ChatUsage.__slots__, 0)
        self._counts["retry_wait_s"] = 0.0
        self._in_flight = 0
        self._completions_url = ""
        self._raw_response: Any = None
        self._send: Any = None  # the request path of the running loop: body bytes -> the body of a 2xx reply
        self._lean_errors: tuple[Any, Any] = ((), ())  # (timeouts, transport errors) of the lean path

    def __repr__(self) -> str:
        return (
            f"OpenAIChatBackend(model={self.model!r}, base_url={self.config.base_url!r}, "
            f"max_in_flight={self.config.max_in_flight}, structured_output={self.config.structured_output!r})"
        )

    @property
    def uses_pooled_transport(self) -> bool:
        """Whether requests go over our pooled HTTP/1.1 connections (lean client, or the SDK's `transport`)."""
        if self.config.client == "lean":
            return True
        if self.config.transport != "auto":
            return self.config.transport == "pooled"
        proxied = any(os.environ.get(name) for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"))
        return self.config.base_url.startswith("http://") and not proxied

    @property
    def uses_lean_client(self) -> bool:
        """Whether requests take the lean path rather than the SDK's (see `OpenAIChatConfig.client`)."""
        if self.config.client != "auto":
            return self.config.client == "lean"
        return self.config.transport != "httpx" and self.uses_pooled_transport

    @property
    def usage(self) -> ChatUsage:
        return ChatUsage(**self._counts)

    # ------------------------------------------------------------ protocol

    async def complete(self, request: ChatRequest) -> ChatReply:
        # Serialised once here, so that retries re-send the same bytes and the client never copies a dict.
        payload = chat_completion_body(request, self.config)
        self._counts["requests"] += 1
        try:
            reply = await self._complete_with_retries(payload)
        except BaseException:
            self._counts["failures"] += 1
            raise
        self._counts["replies"] += 1
        self._counts["prompt_tokens"] += reply.prompt_tokens
        self._counts["completion_tokens"] += reply.completion_tokens
        return reply

    async def complete_batch(self, requests: Sequence[ChatRequest]) -> list[ChatReply | Exception]:
        """All requests at once (the semaphore bounds the wire); one reply or exception per request, in order."""
        results = await asyncio.gather(*(self.complete(r) for r in requests), return_exceptions=True)
        for result in results:
            if isinstance(result, BackendUnavailableError | ConfigError):
                raise result
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        return list(results)

    async def aclose(self) -> None:
        client, loop = self._client, self._loop
        self._client, self._loop, self._semaphore, self._send = None, None, None, None
        # A client whose event loop has ended cannot be closed from another loop; its sockets died with it.
        if client is not None and loop is asyncio.get_running_loop():
            await (client.aclose() if self.uses_lean_client else client.close())

    # ------------------------------------------------------------ internals

    def _connection(self) -> tuple[Any, asyncio.Semaphore]:
        """The request path and semaphore of the running loop (both are bound to a loop: a new loop, new ones)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._send is None or self._semaphore is None:
            if self.uses_lean_client:
                import httpx2

                from agents.backends.openai_lean import LeanChatClient

                self._client = LeanChatClient(self.config.base_url, self._api_key)
                self._lean_errors = ((TimeoutError, httpx2.TimeoutException), httpx2.TransportError)
                self._send = self._lean_send
            else:
                self._open_sdk_client()
                self._send = self._sdk_send
            self._semaphore = asyncio.Semaphore(self.config.max_in_flight)
            self._loop = loop
        return self._send, self._semaphore

    def _open_sdk_client(self) -> None:
        import httpx2
        from openai import AsyncOpenAI

        extra: dict[str, Any] = {}
        if self.uses_pooled_transport:
            from agents.backends.http_transport import LeanAsyncClient, PooledHttp11Transport

            extra["http_client"] = LeanAsyncClient(transport=PooledHttp11Transport(), trust_env=False)
        self._client = AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=0,  # retries happen here, where they are counted and the backoff is ours
            **extra,
        )
        # The endpoint as an absolute URL, joined the way the client joins a relative path: the client
        # then uses it as is instead of re-joining it to `base_url` on every request.
        base = self._client.base_url
        self._completions_url = str(base.copy_with(raw_path=base.raw_path + b"chat/completions"))
        self._raw_response = httpx2.Response  # `cast_to` this: the reply as received, parsed by `_reply`

    async def _complete_with_retries(self, payload: bytes) -> ChatReply:
        send, semaphore = self._connection()
        attempt = 0
        while True:
            try:
                return await self._attempt(send, semaphore, payload)
            except TransientBackendError as error:
                if attempt >= self.config.max_retries:
                    raise self._exhausted(error, attempt + 1) from None
                delay = self._backoff(attempt, error.retry_after_s)
                self._counts["retries"] += 1
                self._counts["retry_wait_s"] += delay
                log.debug("openai backend %s: %s; retry %d in %.2fs", self.model, error, attempt + 1, delay)
                await asyncio.sleep(delay)
                attempt += 1

    async def _attempt(self, send: Any, semaphore: asyncio.Semaphore, payload: bytes) -> ChatReply:
        async with semaphore:
            self._in_flight += 1
            counts = self._counts
            counts["attempts"] += 1
            if self._in_flight > counts["max_in_flight"]:
                counts["max_in_flight"] = self._in_flight
            started = time.perf_counter()
            try:
                body = await send(payload)
            finally:
                self._in_flight -= 1
        return self._reply(body, time.perf_counter() - started)

    async def _sdk_send(self, payload: bytes) -> bytes:
        try:
            # The client's documented raw `post`: its status-code errors, timeouts and connection handling,
            # without re-validating our own payload or building pydantic models of the reply (together about
            # a millisecond of CPU per request, the limit at hundreds of requests/s).
            response = await self._client.post(self._completions_url, content=payload, cast_to=self._raw_response)
        except Exception as exc:  # sorted into our taxonomy; anything unknown propagates unchanged
            raise self._classify(exc) from None
        return response.content

    async def _lean_send(self, payload: bytes) -> bytes:
        timeouts, transport_errors = self._lean_errors
        try:
            async with asyncio.timeout(self.config.timeout_s):  # one deadline: connect, send and reply
                status, headers, body = await self._client.post(payload)
        except timeouts:
            raise self._timed_out() from None
        except transport_errors as exc:
            raise TransientBackendError(f"{self._where}: connection failed ({type(exc).__name__})") from None
        if 200 <= status < 300:
            return body
        try:
            error_body = json.loads(body)
        except ValueError:
            error_body = body.decode("utf-8", "replace").strip()
        fields = {name.lower(): value for name, value in headers}
        raise self._status_error(status, _error_message(error_body, f"HTTP {status}"), fields)

    def _reply(self, body: bytes, latency_s: float) -> ChatReply:
        try:
            completion = json.loads(body)
            message = completion["choices"][0]["message"]
        except (ValueError, TypeError, KeyError, IndexError):  # ValueError: bad JSON or bad UTF-8
            raise _MalformedReply(f"{self.config.base_url} ({self.model}): malformed reply body") from None
        text = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(text, str):
            refusal = message.get("refusal") if isinstance(message, Mapping) else None
            raise InvalidReplyError(f"reply has no text content (refusal: {self._redact(str(refusal))})")
        usage = completion.get("usage") or {}
        return ChatReply(
            text=text,
            model=completion.get("model") or self.model,
            backend=self.kind,
            latency_s=latency_s,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    @property
    def _where(self) -> str:
        return f"{self.config.base_url} ({self.model})"

    def _timed_out(self) -> TransientBackendError:
        return TransientBackendError(f"{self._where}: no reply within {self.config.timeout_s:g}s")

    def _classify(self, exc: Exception) -> Exception:
        """An exception of the SDK path in our taxonomy."""
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return self._timed_out()
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            detail = type(cause).__name__ if cause is not None else "connection error"
            return TransientBackendError(f"{self._where}: connection failed ({detail})")
        if isinstance(exc, openai.APIStatusError):
            message = _error_message(exc.body, str(getattr(exc, "message", "") or type(exc).__name__))
            return self._status_error(exc.status_code, message, exc.response.headers)
        if isinstance(exc, json.JSONDecodeError | openai.APIResponseValidationError):
            return _MalformedReply(f"{self._where}: malformed reply body ({type(exc).__name__})")
        return exc

    def _status_error(self, status: int, message: str, headers: Mapping[str, str]) -> Exception:
        """A non-2xx reply in our taxonomy (both paths); `headers` looked up by lower-case name."""
        where, message = self._where, self._redact(message)
        if status in (408, 409, 429) or status >= 500:
            return TransientBackendError(f"{where}: HTTP {status}: {message}", retry_after_s=_retry_after_s(headers))
        if status in (401, 403):
            return ConfigError(
                f"{where}: HTTP {status}: credentials refused; check the environment variable "
                f"{self.config.api_key_env}"
            )
        if status == 404:
            return ConfigError(f"{where}: HTTP 404: unknown model or wrong base_url: {message}")
        return InvalidReplyError(f"{where}: HTTP {status}: request refused: {message}")

    def _exhausted(self, error: TransientBackendError, attempts: int) -> Exception:
        if isinstance(error, _MalformedReply):
            return InvalidReplyError(f"{error} after {attempts} attempts")
        return BackendUnavailableError(f"still failing after {attempts} attempts: {error}")

    def _backoff(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), _MAX_RETRY_AFTER_S)
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * (2**attempt))
        return self._random.uniform(0.0, ceiling)  # "full jitter": spreads a thundering herd of retries

    def _redact(self, text: str) -> str:
        if self._api_key and self._api_key != PLACEHOLDER_API_KEY:
            text = text.replace(self._api_key, "***")
        return text


# ---------------------------------------------------------------- request shape


def chat_completion_payload(request: ChatRequest, config: OpenAIChatConfig) -> dict[str, Any]:
    """The keyword arguments of `chat.completions.create` for one request under `config`."""
    payload: dict[str, Any] = {
        "model": config.model,
        "messages": [_message(m) for m in request.messages],
        "temperature": config.temperature if request.temperature is None else request.temperature,
        "max_tokens": config.max_tokens if request.max_tokens is None else request.max_tokens,
    }
    if request.top_p is not None:
        payload["top_p"] = request.top_p
    if request.json_schema is not None and config.structured_output == "json_schema":
        payload["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": request.schema_name, "schema": dict(request.json_schema), "strict": True},
        }
    elif request.json_schema is not None and config.structured_output == "json_object":
        payload["response_format"] = {"type": "json_object"}
    return payload


def chat_completion_body(request: ChatRequest, config: OpenAIChatConfig) -> bytes:
    """`chat_completion_payload` as the JSON bytes sent on the wire (the encoding the OpenAI client uses)."""
    return _JSON_ENCODER.encode(chat_completion_payload(request, config)).encode()


# Compact UTF-8 JSON that refuses NaN, as the OpenAI client itself serialises request bodies.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def image_data_url(image: ImagePart) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(image.jpeg).decode("ascii")


def _message(message: ChatMessage) -> dict[str, Any]:
    if all(isinstance(part, str) for part in message.content):
        return {"role": message.role, "content": "\n\n".join(message.content)}  # type: ignore[arg-type]
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            parts.append({"type": "image_url", "image_url": {"url": image_data_url(part)}})
        else:
            parts.append({"type": "text", "text": part})
    return {"role": message.role, "content": parts}


def _error_message(body: Any, fallback: str) -> str:
    """The server's message in an error body (`{"error": {"message": ...}}`, or its inner part), else `fallback`."""
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and inner.get("message"):
            return str(inner["message"])[:300]
        if isinstance(body.get("message"), str):
            return body["message"][:300]
    if isinstance(body, str) and body:
        return body[:300]
    return fallback[:300]


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` in seconds (number or HTTP date), or the non-standard `retry-after-ms`; None when absent."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return float(millis) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - time.time())
