"""The stub OpenAI-compatible server itself: endpoints, default replies, seeded faults, bounded shutdown."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from agents.backends.stub_server import StubOpenAIServer, default_responder, minimal_json_for_schema

# Straight to 127.0.0.1, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post(url: str, payload: dict) -> tuple[int, dict]:
    data = json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_models_and_chat_completions_endpoints() -> None:
    with StubOpenAIServer(model="stub-7b") as server:
        with _OPENER.open(server.base_url + "/models", timeout=5) as response:
            assert json.loads(response.read())["data"][0]["id"] == "stub-7b"
        status, body = _post(server.base_url + "/chat/completions",
                             {"model": "m", "messages": [{"role": "user", "content": "two words"}]})
        assert status == 200 and body["choices"][0]["message"]["content"] == "ok"
        assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
        assert _post(server.base_url + "/nothing", {})[0] == 404
        assert server.request_count == 1


def test_default_reply_satisfies_the_requested_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "kind": {"enum": ["a", "b"]},
            "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
            "nested": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
            "optional": {"type": "string"},
        },
        "required": ["kind", "items", "nested"],
    }
    assert minimal_json_for_schema(schema) == {"kind": "a", "items": [0, 0], "nested": {"ok": False}}
    request = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    assert json.loads(default_responder(request))["kind"] == "a"
    assert default_responder({"response_format": {"type": "json_object"}}) == "{}"


def test_seeded_fault_rate_is_reproducible() -> None:
    def faults(seed: int) -> list[str]:
        with StubOpenAIServer(fault_rate=0.5, fault_kinds=("server_error", "bad_request"), seed=seed) as server:
            for _ in range(12):
                _post(server.base_url + "/chat/completions", {"model": "m", "messages": []})
            return server.faults_injected

    first = faults(3)
    assert first == faults(3) and 0 < len(first) < 12


def test_unknown_fault_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        StubOpenAIServer(fault_script=("explode",))
