"""A lean HTTP/1.1 keep-alive transport for the OpenAI client, for high request rates to plain-HTTP servers (vLLM).

`AsyncOpenAI` sends through `httpx2`, whose default connection pool (httpcore over anyio) scans every pooled
connection and probes idle sockets on each request; at hundreds of requests per second on a small, shared CPU
that bookkeeping, not the network, caps the rate (measured by `benchmarks/backend_concurrency.py`: about 2.5x
fewer requests/s than with this transport on a loaded 2-core machine). `Http11Pool` is the connection pool on
bare asyncio streams, exchanging requests serialised to bytes (the OpenAI backend's lean path writes onto it
directly, agents/backends/openai_lean.py): idle connections wait in a LIFO list per host, a connection the
server has closed while idle is dropped before reuse, and response bodies are read by Content-Length, chunked
encoding, or until close. `PooledHttp11Transport` is the `httpx2.AsyncBaseTransport` over it: request bodies
are sent with Content-Length, and responses asked for with `Accept-Encoding: identity`, so no decoding is
needed. Timeouts become httpx2's `ConnectTimeout` / `WriteTimeout` / `ReadTimeout`, and socket failures
`ConnectError` / `ReadError` / `RemoteProtocolError`, which the OpenAI client turns into its timeout and
connection errors as usual.
Plain `http://` only, no proxies: `https://` APIs keep the client's default transport. `LeanAsyncClient` is
the `httpx2.AsyncClient` to put in front of it: for the plain requests the OpenAI client makes (bytes body, no
auth flow, cookies, hooks or mounts) it skips httpx2's per-request URL re-parsing, header re-merging and
redirect/auth machinery, and falls back to the full client for anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from typing import Any

import httpx2
from httpx2 import USE_CLIENT_DEFAULT

# Idle connections kept per host beyond this are closed: more than the most requests ever in flight is waste.
_MAX_IDLE_PER_HOST = 512
# Request headers this transport writes itself (framing and encoding), whatever the request carried.
_FRAMING_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"accept-encoding", b"connection"))


class Http11Pool:
    """Keep-alive HTTP/1.1 connections per (host, port) on asyncio streams, exchanging whole requests as bytes.

    `exchange` sends one request already serialised (head and body, framing headers included) on an idle
    connection or a new one, and returns the status, headers and body of the reply; the connection goes back
    to the pool when the reply allows keep-alive, and is closed on any failure or cancellation (a connection
    in an unknown state is never reused). Failures are httpx2's exception types, as for any httpx2 transport.
    A timeout of None means no deadline for that phase (a caller may put one deadline around the whole call).
    """

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def exchange(
        self,
        key: tuple[str, int],
        message: bytes,
        method: str = "POST",
        *,
        connect_timeout: float | None = None,
        write_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        reader, writer = await self._connection(key, connect_timeout)
        try:
            await _write(writer, message, write_timeout)
            if read_timeout is None:
                status, headers, content, keep_alive = await _read_response(reader, method)
            else:
                try:
                    async with asyncio.timeout(read_timeout):  # a deadline on this task: no extra task, one timer
                        status, headers, content, keep_alive = await _read_response(reader, method)
                except TimeoutError as exc:
                    raise httpx2.ReadTimeout(f"no read progress within {read_timeout}s") from exc
        except BaseException:
            writer.close()
            raise
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = []
        if keep_alive and len(idle) < _MAX_IDLE_PER_HOST:
            idle.append((reader, writer))
        else:
            writer.close()
        return status, headers, content

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for _reader, writer in connections:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _connection(
        self, key: tuple[str, int], connect_timeout: float | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        idle = self._idle.get(key)
        while idle:
            reader, writer = idle.pop()
            # A server that closed an idle keep-alive connection has already delivered its EOF to the reader.
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        try:
            if connect_timeout is None:
                return await asyncio.open_connection(*key)
            async with asyncio.timeout(connect_timeout):
                return await asyncio.open_connection(*key)
        except TimeoutError as exc:
            raise httpx2.ConnectTimeout(f"connecting to {key[0]}:{key[1]} timed out") from exc
        except OSError as exc:
            raise httpx2.ConnectError(f"cannot connect to {key[0]}:{key[1]}: {exc.strerror or exc}") from exc


class PooledHttp11Transport(httpx2.AsyncBaseTransport):
    """HTTP/1.1 over asyncio streams with a keep-alive pool per (host, port); see the module docstring."""

    def __init__(self) -> None:
        self._pool = Http11Pool()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.scheme != "http":
            raise httpx2.UnsupportedProtocol(f"PooledHttp11Transport speaks plain http, not {request.url.scheme}")
        timeouts = request.extensions.get("timeout", {})
        try:
            body = request.content
        except httpx2.RequestNotRead:
            body = await request.aread()
        lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
        for name, value in request.headers.raw:
            if b"\n" in value or b"\r" in value:  # written as is, a line break would start another header
                raise httpx2.LocalProtocolError(f"header {name.decode('latin-1')!r} has a line break in its value")
            if name.lower() not in _FRAMING_HEADERS:
                lines.append(name + b": " + value)
        if body or request.method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d" % len(body))
        lines.append(b"Accept-Encoding: identity\r\n\r\n")
        try:
            status, headers, content = await self._pool.exchange(
                (request.url.host, request.url.port or 80),
                b"\r\n".join(lines) + body,
                request.method,
                connect_timeout=timeouts.get("connect"),
                write_timeout=timeouts.get("write"),
                read_timeout=timeouts.get("read"),
            )
        except httpx2.RequestError as exc:
            exc.request = request  # httpx2 reports the request a transport error belongs to
            raise
        return httpx2.Response(status, headers=headers, content=content, request=request)

    async def aclose(self) -> None:
        await self._pool.aclose()


async def _write(writer: asyncio.StreamWriter, message: bytes, timeout: float | None) -> None:
    try:
        writer.write(message)
        # A request the socket took whole needs no waiting (the usual case): no timer, no drain.
        if writer.transport.get_write_buffer_size() or writer.transport.is_closing():
            async with asyncio.timeout(timeout):
                await writer.drain()
    except TimeoutError as exc:
        raise httpx2.WriteTimeout(f"no write progress within {timeout}s") from exc
    except OSError as exc:
        raise httpx2.WriteError(f"sending the request failed: {exc}") from exc


async def _read_response(
    reader: asyncio.StreamReader, method: str
) -> tuple[int, list[tuple[str, str]], bytes, bool]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise httpx2.RemoteProtocolError("server closed the connection without a response") from exc
    except (asyncio.LimitOverrunError, OSError) as exc:
        raise httpx2.ReadError(f"reading the response failed: {exc}") from exc
    lines = head.decode("latin-1").split("\r\n")
    try:
        version, status_text = lines[0].split(" ", 2)[:2]
        status = int(status_text)
    except ValueError as exc:
        raise httpx2.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}") from exc
    # One pass: `fields` (lower-case names) frames the body; `headers` is what the caller gets, less the framing
    # headers (the body is handed over decoded already, so they no longer describe it).
    headers, fields = [], {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            name, value = name.strip(), value.strip()
            lower = name.lower()
            fields[lower] = value
            if lower != "content-length" and lower != "transfer-encoding":
                headers.append((name, value))
    connection = fields.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    try:
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            content = b""
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            content = await _read_chunked(reader)
        elif "content-length" in fields:
            content = await reader.readexactly(int(fields["content-length"]))
        else:
            content, keep_alive = await reader.read(), False
    except asyncio.IncompleteReadError as exc:
        raise httpx2.RemoteProtocolError("server closed the connection in the middle of the body") from exc
    except (OSError, ValueError) as exc:
        raise httpx2.ReadError(f"reading the response body failed: {exc}") from exc
    return status, headers, content, keep_alive


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, if any, end with an empty line
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the CRLF after each chunk


class LeanAsyncClient(httpx2.AsyncClient):
    """An `httpx2.AsyncClient` with a short path for plain requests; see the module docstring.

    The short path applies to a request with a `str` URL, a `bytes` (or no) body and nothing else to merge
    (no params, cookies, files, form data or extensions), sent without auth, event hooks, mounts or streaming.
    It builds the same `Request` the full client would (client headers overridden by the request's, then
    `Host` and `Content-Length`), and sends it straight to the transport. Redirects are not followed on the
    short path (the OpenAI client turns a 3xx into a status error), and httpx2's per-request INFO log line is
    not written (the backend counts and logs what it needs itself).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._parsed_urls: dict[str, httpx2.URL] = {}

    def build_request(  # type: ignore[override]
        self,
        method: str,
        url: httpx2.URL | str,
        *,
        content: Any = None,
        headers: Any = None,
        timeout: Any = USE_CLIENT_DEFAULT,
        **others: Any,
    ) -> httpx2.Request:
        plain = isinstance(url, str) and (content is None or isinstance(content, bytes))
        if not plain or any(value is not None for value in others.values()) or self.params or self.cookies:
            return super().build_request(method, url, content=content, headers=headers, timeout=timeout, **others)
        target = self._parsed_urls.get(url)
        if target is None:
            target = self._merge_url(url)
            if len(self._parsed_urls) < 64:  # the few endpoints a client talks to; never an unbounded cache
                self._parsed_urls[url] = target
        merged = {name.lower(): (name, value) for name, value in self.headers.raw}
        for name, value in httpx2.Headers(headers).raw:
            merged[name.lower()] = (name, value)
        body = b"" if content is None else content
        auto = [(b"Host", target.netloc)] if b"host" not in merged else []
        if body or method.upper() in ("POST", "PUT", "PATCH", "QUERY"):
            merged[b"content-length"] = (b"Content-Length", b"%d" % len(body))
        limits = self.timeout if timeout is USE_CLIENT_DEFAULT else httpx2.Timeout(timeout)
        request = httpx2.Request(
            method,
            target,
            headers=httpx2.Headers(auto + list(merged.values())),
            stream=httpx2.ByteStream(body),
            extensions={"timeout": limits.as_dict()},
        )
        request.read()  # a bytes body: nothing to wait for, and `request.content` is then available
        return request

    async def send(  # type: ignore[override]
        self,
        request: httpx2.Request,
        *,
        stream: bool = False,
        auth: Any = USE_CLIENT_DEFAULT,
        follow_redirects: Any = USE_CLIENT_DEFAULT,
    ) -> httpx2.Response:
        hooks = self._event_hooks
        if (
            stream or self.auth is not None or auth is not USE_CLIENT_DEFAULT or self._mounts
            or hooks["request"] or hooks["response"] or self.is_closed
        ):
            return await super().send(request, stream=stream, auth=auth, follow_redirects=follow_redirects)
        started = time.perf_counter()
        response = await self._transport.handle_async_request(request)
        response.request = request
        response.default_encoding = self._default_encoding
        if "set-cookie" in response.headers:
            self.cookies.extract_cookies(response)
        await response.aread()
        response.elapsed = datetime.timedelta(seconds=time.perf_counter() - started)
        return response
