"""Asking the VideoRefer model about objects in a video: the Python API behind `videorefer infer` and the benchmark.

`VideoReferPipeline.from_pretrained(dir)` loads a saved model + processor; `pipeline.ask(video=..., masks=...,
question=...)` samples `processor.num_frames` uniform frames (engine.video: PAPER.md's segment-middle rule), adds
the frames that carry masks but were not sampled as extra frames (their features are computed once, never the
sampled ones twice), builds the prompt and decodes greedily or by sampling; `streamer_callback` receives the text
as it is generated (through transformers' `TextIteratorStreamer`). `save_tiny_model` writes a tiny random model,
tokenizer and processor, for tests of training, evaluation and the CLI.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import save_model_folder
from model.configuration import preset
from model.modeling import VideoReferForCausalLM, default_attn_implementation
from model.processing import MaskLike, VideoReferProcessor, build_tiny_tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """`None` -> bfloat16 on CUDA, float32 elsewhere; names map to torch dtypes."""
    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def sample_video(
    video: str | Path | np.ndarray, num_frames: int, mask_frames: Sequence[int] = ()
) -> tuple[np.ndarray, list[int]]:
    """Frames for `processor.encode`: `num_frames` uniform frames, then every mask frame not among them.

    Returns `(frames, frame_indices)`; frames past `len(frame_indices)` are the extra mask frames in ascending
    order, the layout `VideoReferProcessor.encode` expects. `video` is a path (file or frame folder) or an
    array `[n, h, w, 3]` of all frames.
    """
    from engine.video import probe, read_frames, uniform_indices

    total = video.shape[0] if isinstance(video, np.ndarray) else probe(video).num_frames
    indices = uniform_indices(total, num_frames)
    extras = sorted({int(i) for i in mask_frames} - set(indices))
    bad = [i for i in extras if i < 0 or i >= total]
    if bad:
        raise ValueError(f"mask frames {bad} are outside the video's {total} frames")
    wanted = list(indices) + extras
    frames = video[wanted] if isinstance(video, np.ndarray) else read_frames(video, wanted)
    return frames, list(indices)


class VideoReferPipeline:
    """A loaded model + processor answering questions about masked objects."""

    def __init__(self, model: VideoReferForCausalLM, processor: VideoReferProcessor, device: str = "cpu"):
        self.model = model.eval()
        self.processor = processor
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, device: str = "cpu", dtype: str | torch.dtype | None = None
    ) -> VideoReferPipeline:
        torch_dtype = resolve_dtype(dtype, device)
        model = VideoReferForCausalLM.from_pretrained(
            str(model_dir), dtype=torch_dtype, attn_implementation=default_attn_implementation(device)
        )
        processor = VideoReferProcessor.from_pretrained(model_dir)
        return cls(model.to(device), processor, device=device)

    def prepare(
        self,
        *,
        video: str | Path | np.ndarray,
        masks: Sequence[Mapping[int, MaskLike]],
        question: str,
        mode: str = "single",
    ) -> dict[str, torch.Tensor]:
        """The batch (of one) that `model.generate` takes for this question."""
        objects = [{int(k): v for k, v in obj.items()} for obj in masks]
        frames, indices = sample_video(video, self.processor.num_frames, [k for obj in objects for k in obj])
        prompt = self.processor.build_prompt(question, len(objects))
        item = self.processor.encode(
            frames=frames,
            frame_indices=indices,
            objects=objects,
            conversations=[{"from": "human", "value": prompt}],
            mode=mode,
            add_generation_prompt=True,
        )
        batch = self.processor.collate([item], padding_side="left")
        return {key: value.to(self.device) for key, value in batch.items()}

    def ask(
        self,
        *,
        video: str | Path | np.ndarray,
        masks: Sequence[Mapping[int, MaskLike]],
        question: str,
        mode: str = "single",
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 0.2,
        top_p: float = 0.9,
        streamer_callback: Callable[[str], Any] | None = None,
    ) -> str:
        """The model's answer; greedy unless `do_sample`; text chunks go to `streamer_callback` as they come."""
        batch = self.prepare(video=video, masks=masks, question=question, mode=mode)
        batch.pop("labels", None)
        tokenizer = self.processor.tokenizer
        options: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "eos_token_id": self.processor.im_end_id,
            "pad_token_id": self.processor.pad_token_id,
        }
        if do_sample:
            options.update(temperature=temperature, top_p=top_p)
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        if streamer_callback is None:
            output = self.model.generate(**batch, **options)
            return self.processor.decode(output[0]).strip()

        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.model.generate(**batch, **options, streamer=streamer)
            except BaseException as exc:  # re-raised in the caller's thread below
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        pieces = []
        for chunk in streamer:
            pieces.append(chunk)
            if chunk:
                streamer_callback(chunk)
        worker.join()
        if failure:
            raise failure[0]
        return "".join(pieces).strip()


def save_tiny_model(directory: str | Path, seed: int = 0) -> Path:
    """Build a tiny random VideoRefer (preset "tiny") + tiny tokenizer + processor and save them to `directory`.

    Deterministic for a seed. Written into a temporary folder beside `directory` first and moved in last.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = preset("tiny")
    tokenizer = build_tiny_tokenizer()
    if len(tokenizer) > config.llm_vocab_size:
        raise RuntimeError(f"tiny tokenizer has {len(tokenizer)} tokens, more than the tiny vocabulary")
    model = VideoReferForCausalLM(config)
    processor = VideoReferProcessor.from_config(tokenizer, config)
    return save_model_folder(model, processor, directory)
