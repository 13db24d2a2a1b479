"""PooledHttp11Transport against small raw HTTP servers: chunked bodies, keep-alive reuse, closed connections."""

from __future__ import annotations

import asyncio

import httpx2
import pytest

from agents.backends.http_transport import LeanAsyncClient, PooledHttp11Transport


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
    with pytest.raises(httpx2.LocalProtocolError):  # a header value with a line break is never written
        request = httpx2.Request("GET", "http://127.0.0.1:9/", headers={"X-Key": "a\r\nX-Injected: 1"})
        asyncio.run(PooledHttp11Transport().handle_async_request(request))  # httpx2 itself lets it through
    with pytest.raises(httpx2.UnsupportedProtocol):
        asyncio.run(PooledHttp11Transport().handle_async_request(httpx2.Request("GET", "https://example.org/")))


async def _recording_server(recorded: list[tuple[bytes, dict[bytes, bytes], bytes]]):
    """A keep-alive server that records (request line, headers, body) and answers `{"ok": true}`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *fields = head[:-4].split(b"\r\n")
                headers = {name.strip().lower(): value.strip() for name, value in (f.split(b":", 1) for f in fields)}
                body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
                recorded.append((line, headers, body))
                writer.write(_ok(b'{"ok": true}', b"Content-Type: application/json\r\n"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_lean_client_sends_what_the_full_client_sends() -> None:
    async def exchange(client_class: type[httpx2.AsyncClient]):
        recorded: list[tuple[bytes, dict[bytes, bytes], bytes]] = []
        server, url = await _recording_server(recorded)
        async with client_class(transport=PooledHttp11Transport(), headers={"X-Client": "c"}) as client:
            posted = await client.post(url + "/v1/chat", content=b'{"q": 1}', headers={"Content-Type": "text/x"})
            queried = await client.get(url + "/v1/models", params={"limit": "2"})  # params: the full path
            empty = await client.post(url + "/v1/empty")
        server.close()
        assert posted.json() == queried.json() == empty.json() == {"ok": True}
        assert posted.request.url == url + "/v1/chat"
        assert all(headers.pop(b"host") == url.removeprefix("http://").encode() for _, headers, _ in recorded)
        return recorded

    full, lean = asyncio.run(exchange(httpx2.AsyncClient)), asyncio.run(exchange(LeanAsyncClient))
    assert lean == full
    assert [line for line, _, _ in lean] == [b"POST /v1/chat HTTP/1.1", b"GET /v1/models?limit=2 HTTP/1.1",
                                             b"POST /v1/empty HTTP/1.1"]
    assert lean[0][1][b"x-client"] == b"c" and lean[0][1][b"content-length"] == b"8" and lean[0][2] == b'{"q": 1}'
