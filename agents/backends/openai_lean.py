"""The lean request path of the OpenAI backend: chat completions POSTed straight onto our pooled HTTP/1.1 connections.

`LeanChatClient` speaks the one exchange the backend needs (`POST {base_url}/chat/completions` with a JSON body
already serialised) without the OpenAI SDK: the request head is built once per client (request line, `Host`,
`Authorization`, content and encoding headers) and each request adds only its `Content-Length` and body, written
in one piece on a keep-alive connection of `Http11Pool`. The reply comes back as status, headers and body bytes
for the backend to parse and classify exactly as it does the SDK's (same reply parser, same status taxonomy).
Measured by `benchmarks/backend_concurrency.py`, the SDK's request building (options models, header objects,
deep copies: ~1,700 Python calls a request) was about half the backend's CPU per request; this path makes a few
dozen. Plain `http://` only (vLLM and other local servers), no proxies: `https://` and proxied setups use the
SDK path (`OpenAIChatConfig.client`). The API key lives only inside the prebuilt head, which no repr shows.
"""

from __future__ import annotations

import urllib.parse

from agents.backends.http_transport import Http11Pool
from engine.errors import ConfigError

USER_AGENT = "videorefer-lean-openai-client/1"


class LeanChatClient:
    """POSTs chat-completion bodies to one OpenAI-compatible server over a keep-alive pool; see the module docstring.

    Bound to the event loop it is first used on (its connections are); the backend builds one per loop.
    """

    __slots__ = ("_head", "_key", "_pool", "endpoint")

    def __init__(self, base_url: str, api_key: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(f"the lean OpenAI client speaks plain http:// only, not {base_url!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigError(f"base_url {base_url!r}: query, fragment or credentials are not supported")
        try:
            port = parts.port or 80
        except ValueError:
            raise ConfigError(f"base_url {base_url!r}: invalid port") from None
        if not (api_key.isascii() and api_key.isprintable()):
            raise ConfigError("the API key is not one line of ASCII text")  # never quote the key itself
        path = urllib.parse.quote(parts.path.rstrip("/") + "/chat/completions", safe="/%:@!$&'()*+,;=~-._")
        name = b"[%s]" % parts.hostname.encode() if ":" in parts.hostname else parts.hostname.encode("idna")
        host = name + (b":%d" % parts.port if parts.port else b"")  # the Host header: IPv6 literals in brackets
        self.endpoint = f"http://{host.decode()}{path}"
        self._key = (parts.hostname, port)
        self._pool = Http11Pool()
        # Everything but the length and the body, once: per request there is nothing left to merge or copy.
        self._head = (
            b"POST " + path.encode("ascii") + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
            b"Authorization: Bearer " + api_key.encode("ascii") + b"\r\n"
            b"Content-Type: application/json\r\nAccept: application/json\r\n"
            b"User-Agent: " + USER_AGENT.encode() + b"\r\nAccept-Encoding: identity\r\nContent-Length: "
        )

    def __repr__(self) -> str:
        return f"LeanChatClient({self.endpoint!r})"

    async def post(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """(status, headers, body) of one POST of `body`; httpx2 transport errors on failure.

        No deadline of its own: the caller puts one around the whole exchange (connect, send and reply), one
        timer per request instead of one per phase.
        """
        return await self._pool.exchange(self._key, b"%s%d\r\n\r\n%s" % (self._head, len(body), body))

    async def aclose(self) -> None:
        await self._pool.aclose()
