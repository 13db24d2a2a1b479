"""PooledHttp11Transport against small raw HTTP servers: chunked bodies, keep-alive reuse, closed connections."""

from __future__ import annotations

import asyncio

import httpx2
import pytest

from agents.backends.http_transport import PooledHttp11Transport


async def _serve(responses: list[bytes], *, close_after_each: bool = False):
    """A raw server answering successive requests with the given bytes; returns (server, base url, accepted)."""
    accepted: list[int] = []
    queue = list(responses)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            if not queue:  # nothing to say: hold the request open past any client timeout
                await asyncio.sleep(2.0)
            while queue:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                await reader.readexactly(length)
                writer.write(queue.pop(0))
                await writer.drain()
                if close_after_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", accepted


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_chunked_body_and_keep_alive_reuse() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"

    async def run():
        server, url, accepted = await _serve([chunked, _ok(b'{"a": 1}')])
        async with httpx2.AsyncClient(transport=PooledHttp11Transport()) as client:
            first = await client.post(url + "/v1/x", json={"q": 1})
            second = await client.post(url + "/v1/x", json={"q": 2})
        server.close()
        return first, second, accepted

    first, second, accepted = asyncio.run(run())
    assert first.text == "hello world" and second.json() == {"a": 1}
    assert len(accepted) == 1  # the second request reused the first connection


def test_a_connection_the_server_closed_is_not_reused() -> None:
    async def run():
        server, url, accepted = await _serve([_ok(b"one"), _ok(b"two")], close_after_each=True)
        async with httpx2.AsyncClient(transport=PooledHttp11Transport()) as client:
            first = await client.get(url + "/")
            await asyncio.sleep(0.05)  # let the server's FIN arrive while the connection is idle
            second = await client.get(url + "/")
        server.close()
        return first.text, second.text, accepted

    first, second, accepted = asyncio.run(run())
    assert (first, second) == ("one", "two") and len(accepted) == 2


def test_connection_close_header_and_read_until_close() -> None:
    async def run():
        server, url, _ = await _serve([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close"],
                                      close_after_each=True)
        async with httpx2.AsyncClient(transport=PooledHttp11Transport()) as client:
            response = await client.get(url + "/")
        server.close()
        return response

    assert asyncio.run(run()).text == "until close"


def test_failures_map_to_httpx_errors() -> None:
    async def run(responses, timeout):
        server, url, _ = await _serve(responses, close_after_each=True)
        try:
            async with httpx2.AsyncClient(transport=PooledHttp11Transport(), timeout=timeout) as client:
                await client.get(url + "/")
        finally:
            server.close()

    with pytest.raises(httpx2.RemoteProtocolError):
        asyncio.run(run([b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\ntoo short"], 2.0))
    with pytest.raises(httpx2.RemoteProtocolError):
        asyncio.run(run([b"garbage\r\n\r\n"], 2.0))
    with pytest.raises(httpx2.ReadTimeout):
        asyncio.run(run([], 0.2))  # the server never answers
    with pytest.raises(httpx2.UnsupportedProtocol):
        asyncio.run(PooledHttp11Transport().handle_async_request(httpx2.Request("GET", "https://example.org/")))
