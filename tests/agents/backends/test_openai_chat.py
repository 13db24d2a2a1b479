"""OpenAIChatBackend against the stub OpenAI-compatible server on 127.0.0.1: request shapes, retries, errors,
concurrency bound, token accounting, and that the API key never leaks. Every test runs on each request path:
the lean client, and the OpenAI SDK over the pooled transport and over its own httpx transport."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket

import pytest

from agents.backends.base import ChatMessage, ChatRequest, ImagePart
from agents.backends.openai_chat import OpenAIChatBackend
from agents.backends.stub_server import StubOpenAIServer
from engine.config import OpenAIChatConfig
from engine.errors import BackendUnavailableError, ConfigError, InvalidReplyError

SCHEMA = {
    "type": "object",
    "properties": {"subject": {"type": "string"}, "others": {"type": "array", "items": {"type": "string"}}},
    "required": ["subject", "others"],
}
SECRET = "sk-test-LEAKCHECK-7f3a9c"
# Every test runs on every request path (set per test by the `request_path` fixture): (client, transport).
PATHS = {"lean": ("lean", "pooled"), "sdk-pooled": ("sdk", "pooled"), "sdk-httpx": ("sdk", "httpx")}
_PATH = {"client": "lean", "transport": "pooled"}


def _config(server: StubOpenAIServer | None = None, **overrides) -> OpenAIChatConfig:
    settings = {
        "base_url": server.base_url if server else "http://127.0.0.1:9/v1",
        "model": "stub-llm",
        "api_key_env": "VIDEOREFER_TEST_KEY",
        "timeout_s": 2.0,
        "max_retries": 4,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "client": _PATH["client"],
        "transport": _PATH["transport"],
    }
    return OpenAIChatConfig(**{**settings, **overrides})


def _request(text: str = "a dog runs", *, schema=SCHEMA, images: tuple[bytes, ...] = (), **kwargs) -> ChatRequest:
    content = (text, *(ImagePart(jpeg=jpeg) for jpeg in images))
    return ChatRequest(
        messages=(ChatMessage(role="system", content=("answer in JSON",)), ChatMessage(role="user", content=content)),
        json_schema=schema,
        **kwargs,
    )


def _complete(backend: OpenAIChatBackend, requests: list[ChatRequest]):
    async def run():
        try:
            return await backend.complete_batch(requests)
        finally:
            await backend.aclose()

    return asyncio.run(run())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True, params=list(PATHS))
def request_path(request: pytest.FixtureRequest) -> str:
    _PATH["client"], _PATH["transport"] = PATHS[request.param]
    return request.param


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDEOREFER_TEST_KEY", SECRET)


def test_json_schema_mode_sends_a_strict_schema_and_returns_a_valid_reply() -> None:
    with StubOpenAIServer() as server:
        backend = OpenAIChatBackend(_config(server))
        [reply] = _complete(backend, [_request(schema_name="nouns", temperature=0.0, max_tokens=77)])
        [sent] = server.requests
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "nouns", "schema": SCHEMA, "strict": True},
    }
    assert sent["model"] == "stub-llm" and sent["temperature"] == 0.0 and sent["max_tokens"] == 77
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert set(json.loads(reply.text)) == {"subject", "others"}
    assert reply.backend == "openai" and reply.model == "stub-llm"


@pytest.mark.parametrize(("mode", "expected"), [("json_object", {"type": "json_object"}), ("none", None)])
def test_other_structured_output_modes(mode: str, expected) -> None:
    with StubOpenAIServer() as server:
        backend = OpenAIChatBackend(_config(server, structured_output=mode, temperature=0.3, max_tokens=50))
        _complete(backend, [_request()])
        [sent] = server.requests
    assert sent.get("response_format") == expected
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 50  # config defaults when the request has none


def test_images_travel_as_jpeg_data_urls_in_order() -> None:
    jpegs = (b"\xff\xd8first-image", b"\xff\xd8second-image")
    with StubOpenAIServer() as server:
        _complete(OpenAIChatBackend(_config(server)), [_request("describe", images=jpegs)])
        user = server.requests[0]["messages"][1]
    assert user["content"][0] == {"type": "text", "text": "describe"}
    urls = [part["image_url"]["url"] for part in user["content"][1:]]
    assert all(url.startswith("data:image/jpeg;base64,") for url in urls)
    assert tuple(base64.b64decode(url.split(",", 1)[1]) for url in urls) == jpegs


def test_transient_faults_are_retried_and_retry_after_is_honoured() -> None:
    script = ("rate_limit", "server_error", "timeout", "unavailable", "drop")
    with StubOpenAIServer(fault_script=script, retry_after_s=0.2, hang_s=3.0) as server:
        backend = OpenAIChatBackend(_config(server, timeout_s=1.0, max_retries=5))
        [reply] = _complete(backend, [_request()])
        assert server.faults_injected == list(script)
        assert server.request_count == len(script) + 1
    assert not isinstance(reply, Exception)
    usage = backend.usage
    assert usage.retries == len(script) and usage.attempts == len(script) + 1
    assert usage.replies == 1 and usage.failures == 0
    # Two faults (429 and 503) carried Retry-After: 0.2; the backoff of the others is capped at 0.05 s.
    assert usage.retry_wait_s >= 0.4


def test_malformed_body_is_retried_then_becomes_an_invalid_reply() -> None:
    with StubOpenAIServer(fault_script=("malformed",)) as server:
        [reply] = _complete(OpenAIChatBackend(_config(server)), [_request()])
    assert json.loads(reply.text)["subject"]

    with StubOpenAIServer(fault_script=("malformed",) * 10) as server:
        backend = OpenAIChatBackend(_config(server, max_retries=2))
        [reply] = _complete(backend, [_request()])
        assert server.request_count == 3
    assert isinstance(reply, InvalidReplyError)


def test_bad_request_rejects_only_that_item() -> None:
    with StubOpenAIServer(fault_script=("bad_request",)) as server:
        backend = OpenAIChatBackend(_config(server, max_in_flight=1))
        replies = _complete(backend, [_request("one"), _request("two")])
        assert server.request_count == 2  # a 400 is not retried
    assert isinstance(replies[0], InvalidReplyError) and "400" in str(replies[0])
    assert "context length exceeded" in str(replies[0])  # the server's own message, read from its error body
    assert not isinstance(replies[1], Exception)
    assert backend.usage.failures == 1 and backend.usage.replies == 1


def test_unreachable_server_raises_backend_unavailable() -> None:
    port = _free_port()
    backend = OpenAIChatBackend(_config(base_url=f"http://127.0.0.1:{port}/v1", max_retries=2))
    with pytest.raises(BackendUnavailableError, match="after 3 attempts"):
        _complete(backend, [_request(), _request("another")])
    assert backend.usage.attempts == 6


def test_a_server_that_stays_down_fails_the_batch() -> None:
    with StubOpenAIServer(fault_rate=1.0, fault_kinds=("server_error",)) as server:
        backend = OpenAIChatBackend(_config(server, max_retries=3))
        with pytest.raises(BackendUnavailableError, match="HTTP 500"):
            _complete(backend, [_request()])
        assert server.request_count == 4


def test_in_flight_requests_never_exceed_the_bound() -> None:
    with StubOpenAIServer(latency_s=0.05) as server:
        backend = OpenAIChatBackend(_config(server, max_in_flight=3))
        replies = _complete(backend, [_request(f"caption {i}") for i in range(15)])
        peak = server.max_concurrent
    assert len(replies) == 15 and not any(isinstance(r, Exception) for r in replies)
    assert 2 <= peak <= 3
    assert backend.usage.max_in_flight <= 3


def test_tokens_are_counted_per_reply_and_cumulatively() -> None:
    with StubOpenAIServer(responder=lambda request: "one two three") as server:
        backend = OpenAIChatBackend(_config(server, structured_output="none"))
        replies = _complete(backend, [_request("four words of text"), _request("two words")])
    # The stub counts words: "answer in JSON" (3) + the user text.
    assert [(r.prompt_tokens, r.completion_tokens) for r in replies] == [(7, 3), (5, 3)]
    assert backend.usage.prompt_tokens == 12 and backend.usage.completion_tokens == 6
    assert backend.usage.requests == 2


def test_backend_works_across_event_loops() -> None:
    with StubOpenAIServer() as server:
        backend = OpenAIChatBackend(_config(server))
        first = asyncio.run(backend.complete(_request()))
        second = asyncio.run(backend.complete(_request()))  # a new loop: the client is rebuilt, not reused
        asyncio.run(backend.aclose())
    assert first.text == second.text


def test_unset_key_env_sends_the_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIDEOREFER_TEST_KEY")
    with StubOpenAIServer() as server:
        _complete(OpenAIChatBackend(_config(server)), [_request()])
        assert server.authorizations == ["Bearer EMPTY"]


def test_api_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    with StubOpenAIServer(fault_script=("bad_request", "rate_limit", "timeout"), retry_after_s=0.01) as server:
        backend = OpenAIChatBackend(_config(server, max_in_flight=1, timeout_s=0.3))
        errors += [r for r in _complete(backend, [_request(), _request()]) if isinstance(r, Exception)]
        assert server.authorizations[0] == f"Bearer {SECRET}"  # the key is really used...
    with StubOpenAIServer(fault_script=("unauthorized",)) as server:
        with pytest.raises(ConfigError) as refused:
            _complete(OpenAIChatBackend(_config(server)), [_request()])
        errors.append(refused.value)
    down = OpenAIChatBackend(_config(base_url=f"http://127.0.0.1:{_free_port()}/v1", max_retries=1))
    with pytest.raises(BackendUnavailableError) as unavailable:
        _complete(down, [_request()])
    errors.append(unavailable.value)

    assert len(errors) == 3
    assert "VIDEOREFER_TEST_KEY" in str(refused.value)  # ...the error names the variable, not its value
    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [repr(backend), repr(down), str(backend.usage)]
    texts += [str(e.__cause__) for e in errors] + [caplog.text]
    assert not [text for text in texts if SECRET in text]


def test_auto_transport_is_pooled_for_plain_http_only(monkeypatch: pytest.MonkeyPatch) -> None:
    auto = {"transport": "auto", "client": "sdk"}
    assert OpenAIChatBackend(_config(base_url="http://127.0.0.1:8000/v1", **auto)).uses_pooled_transport
    assert not OpenAIChatBackend(_config(base_url="https://api.openai.com/v1", **auto)).uses_pooled_transport
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    assert not OpenAIChatBackend(_config(base_url="http://127.0.0.1:8000/v1", **auto)).uses_pooled_transport
    with pytest.raises(ConfigError, match="https"):
        OpenAIChatBackend(_config(base_url="https://api.openai.com/v1", transport="pooled"))


def test_auto_client_is_lean_where_the_transport_would_be_pooled(monkeypatch: pytest.MonkeyPatch) -> None:
    def lean(**overrides) -> bool:
        return OpenAIChatBackend(_config(**{"client": "auto", "transport": "auto", **overrides})).uses_lean_client

    assert lean(base_url="http://127.0.0.1:8000/v1") and lean(base_url="http://127.0.0.1:8000/v1", transport="pooled")
    assert not lean(base_url="http://127.0.0.1:8000/v1", transport="httpx")
    assert not lean(base_url="https://api.openai.com/v1")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    assert not lean(base_url="http://127.0.0.1:8000/v1")
    assert OpenAIChatBackend(_config(client="sdk")).uses_lean_client is False
    with pytest.raises(ConfigError, match="https"):
        OpenAIChatBackend(_config(base_url="https://api.openai.com/v1", client="lean", transport="auto"))
    with pytest.raises(ConfigError, match="httpx"):
        OpenAIChatBackend(_config(client="lean", transport="httpx"))


def test_every_request_path_sends_the_same_request() -> None:
    """What reaches the server does not depend on the path: same JSON body, same key, same endpoint."""
    jpeg = b"\xff\xd8an-image"
    sent = {}
    for name, (client, transport) in PATHS.items():
        with StubOpenAIServer() as server:
            backend = OpenAIChatBackend(_config(server, client=client, transport=transport))
            [reply] = _complete(backend, [_request("describe", images=(jpeg,), schema_name="s", top_p=0.9)])
            sent[name] = (server.requests, server.authorizations, reply.text, reply.prompt_tokens)
    assert sent["lean"] == sent["sdk-pooled"] == sent["sdk-httpx"]
    assert sent["lean"][1] == [f"Bearer {SECRET}"]


def test_a_cancelled_request_leaves_the_backend_usable() -> None:
    async def run(backend: OpenAIChatBackend):
        hung = asyncio.ensure_future(backend.complete(_request("hangs")))
        await asyncio.sleep(0.3)  # on the wire (the server holds it), then given up by the caller
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
        try:
            return await backend.complete_batch([_request("after one"), _request("after two")])
        finally:
            await backend.aclose()

    with StubOpenAIServer(fault_script=("timeout",), hang_s=3.0) as server:
        backend = OpenAIChatBackend(_config(server, timeout_s=10.0, max_retries=0))
        replies = asyncio.run(run(backend))
        assert server.request_count == 3
    assert not [r for r in replies if isinstance(r, Exception)]
    assert backend.usage.replies == 2 and backend.usage.retries == 0


def test_a_key_that_cannot_be_a_header_fails_fast_without_being_quoted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: the SDK over the pooled transport wrote it as is, smuggling an `X-Injected` header onto the wire.
    monkeypatch.setenv("VIDEOREFER_TEST_KEY", SECRET + "\r\nX-Injected: 1")
    with pytest.raises(ConfigError, match="VIDEOREFER_TEST_KEY") as refused:
        OpenAIChatBackend(_config())
    assert SECRET not in str(refused.value) and SECRET not in repr(refused.value)
