"""The pydantic models of every agent's model reply, and their JSON schemas for structured output.

Replies are outside data, so they are validated here (pydantic at the edge) before anything enters the
pipeline's frozen records. Every text is cleaned of control characters and bounded by `limits.max_text_chars`
(`engine.parsing`); a longer one fails the reply with the error type `text_too_long`. Validation is lenient
where it is harmless (surrounding whitespace, case and articles of nouns, extra keys) and strict where the
pipeline needs it (non-empty texts, known QA types).
`json_schema_for(model)` gives the schema in the strict form OpenAI-compatible servers accept: every
property required, no additional properties, no titles or defaults.
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from engine.parsing import clean_text, current_text_limit

_ARTICLES = re.compile(r"^(a|an|the|some|one|two|three)\s+", re.IGNORECASE)
TEXT_TOO_LONG = "text_too_long"  # the pydantic error type of a text above the process's text limit


class _Reply(BaseModel):
    # Extra keys from a chatty model are ignored rather than failing the item.
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _bounded_clean_text(cls, value: Any) -> Any:
        """Every text of a reply (lists of texts included) without control characters, and at most
        `limits.max_text_chars` long (`engine.parsing.current_text_limit`): a longer one fails the reply."""
        return _bounded(value)


def _bounded(value: Any) -> Any:
    if isinstance(value, str):
        limit = current_text_limit()
        if len(value) > limit:
            raise PydanticCustomError(TEXT_TOO_LONG, "a text of {length} characters, above limits.max_text_chars "
                                      "({limit})", {"length": len(value), "limit": limit})
        return clean_text(value)
    if isinstance(value, list):
        return [_bounded(item) for item in value]
    return value


def normalize_noun(text: str) -> str:
    """A noun phrase as the pipeline keys it: lower case, single spaces, no leading article."""
    words = " ".join(str(text).lower().split())
    return _ARTICLES.sub("", words).strip(" .,;:!?\"'")


def _nouns(values: list[str]) -> list[str]:
    seen: list[str] = []
    for value in values:
        noun = normalize_noun(value)
        if noun and noun not in seen:
            seen.append(noun)
    return seen


class AnalyzerReply(_Reply):
    """Nouns of a caption: the main subject(s) first, then the other concrete objects."""

    subject: list[str] = Field(description="The main subject noun(s) of the caption, most important first.")
    others: list[str] = Field(description="Other concrete, visible objects mentioned in the caption.")

    @field_validator("subject", "others")
    @classmethod
    def _clean(cls, values: list[str]) -> list[str]:
        return _nouns(values)

    def nouns(self) -> list[tuple[str, bool]]:
        """(noun, is_subject) in order, each noun once (a subject noun is not repeated among the others)."""
        out = [(noun, True) for noun in self.subject]
        out += [(noun, False) for noun in self.others if noun not in self.subject]
        return out


class AnnotatorReply(_Reply):
    """What one object looks like and what it does through the clip."""

    appearance: str = Field(min_length=1, description="Appearance and state of the object.")
    motion: str = Field(min_length=1, description="Movements and actions of the object through the clip.")
    is_static: bool = Field(description="True when the object does not move or act at all in the clip.")


class RegionCaptionReply(_Reply):
    """A description of the outlined region only."""

    caption: str = Field(min_length=1, description="What the outlined object is and what it looks like.")


class JudgeReply(_Reply):
    """Whether two descriptions refer to the same object."""

    same_object: bool = Field(description="True when both descriptions refer to the same object.")
    reason: str = Field(description="One sentence explaining the decision.")


class RefinerReply(_Reply):
    """One clean detailed caption of an object."""

    caption: str = Field(min_length=1, description="The detailed caption.")


class QAItem(_Reply):
    """One question about one or more objects named `<object0>`, `<object1>`, ..."""

    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    type: Literal["basic", "reasoning", "future"]
    objects: list[str] = Field(description='Names of the objects the question is about, e.g. ["<object0>"].')
    options: list[str] = Field(default_factory=list, description="Answer options for multiple choice, or [].")

    @field_validator("type", mode="before")
    @classmethod
    def _type_alias(cls, value: Any) -> Any:
        aliases = {"future_prediction": "future", "future prediction": "future", "prediction": "future"}
        text = str(value).strip().lower()
        return aliases.get(text, text)


class QAReply(_Reply):
    """Questions and answers about the objects of one clip."""

    items: list[QAItem] = Field(min_length=1)


@functools.cache
def json_schema_for(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema in strict structured-output form (all properties required, no extras).

    Cached: building it costs ~2 ms, once per request otherwise. The same dict is shared by every request, so
    callers must treat it as read-only (requests carry it as a `Mapping`)."""
    schema = copy.deepcopy(model.model_json_schema())
    _make_strict(schema)
    return schema


def _make_strict(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("title", None)
        node.pop("default", None)
        if node.get("type") == "object" and "properties" in node:
            node["required"] = list(node["properties"])
            node["additionalProperties"] = False
        for value in node.values():
            _make_strict(value)
    elif isinstance(node, list):
        for value in node:
            _make_strict(value)
