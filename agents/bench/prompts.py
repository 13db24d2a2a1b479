"""The benchmark's prompt files (`agents/bench/prompts/*.txt`), loaded with a version derived from their text.

A prompt's version (`name@hash`) is recorded with every prediction and judge reply, so results made with an
edited prompt are never mixed into a resumed run. Placeholders are `$name` (`string.Template`), which leaves the
braces of the judge's JSON example alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from string import Template

from engine.errors import ConfigError
from engine.ids import stable_hash

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"


@dataclass(frozen=True, slots=True, kw_only=True)
class Prompt:
    name: str
    text: str

    @property
    def version(self) -> str:
        return f"{self.name}@{stable_hash(self.text, length=8)}"

    def render(self, **values: str) -> str:
        """Fill every `$placeholder`; a missing value is a programming error and raises KeyError."""
        return Template(self.text).substitute(values).strip()


@functools.cache
def load_prompt(name: str) -> Prompt:
    """Load `prompts/<name>.txt`."""
    path = PROMPT_DIR / f"{name}.txt"
    if not path.is_file():
        raise ConfigError(f"prompt file not found: {path}")
    return Prompt(name=name, text=path.read_text(encoding="utf-8"))
