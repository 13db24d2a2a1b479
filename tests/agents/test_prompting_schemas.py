"""Prompt files load, fill and carry a content-derived version; reply schemas validate and export strict schemas."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agents.prompting import PROMPT_DIR, load_prompt, parse_prompt
from agents.schemas import AnalyzerReply, AnnotatorReply, QAItem, QAReply, json_schema_for
from engine.errors import ConfigError

PROMPTS = ["analyzer", "analyzer_single_subject", "annotator", "region_caption", "judge", "refiner", "qa"]


@pytest.mark.parametrize("name", PROMPTS)
def test_every_prompt_file_loads_with_a_version(name: str) -> None:
    prompt = load_prompt(name)
    assert prompt.system and prompt.user
    assert prompt.version.startswith(f"{name}-") and len(prompt.version) == len(name) + 13


def test_version_changes_with_the_text_and_only_with_it() -> None:
    text = (PROMPT_DIR / "refiner.txt").read_text()
    assert parse_prompt("refiner", text).version == load_prompt("refiner").version
    assert parse_prompt("refiner", text + "\nBe brief.").version != load_prompt("refiner").version


def test_render_fills_placeholders_and_missing_values_fail_fast() -> None:
    prompt = load_prompt("analyzer")
    text = prompt.render(caption="a dog runs")
    assert '"a dog runs"' in text and "$caption" not in text and '{"subject"' in text
    with pytest.raises(ConfigError):
        prompt.render()


def test_prompt_without_sections_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_prompt("bad", "just text")
    with pytest.raises(ConfigError):
        load_prompt("no_such_prompt")


def test_analyzer_reply_normalizes_nouns() -> None:
    reply = AnalyzerReply.model_validate({"subject": ["The Man "], "others": ["a boat", "man", "", "boat"]})
    assert reply.subject == ["man"] and reply.others == ["boat", "man"]
    assert reply.nouns() == [("man", True), ("boat", False)]


def test_replies_reject_missing_or_empty_fields() -> None:
    with pytest.raises(ValidationError):
        AnnotatorReply.model_validate({"appearance": "", "motion": "runs", "is_static": False})
    with pytest.raises(ValidationError):
        QAReply.model_validate({"items": []})
    with pytest.raises(ValidationError):
        QAItem.model_validate({"question": "q", "answer": "a", "type": "trivia", "objects": []})
    item = QAItem.model_validate({"question": "q", "answer": "a", "type": "Future Prediction", "objects": []})
    assert item.type == "future" and item.options == []


def test_json_schema_is_strict() -> None:
    schema = json_schema_for(QAReply)
    item = schema["$defs"]["QAItem"]
    assert schema["additionalProperties"] is False and schema["required"] == ["items"]
    assert set(item["required"]) == {"question", "answer", "type", "objects", "options"}
    assert "title" not in schema and "default" not in item["properties"]["options"]
