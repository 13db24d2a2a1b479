"""Generation settings: the model folder's `generation_config.json` plus the release's `mm_infer` decoding defaults.

transformers reads a model folder's `generation_config.json` (repetition penalty, eos ids, sampling knobs) and
uses it for every `generate` call unless the caller overrides a field; the released VideoRefer-7B ships one, and
the release's `mm_infer` overrides only `do_sample=False`, `temperature` (0.2 when sampling, else 0),
`top_p=0.9` and `max_new_tokens=2048`, so e.g. the file's repetition penalty applies to the published answers.
`load_generation_config` reads the folder's file (or builds a default from the tokenizer's end-of-turn token when a
folder has none); `decoding_config` applies the release's overrides and any the caller gives;
`save_generation_config` writes one next to the weights (every folder we save has one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

GENERATION_FILE = "generation_config.json"
RELEASE_MAX_NEW_TOKENS = 2048  # videorefer/__init__.py `mm_infer`
RELEASE_TOP_P = 0.9
RELEASE_SAMPLING_TEMPERATURE = 0.2


def default_generation_config(processor: Any) -> Any:
    """A generation config for a folder without one: stop at `<|im_end|>`, pad with the processor's pad id."""
    from transformers import GenerationConfig

    return GenerationConfig(eos_token_id=[processor.im_end_id], pad_token_id=processor.pad_token_id)


def load_generation_config(model_dir: str | Path, processor: Any) -> Any:
    """The folder's `generation_config.json`, as transformers reads it; the default when the folder has none."""
    from transformers import GenerationConfig

    if (Path(model_dir) / GENERATION_FILE).is_file():
        return GenerationConfig.from_pretrained(str(model_dir))
    return default_generation_config(processor)


def save_generation_config(config: Any, directory: str | Path) -> Path:
    """Write `config` as `directory/generation_config.json` (transformers' own writer)."""
    config.save_pretrained(str(directory))
    return Path(directory) / GENERATION_FILE


def eos_ids(config: Any, processor: Any) -> list[int]:
    """The config's eos ids plus `<|im_end|>`: the release also stops at the tokenizer's eos string."""
    configured = config.eos_token_id
    ids = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    return list(dict.fromkeys([*ids, processor.im_end_id]))


def decoding_config(
    base: Any,
    processor: Any,
    *,
    max_new_tokens: int | None = None,
    do_sample: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
) -> Any:
    """A copy of `base` with the release's `mm_infer` overrides, then the caller's (None: keep the default).

    Greedy unless `do_sample`; greedy decoding clears the sampling knobs (transformers warns about them otherwise)
    but keeps everything else of the file, e.g. `repetition_penalty`, as the release's `generate` call does.
    """
    import copy

    config = copy.deepcopy(base)
    config.max_new_tokens = int(max_new_tokens) if max_new_tokens is not None else RELEASE_MAX_NEW_TOKENS
    config.max_length = None
    config.do_sample = bool(do_sample)
    if do_sample:
        config.temperature = float(temperature) if temperature is not None else RELEASE_SAMPLING_TEMPERATURE
        config.top_p = float(top_p) if top_p is not None else RELEASE_TOP_P
    else:
        config.temperature = config.top_p = config.top_k = None
    if repetition_penalty is not None:
        config.repetition_penalty = float(repetition_penalty)
    config.eos_token_id = eos_ids(base, processor)
    if config.pad_token_id is None:
        config.pad_token_id = processor.pad_token_id
    return config
