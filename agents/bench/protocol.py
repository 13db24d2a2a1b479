"""Benchmark protocols: what the model, the VLM baselines and the judge are given, so numbers compare with a table.

`release` (the default) is the release's evaluation as its scripts ran it (`DAMO-NLP-SG/VideoRefer`, commit
cbd4207, PAPER.md "The release's evaluation protocol"): 8 frames (its `NUM_FRAMES`; the scripts never pass the
model's 16), `aspect_ratio='square'`, its question strings, its greedy `mm_infer` decoding, and for Bench-D its
judge: the release's `system.txt` byte for byte, its user message, temperature 0.7, top_p 0.95, 800 tokens.
`paper` is the same with the 16 frames the model was trained on. Both fix the release's crashes (see
`agents.bench.q_scoring` and `agents.bench.judge`). The judge prompt is never copied into this tree: it is read
from the user's checkout of the release or downloaded once at the pinned commit into a cache, and its sha256 is
checked; release protocol refuses any other file.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from agents.bench.files import BenchDItem, BenchItem, BenchQItem, write_text_atomic
from engine.errors import ConfigError
from engine.types import REGION_TOKEN

RELEASE_REPOSITORY = "DAMO-NLP-SG/VideoRefer"
RELEASE_COMMIT = "cbd4207bf12e9d2f67ac71e54a260dd96697a83a"
JUDGE_PROMPT_PATH = "videorefer/eval/videorefer_bench_d/system.txt"
JUDGE_PROMPT_SHA256 = "39596092750e8982c35c54f2ac0116772741f116410f99f5e4d7d051b9d3b088"
JUDGE_PROMPT_URL = f"https://raw.githubusercontent.com/{RELEASE_REPOSITORY}/{RELEASE_COMMIT}/{JUDGE_PROMPT_PATH}"

# videorefer/eval/inference_videorefer_d_bench.py and inference_videorefer_q_bench.py
D_QUESTION = f"Please give a detailed description of the highlighted object [{REGION_TOKEN}] in the video."
Q_SUFFIX = ". Answer with the option's letter from the given choices directly."

# benchmark/evaluation_general_mllms.md and benchmark/infer_videorefer_bench_q_qwen2vl.py (set-of-marks VLMs)
SOM_D_SINGLE = ("I have outlined an object with a red contour in the first frame in the video. "
                "Please describe the object in the entire video in detail.")
SOM_D_MULTI = "I have outlined an object with a red contour in the video. Please describe the object in detail."
SOM_Q_LEAD = "I have highlighted an object using a colored mask in the first frame it occurs in the video. "
SOM_COLORS = ("red", "green", "yellow", "blue", "grey", "purple", "orange", "brown", "pink")


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchProtocol:
    """One evaluation protocol; `name` goes into every prediction record and report."""

    name: str
    num_frames: int  # frames our model sees
    som_frames: int = 16  # frames a set-of-marks VLM sees (benchmark/ scripts)
    aspect_ratio: str = "square"  # frames resized without padding, as the release's evaluation passes
    max_new_tokens: int | None = None  # None: mm_infer's 2048
    judge_temperature: float = 0.7
    judge_top_p: float = 0.95
    judge_max_tokens: int = 800
    strict_judge_prompt: bool = True  # refuse a judge prompt whose sha256 is not the release's


PROTOCOLS: dict[str, BenchProtocol] = {
    "release": BenchProtocol(name="release", num_frames=8),
    "paper": BenchProtocol(name="paper", num_frames=16, strict_judge_prompt=False),
}


def get_protocol(name: str) -> BenchProtocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def model_question(item: BenchItem) -> str:
    """The release's instruction for our model: Bench-D's fixed question; Bench-Q's question, options, suffix."""
    if isinstance(item, BenchDItem):
        return D_QUESTION
    question = item.question.replace(REGION_TOKEN, f"[{REGION_TOKEN}]")
    return question + " " + " ".join(item.options) + Q_SUFFIX


