"""Loading the agents' prompt text files, filling them in, and naming their version by a hash of their text.

A prompt file `agents/prompts/<name>.txt` has a `[system]` section and a `[user]` section; placeholders
are `$name` (Python `string.Template`), so JSON braces in the text need no escaping. The version recorded
in provenance is `<name>-<first 12 hex of sha256(text)>`: editing a prompt changes its version, which is
how a re-run of one stage with a new prompt is told apart from the old output.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from agents.backends.base import ChatMessage, ImagePart
from engine.errors import ConfigError

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
_SECTION = re.compile(r"^\[(system|user)\]\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Prompt:
    """One prompt: its system text, its user template, and the version derived from the file's text."""

    name: str
    system: str
    user: str
    version: str

    def render(self, **values: object) -> str:
        """The user text with every `$placeholder` filled; a missing value is a `ConfigError`."""
        try:
            return Template(self.user).substitute({key: str(value) for key, value in values.items()})
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"prompt {self.name!r} needs a value for {exc}") from exc

    def messages(self, images: Sequence[ImagePart] = (), **values: object) -> tuple[ChatMessage, ...]:
        """System message, then one user message with the images first and the filled text last."""
        user_content: tuple[str | ImagePart, ...] = (*images, self.render(**values))
        return (
            ChatMessage(role="system", content=(self.system,)),
            ChatMessage(role="user", content=user_content),
        )


def parse_prompt(name: str, text: str) -> Prompt:
    """Split a prompt file's text into its sections; both `[system]` and `[user]` must be present."""
    parts = _SECTION.split(text)
    sections = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    if set(sections) != {"system", "user"} or not all(sections.values()):
        raise ConfigError(f"prompt {name!r} must have non-empty [system] and [user] sections")
    version = f"{name}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"
    return Prompt(name=name, system=sections["system"], user=sections["user"], version=version)


@functools.cache
def load_prompt(name: str, directory: str | None = None) -> Prompt:
    """The prompt `<directory>/<name>.txt` (the package's own prompts by default)."""
    path = (Path(directory) if directory else PROMPT_DIR) / f"{name}.txt"
    if not path.is_file():
        raise ConfigError(f"prompt file not found: {path}")
    return parse_prompt(name, path.read_text(encoding="utf-8"))
