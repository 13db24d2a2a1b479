"""Asking the VideoRefer model about objects in a video: the Python API behind `videorefer infer` and the benchmark.

`VideoReferPipeline.from_pretrained(dir)` loads a saved model + processor + the folder's `generation_config.json`;
`pipeline.ask(video=..., masks=..., question=...)` feeds the model what the release's `process_video` + `mm_infer`
feed it: `num_frames` frames (the model config's, 16, unless told otherwise; 8 reproduces the release's
evaluation) sampled by the release's rule (engine.video.uniform_indices) over the whole video or a start/end span
(the release's span rule), every mask frame of every object (frames that are not sampled are read as extra
frames; sampled ones are not encoded twice), the release's prompt, and the release's decoding (greedy, the
folder's repetition penalty and eos ids, 2048 new tokens at most) unless the caller overrides a setting. `video`
may also be an image file (one frame, which the connector sees `num_frames` times, as released) or None for a
text-only question. `pipeline.mm_infer(...)` is the low-level form of the release's `mm_infer` (preprocessed
tensors, `masks`, `ann_indices`, `frame`), for people porting notebooks. `streamer_callback` receives the text as
it is generated (transformers' `TextIteratorStreamer`). `save_tiny_model` writes a tiny random model, tokenizer
and processor, for tests of training, evaluation and the CLI.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import InvalidSampleError, RejectReason
from model.checkpoint import save_model_folder
from model.configuration import preset
from model.generation import decoding_config, default_generation_config, load_generation_config
from model.modeling import VideoReferForCausalLM, default_attn_implementation
from model.processing import MaskLike, VideoReferProcessor, build_tiny_tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype | str:
    """`None` -> "auto" (the folder's stored dtype, fp16 for a converted release) on CUDA, float32 elsewhere.

    Half precision on a CPU is slow and not how the release runs, so CPU inference computes in float32 unless a
    dtype is asked for. Names map to torch dtypes.
    """
    if dtype is None:
        return "auto" if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def is_image_file(video: Any) -> bool:
    """A path to one image (not a video file nor a folder of frames)."""
    return isinstance(video, str | Path) and Path(video).suffix.lower() in IMAGE_EXTENSIONS and Path(video).is_file()


@dataclass(frozen=True, slots=True)
class VideoInput:
    """What `sample_video` read: the frames in the processor's layout, the sampled indices, and the modality."""

    frames: np.ndarray | None
    frame_indices: list[int]
    modality: str  # "video", "image" or "text"


def sample_video(
    video: str | Path | np.ndarray,
    num_frames: int,
    mask_frames: Sequence[int] = (),
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    fps: float | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Frames for `processor.encode`: `num_frames` frames by the release's rule, then every mask frame not among them.

    Returns `(frames, frame_indices)`; frames past `len(frame_indices)` are the extra mask frames in ascending
    order, the layout `VideoReferProcessor.encode` expects. `video` is a path (file or frame folder) or an
    array `[n, h, w, 3]` of all frames (give `fps` with a span). `start_s`/`end_s` restrict sampling to a span by
    the release's rule (`engine.video.span_frame_range`); mask frames may lie anywhere in the video.
    """
    from engine.video import probe, read_frames, span_frame_range, uniform_indices

    if isinstance(video, np.ndarray):
        total, rate = video.shape[0], fps
    else:
        info = probe(video)
        total, rate = info.num_frames, info.fps
    if start_s is None and end_s is None:
        span = list(range(total))
    else:
        if not rate:
            raise ValueError("a start/end span needs the video's fps")
        span = span_frame_range(total, rate, start_s, end_s)
    indices = [span[i] for i in uniform_indices(len(span), num_frames)]
    extras = sorted({int(i) for i in mask_frames} - set(indices))
    bad = [i for i in extras if i < 0 or i >= total]
    if bad:
        raise ValueError(f"mask frames {bad} are outside the video's {total} frames")
    wanted = list(dict.fromkeys(indices)) + extras
    frames = video[wanted] if isinstance(video, np.ndarray) else read_frames(video, wanted)
    return frames, list(indices)


def mask_size(mask: Any) -> tuple[int, int] | None:
    """(height, width) of a mask given as an array, an `RleMask`, a COCO RLE or `{"segmentation": RLE}`."""
    from engine.types import RleMask

    if isinstance(mask, np.ndarray | torch.Tensor):
        return (int(mask.shape[-2]), int(mask.shape[-1]))
    if isinstance(mask, RleMask):
        return (mask.height, mask.width)
    if isinstance(mask, Mapping):
        inner = mask.get("segmentation", mask)
        if isinstance(inner, Mapping) and isinstance(inner.get("size"), Sequence) and len(inner["size"]) == 2:
            return (int(inner["size"][0]), int(inner["size"][1]))
    return None


def check_mask_sizes(objects: Sequence[Mapping[int, Any]], frame_size: tuple[int, int]) -> None:
    """Every mask must have the video's frame size (a mask of another size would be stretched onto the frame), and
    an RLE must decode faithfully (counts covering exactly height x width): `InvalidMaskError` otherwise."""
    from engine.errors import InvalidMaskError
    from engine.masks import validated_mask
    from engine.types import RleMask

    for number, obj in enumerate(objects):
        for frame, mask in obj.items():
            if isinstance(mask, Mapping | RleMask):
                try:
                    validated_mask(mask, height=frame_size[0], width=frame_size[1])
                except InvalidMaskError as exc:
                    raise InvalidMaskError(f"object {number}: the mask on frame {frame}: {exc}",
                                           reason=exc.reason) from exc
                continue
            size = mask_size(mask)
            if size is not None and size != frame_size:
                raise InvalidSampleError(
                    f"object {number}: the mask on frame {frame} is {size[0]}x{size[1]}, the video's frames are "
                    f"{frame_size[0]}x{frame_size[1]}", reason=RejectReason.MASK_SIZE_MISMATCH,
                )


def input_frame_size(video: str | Path) -> tuple[int, int]:
    """(height, width) of a video, frame folder or image from its header, no frame decoded: what masks must match
    before anything heavy loads (`videorefer infer` checks them first)."""
    if is_image_file(video):
        from PIL import Image

        with Image.open(video) as image:
            return image.height, image.width
    from engine.video import probe

    info = probe(video)
    return info.height, info.width


def read_image(path: str | Path) -> np.ndarray:
    """One image file as RGB uint8 `[1, h, w, 3]` (Pillow, as the release's `process_image`)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))[None]


class VideoReferPipeline:
    """A loaded model + processor answering questions about masked objects."""

    def __init__(
        self,
        model: VideoReferForCausalLM,
        processor: VideoReferProcessor,
        device: str = "cpu",
        generation_config: Any = None,
    ):
        self.model = model.eval()
        self.processor = processor
        self.device = torch.device(device)
        self.generation_config = generation_config or default_generation_config(processor)

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, device: str = "cpu", dtype: str | torch.dtype | None = None
    ) -> VideoReferPipeline:
        """Load a saved folder; `dtype` None keeps the stored dtype on CUDA and computes in float32 on a CPU."""
        from engine.errors import ConfigError

        if not (Path(model_dir) / "config.json").is_file():
            raise ConfigError(f"{model_dir} is not a saved VideoRefer folder (no config.json)")
        model = VideoReferForCausalLM.from_pretrained(
            str(model_dir), dtype=resolve_dtype(dtype, device), attn_implementation=default_attn_implementation(device)
        )
        processor = VideoReferProcessor.from_pretrained(model_dir)
        generation = load_generation_config(model_dir, processor)
        return cls(model.to(device), processor, device=device, generation_config=generation)

    def read_input(
        self,
        video: str | Path | np.ndarray | None,
        objects: Sequence[Mapping[int, MaskLike]],
        *,
        num_frames: int,
        start_s: float | None = None,
        end_s: float | None = None,
    ) -> VideoInput:
        """The frames the model sees for `video` (see the module docstring): video, image or nothing (text)."""
        if video is None:
            if objects:
                raise InvalidSampleError("masks were given without a video", reason=RejectReason.MALFORMED_SAMPLE)
            return VideoInput(frames=None, frame_indices=[], modality="text")
        if is_image_file(video):
            keys = {int(k) for obj in objects for k in obj}
            if keys - {0}:
                raise InvalidSampleError(
                    f"an image has one frame (0); masks were given on frames {sorted(keys)}",
                    reason=RejectReason.MALFORMED_SAMPLE,
                )
            return VideoInput(frames=read_image(video), frame_indices=[0] * num_frames, modality="image")
        mask_frames = [int(k) for obj in objects for k in obj]
        frames, indices = sample_video(video, num_frames, mask_frames, start_s=start_s, end_s=end_s)
        return VideoInput(frames=frames, frame_indices=indices, modality="video")

    def prepare(
        self,
        *,
        video: str | Path | np.ndarray | None,
        masks: Sequence[Mapping[int, MaskLike]] = (),
        question: str,
        mode: str = "single",
        num_frames: int | None = None,
        start_s: float | None = None,
        end_s: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """The batch (of one) that `model.generate` takes for this question."""
        objects = [{int(k): v for k, v in obj.items()} for obj in masks]
        frames_to_use = int(num_frames) if num_frames is not None else self.processor.num_frames
        read = self.read_input(video, objects, num_frames=frames_to_use, start_s=start_s, end_s=end_s)
        if read.frames is not None:
            check_mask_sizes(objects, tuple(read.frames.shape[1:3]))
        prompt = self.processor.build_prompt(question, len(objects), modality=read.modality)
        item = self.processor.encode(
            frames=read.frames,
            frame_indices=read.frame_indices,
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
        video: str | Path | np.ndarray | None,
        masks: Sequence[Mapping[int, MaskLike]] = (),
        question: str,
        mode: str = "single",
        num_frames: int | None = None,
        start_s: float | None = None,
        end_s: float | None = None,
        max_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        streamer_callback: Callable[[str], Any] | None = None,
    ) -> str:
        """The model's answer. Decoding settings left at None are the release's (`model.generation`)."""
        batch = self.prepare(
            video=video, masks=masks, question=question, mode=mode, num_frames=num_frames, start_s=start_s,
            end_s=end_s,
        )
        return self.generate(
            batch, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
            repetition_penalty=repetition_penalty, streamer_callback=streamer_callback,
        )

    def mm_infer(
        self,
        image_or_video: torch.Tensor | None,
        instruct: str,
        *,
        modal: str = "video",
        masks: torch.Tensor | None = None,
        ann_indices: Sequence[Sequence[Sequence[int]]] | Sequence[Sequence[int]] | None = None,
        frame: torch.Tensor | Sequence[torch.Tensor] | None = None,
        frame_nums: Any = None,
        **decoding: Any,
    ) -> str:
        """The release's `mm_infer(image_or_video, instruct, model, tokenizer, modal, masks, ann_indices, frame)`.

        `image_or_video`: preprocessed pixels `[T, 3, S, S]` (video) or `[1, 3, S, S]` (image, shown to the
        connector `num_frames` times); `frame`: the preprocessed mask frames `[F, 3, S, S]`; `masks`: `[M, H, W]`
        (or `[1, M, H, W]`) full-resolution masks, object after object; `ann_indices`: per object, the rows of
        `frame` its masks lie on (the release's `[[...], [...]]`, optionally wrapped in one more list).
        `frame_nums` is accepted and unused, as in the release. Decoding keywords as in `ask`.
        """
        del frame_nums
        batch = self.prepare_tensors(image_or_video, instruct, modal=modal, masks=masks, ann_indices=ann_indices,
                                     frame=frame)
        return self.generate(batch, **decoding)

    def prepare_tensors(
        self,
        image_or_video: torch.Tensor | None,
        instruct: str,
        *,
        modal: str = "video",
        masks: torch.Tensor | None = None,
        ann_indices: Sequence[Any] | None = None,
        frame: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The batch `mm_infer` generates from (see there); each frame row is encoded as given."""
        from model.object_encoder import masks_to_grid

        processor = self.processor
        per_object = _objects_of(ann_indices)
        if modal == "text" or image_or_video is None:
            if per_object:
                raise InvalidSampleError("masks were given without a video", reason=RejectReason.MALFORMED_SAMPLE)
            prompt = processor.build_prompt(instruct, 0, modality="text")
            item = processor.encode(frames=None, frame_indices=[], objects=[], conversations=[
                {"from": "human", "value": prompt}], add_generation_prompt=True)
            return {key: value.to(self.device) for key, value in processor.collate([item]).items()}
        video = image_or_video.float()
        rows = [0] * processor.num_frames if modal == "image" else list(range(video.shape[0]))
        extra = [] if frame is None else list(frame) if isinstance(frame, Sequence) else [frame]
        frames = torch.cat([video, *(rows_of.float() for rows_of in extra)])
        if masks is not None and masks.dim() == 4:
            masks = masks[0]
        flat = [row for rows_of in per_object for row in rows_of]
        if per_object and (masks is None or masks.shape[0] != len(flat)):
            raise InvalidSampleError(f"{len(flat)} ann_indices but {0 if masks is None else masks.shape[0]} masks")
        tokens = [min(len(rows_of), processor.region_tokens_per_object) for rows_of in per_object]
        prompt = processor.build_prompt(instruct, len(per_object), modality=modal)
        input_ids, _ = processor.tokenize([{"from": "human", "value": prompt}], len(rows), tokens,
                                          add_generation_prompt=True)
        grid = processor.grid
        no_masks = torch.zeros(0, grid, grid, dtype=torch.bool)
        batch = {
            "input_ids": torch.tensor([input_ids]),
            "attention_mask": torch.ones(1, len(input_ids), dtype=torch.long),
            "pixel_values": frames,
            "frame_counts": torch.tensor([frames.shape[0]]),
            "video_frame_index": torch.tensor(rows),
            "video_frame_counts": torch.tensor([len(rows)]),
            "object_masks": masks_to_grid(masks.float(), grid) if per_object else no_masks,
            "mask_frame_index": torch.tensor([video.shape[0] + row for row in flat], dtype=torch.long),
            "mask_object_index": torch.tensor([i for i, rows_of in enumerate(per_object) for _ in rows_of],
                                              dtype=torch.long),
        }
        return {key: value.to(self.device) for key, value in batch.items()}

    def generate(
        self,
        batch: Mapping[str, torch.Tensor],
        *,
        max_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        streamer_callback: Callable[[str], Any] | None = None,
    ) -> str:
        """Decode an answer for a prepared batch of one with the folder's generation config + the overrides."""
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        config = decoding_config(
            self.generation_config, self.processor, max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty,
        )
        if streamer_callback is None:
            output = self.model.generate(**inputs, generation_config=config)
            return self.processor.decode(output[0]).strip()

        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=False, skip_special_tokens=True)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.model.generate(**inputs, generation_config=config, streamer=streamer)
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


def _objects_of(ann_indices: Sequence[Any] | None) -> list[list[int]]:
    """The release's `ann_indices` (`[[rows of object 0], ...]`, or that wrapped in a list) as per-object rows."""
    if not ann_indices:
        return []
    if len(ann_indices) == 1 and ann_indices[0] and isinstance(ann_indices[0][0], Sequence):
        ann_indices = ann_indices[0]
    return [[int(row) for row in rows] for rows in ann_indices]


@functools.lru_cache(maxsize=1)
def cached_pipeline(model_dir: str, device: str | None = None) -> VideoReferPipeline:
    """A pipeline loaded once per process (a flow evaluating several benchmarks reuses it); device None: cuda when
    available, else cpu."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return VideoReferPipeline.from_pretrained(model_dir, device=device)


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
