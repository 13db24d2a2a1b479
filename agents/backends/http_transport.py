"""A lean HTTP/1.1 keep-alive transport for the OpenAI client, for high request rates to plain-HTTP servers (vLLM).

`AsyncOpenAI` sends through `httpx2`, whose default connection pool (httpcore over anyio) scans every pooled
connection and probes idle sockets on each request; at hundreds of requests per second on a small, shared CPU
that bookkeeping, not the network, caps the rate (measured by `benchmarks/backend_concurrency.py`: about 2.5x
fewer requests/s than with this transport on a loaded 2-core machine). `PooledHttp11Transport` is an
`httpx2.AsyncBaseTransport` on bare asyncio streams: idle connections wait in a LIFO list per host, a
connection the server has closed while idle is dropped before reuse, request bodies are sent with
Content-Length, and response bodies are read by Content-Length, chunked encoding, or until close. Responses are
asked for with `Accept-Encoding: identity`, so no decoding is needed. Timeouts from the request become httpx2's
`ConnectTimeout` / `WriteTimeout` / `ReadTimeout`, and socket failures `ConnectError` / `ReadError` /
`RemoteProtocolError`, which the OpenAI client turns into its timeout and connection errors as usual.
Plain `http://` only, no proxies: `https://` APIs keep the client's default transport.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx2

# Idle connections kept per host beyond this are closed: more than the most requests ever in flight is waste.
_MAX_IDLE_PER_HOST = 512


class PooledHttp11Transport(httpx2.AsyncBaseTransport):
    """HTTP/1.1 over asyncio streams with a keep-alive pool per (host, port); see the module docstring."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.scheme != "http":
            raise httpx2.UnsupportedProtocol(f"PooledHttp11Transport speaks plain http, not {request.url.scheme}")
        timeouts = request.extensions.get("timeout", {})
        key = (request.url.host, request.url.port or 80)
        reader, writer = await self._connection(key, timeouts.get("connect"))
        try:
            await _with_timeout(self._send(request, writer), timeouts.get("write"), httpx2.WriteTimeout, request)
            status, headers, content, keep_alive = await _with_timeout(
                _read_response(reader, request.method), timeouts.get("read"), httpx2.ReadTimeout, request
            )
        except BaseException:
            writer.close()
            raise
        if keep_alive and len(self._idle.setdefault(key, [])) < _MAX_IDLE_PER_HOST:
            self._idle[key].append((reader, writer))
        else:
            writer.close()
        return httpx2.Response(status, headers=headers, content=content, request=request)

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
        idle = self._idle.get(key, [])
        while idle:
            reader, writer = idle.pop()
            # A server that closed an idle keep-alive connection has already delivered its EOF to the reader.
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        try:
            async with asyncio.timeout(connect_timeout):
                return await asyncio.open_connection(*key)
        except TimeoutError as exc:
            raise httpx2.ConnectTimeout(f"connecting to {key[0]}:{key[1]} timed out") from exc
        except OSError as exc:
            raise httpx2.ConnectError(f"cannot connect to {key[0]}:{key[1]}: {exc.strerror or exc}") from exc

    async def _send(self, request: httpx2.Request, writer: asyncio.StreamWriter) -> None:
        body = await request.aread()
        lines = [f"{request.method} {request.url.raw_path.decode('ascii')} HTTP/1.1"]
        for name, value in request.headers.raw:
            lowered = name.lower()
            if lowered in (b"content-length", b"transfer-encoding", b"accept-encoding", b"connection"):
                continue
            lines.append(f"{name.decode('latin-1')}: {value.decode('latin-1')}")
        if body or request.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        lines.append("Accept-Encoding: identity")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            writer.write(head + body)
            await writer.drain()
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
    headers = []
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers.append((name.strip(), value.strip()))
    fields = {name.lower(): value for name, value in headers}
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
    # The body is handed over decoded already, so the framing headers no longer describe it.
    headers = [(n, v) for n, v in headers if n.lower() not in ("transfer-encoding", "content-length")]
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


async def _with_timeout(awaitable: Any, seconds: float | None, error: type[Exception], request: httpx2.Request) -> Any:
    try:
        async with asyncio.timeout(seconds):  # a deadline on this task, cheaper than wait_for's extra task
            return await awaitable
    except TimeoutError as exc:
        raise error(f"no {error.__name__.removesuffix('Timeout').lower()} progress within {seconds}s",
                    request=request) from exc