def som_prompt(item: BenchItem, mode: str) -> str:
    """The release's set-of-marks prompt for a general VLM (its concatenation, spaces and all)."""
    if isinstance(item, BenchDItem):
        return SOM_D_SINGLE if mode == "single" else SOM_D_MULTI
    return SOM_Q_LEAD + som_color_legend(item) + item.question.replace(REGION_TOKEN, "") + " ".join(item.options) + (
        Q_SUFFIX
    )


def som_color_legend(item: BenchQItem) -> str:
    """`<object3>: red; <object5>: green.`: the colour of each named object, in question order."""
    names = re.findall(r"<object(\d+)>", item.question)
    return "; ".join(f"<object{obj}>: {SOM_COLORS[i % len(SOM_COLORS)]}" for i, obj in enumerate(names)) + "."


def som_frame_indices(num_frames_of_video: int, video_frames: int = 16) -> list[int]:
    """The release's set-of-marks frames (`benchmark/*_add_mask_*.py` `frame_sample`): 32 segment-middle frames of
    the video by the older integer rule, then `video_frames` of those 32 by the same rule."""
    num_frames = 32
    segment = float(num_frames_of_video - 1) / num_frames
    raw = [(int(round(segment * i)) + int(round(segment * (i + 1)))) // 2 for i in range(num_frames)]
    segment = float(num_frames - 1) / video_frames
    return [raw[(int(round(segment * i)) + int(round(segment * (i + 1)))) // 2] for i in range(video_frames)]


# ---------------------------------------------------------------- the Bench-D judge prompt


@dataclass(frozen=True, slots=True, kw_only=True)
class JudgePrompt:
    """The judge's system prompt, its sha256 and where it was read from."""

    text: str
    sha256: str
    source: str

    @property
    def is_release(self) -> bool:
        return self.sha256 == JUDGE_PROMPT_SHA256


def default_cache_dir() -> Path:
    base = os.environ.get("VIDEOREFER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "videorefer"
    )
    return Path(base)


def load_judge_prompt(
    path: str | Path | None,
    protocol: BenchProtocol,
    *,
    cache_dir: str | Path | None = None,
    expected_sha256: str = JUDGE_PROMPT_SHA256,
    download: bool = True,
) -> JudgePrompt:
    """The Bench-D judge's system prompt: `path` (your checkout's `system.txt`), else the cached download.

    Read as the release reads it (text mode, UTF-8). Release protocol refuses a file whose sha256 is not
    `expected_sha256`; paper protocol takes it and records its digest. Without `path` the file is downloaded once
    from the release at the pinned commit into `cache_dir` (default `~/.cache/videorefer`) and checked.
    """
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"--judge-prompt {file}: no such file")
        source = str(file)
    else:
        file = Path(cache_dir or default_cache_dir()) / "judge" / f"system-{RELEASE_COMMIT[:7]}.txt"
        if not file.is_file():
            if not download:
                raise ConfigError(f"no cached judge prompt at {file}; pass --judge-prompt FILE")
            _download(file, expected_sha256)
        source = f"{JUDGE_PROMPT_URL} (cached at {file})"
    raw = file.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected_sha256 and protocol.strict_judge_prompt:
        raise ConfigError(
            f"judge prompt {file} has sha256 {digest}, not the release's {expected_sha256} ({JUDGE_PROMPT_PATH} at "
            f"commit {RELEASE_COMMIT[:7]}); {protocol.name} protocol needs that file byte for byte"
        )
    with file.open(encoding="utf-8") as handle:  # text mode, as the release's `open(...).read()`
        text = handle.read()
    return JudgePrompt(text=text, sha256=digest, source=source)


def _download(target: Path, expected_sha256: str) -> None:
    try:
        with urllib.request.urlopen(JUDGE_PROMPT_URL, timeout=30) as response:  # noqa: S310 - fixed https URL
            raw = response.read()
    except OSError as exc:
        raise ConfigError(
            f"cannot download the judge prompt from {JUDGE_PROMPT_URL} ({exc}); pass --judge-prompt with "
            f"{JUDGE_PROMPT_PATH} from a checkout of {RELEASE_REPOSITORY}"
        ) from exc
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected_sha256:
        raise ConfigError(f"downloaded judge prompt has sha256 {digest}, expected {expected_sha256}")
    write_text_atomic(target, raw.decode("utf-8"))
