"""Turns one sample (frames, object masks, conversation) into the tensors `VideoReferForCausalLM` takes.

THE CONTRACT training and evaluation code against. For ONE sample, `VideoReferProcessor.encode` returns
(unbatched; `collate` batches them for `model(**batch)`):

- `input_ids`, `labels`, `attention_mask` `[L]`: the Qwen2 chat layout (`<|im_start|>role\\n ... <|im_end|>\\n`,
  a system turn first). The `<video>` (or `<image>`) marker becomes `video_token_count(T)` slots holding
  `video_token_id` (negative, -201: never looked up in the vocabulary); when a conversation has no marker, the
  slots open the first human turn followed by "\\n". The i-th `<region>` becomes `tokens_per_object` slots of
  `region_token_id` for object i: 1 in single-frame mode, min(k, u) in multi-frame mode (k mask frames used).
  Labels are -100 everywhere except the assistant turns' content and their closing `<|im_end|>`.
- `pixel_values [F, 3, S, S]` (float32, SigLIP normalisation (x - 0.5) / 0.5, frames resized to S x S without
  cropping): every DISTINCT frame once: first the distinct sampled frames (first-appearance order), then the
  extra mask frames the chosen masks need (ascending). (With the options `do_normalize=False` / `do_resize=False`,
  as transformers' image processors have them, the training loader's workers hand over uint8 pixels, possibly at
  their stored size, and `normalize_pixels` on the trainer's device finishes them into these very values.)
  `video_frame_index [T]`: the row of each sampled frame,
  in `frame_indices` order (repeats allowed: a short video repeats frames, an image is T copies of row 0), so the
  connector sees T frames while the vision tower encodes each frame once. `frame_counts` = F,
  `video_frame_counts` = T (0-d tensors).
- `object_masks [M, g, g]` bool: each used mask resized bilinearly (align_corners=False) to the g x g vision grid,
  cells > 0 inside; `mask_frame_index [M]`: the row of `pixel_values` each mask lies on; `mask_object_index [M]`:
  its object (0 .. num_objects-1, `<region>` order); masks of one object in ascending frame order. `num_objects`.
- The `<region>` slots of an object are an upper bound: the model drops the surplus when the release's merge
  rule leaves fewer than min(k, u) tokens (tied similarities), and closes the gap in the sequence.

Which mask frames are pooled, per object (PAPER.md "spatial token extractor", as the release):
- "multi": EVERY supplied mask frame of the object, whether or not it is a sampled frame (a mask frame that is
  a sampled frame reuses that frame's features: same pixels, same result; the others are encoded as extra
  frames). 32 masks give 32 tokens before the temporal merge.
- "single": one mask frame: the first of the object's mask frames that is a sampled frame, else its first one.
- An object with no mask raises `InvalidSampleError(reason=MISSING_MASK)`; a `<region>` count that differs from
  the number of objects raises `InvalidSampleError(reason=REGION_COUNT_MISMATCH)`.
- Masks are pooled in ascending frame order. (The release takes the annotation dict's key order, which is
  ascending in its released files; sorting keeps a file whose keys were sorted as strings in time order.)

Frames in `encode`: `frames` holds one row per `frame_indices` entry (or one per DISTINCT entry), followed by one
row for EVERY mask frame index not in `frame_indices` (all objects together, ascending, no repeats): the layout
`model.inference.sample_video` and the WebDataset shards use. `frames=None` encodes a text-only sample.
Chat layout: the Qwen2-Instruct template the release's `mm_infer` renders through `apply_chat_template` (no
system message given, so the template's "You are a helpful assistant."), with the `<video>`/`<image>` marker
swapped for slots and every text piece between markers tokenized on its own (`tokenizer_multimodal_token`).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import InvalidSampleError, RejectReason
from engine.masks import decode_rle, resize_to_grid, rle_to_grid
from engine.types import RleMask
from model.configuration import TINY_SPECIAL_TOKENS, VIDEO_PLACEHOLDER_ID, VideoReferConfig, video_token_count

PROCESSOR_FILE = "videorefer_processor.json"
REGION = "<region>"
VIDEO_MARKERS = ("<video>", "<image>")
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
IGNORE_INDEX = -100
_TOKEN_CACHE_SIZE = 4096  # text pieces kept per processor (the template's few, then the most frequent first come)
_MARKER_PATTERN = re.compile(r"(<video>|<image>|<region>)")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

MaskLike = np.ndarray | Mapping[str, Any] | RleMask
# Keywords transformers' Auto classes pass to `from_pretrained` that are about fetching files, not settings.
_LOADING_OPTIONS = ("trust_remote_code", "cache_dir", "force_download", "local_files_only", "token", "revision",
                    "subfolder", "proxies", "code_revision", "_from_auto", "_from_pipeline", "_commit_hash")


def decode_mask(mask: MaskLike) -> np.ndarray:
    """A boolean `[H, W]` array from an array, a COCO RLE mapping, `{"segmentation": RLE}` or an `RleMask`."""
    if isinstance(mask, np.ndarray):
        return mask.astype(bool, copy=False)
    if isinstance(mask, torch.Tensor):
        return mask.detach().cpu().numpy().astype(bool)
    if isinstance(mask, Mapping) and "segmentation" in mask:
        mask = mask["segmentation"]
        if mask is None:
            raise InvalidSampleError("mask has a null segmentation", reason=RejectReason.MISSING_MASK)
    if isinstance(mask, RleMask | Mapping):
        return decode_rle(mask)
    raise InvalidSampleError(f"unsupported mask type {type(mask).__name__}", reason=RejectReason.MALFORMED_SAMPLE)


def mask_grid(mask: MaskLike, grid: int) -> np.ndarray:
    """`resize_to_grid(decode_mask(mask), grid) > 0`: an RLE is sampled on the grid from its runs, never decoded."""
    rle = mask["segmentation"] if isinstance(mask, Mapping) and "segmentation" in mask else mask
    if isinstance(rle, RleMask | Mapping):
        return rle_to_grid(rle, grid) > 0
    return resize_to_grid(decode_mask(mask), grid) > 0  # arrays; and decode_mask's errors for anything else


def saved_num_frames(directory: str | Path) -> int:
    """The frame count a saved processor (`save_pretrained`) samples, read from its settings file alone: callers
    choose frames and check inputs before the tokenizer and the model load."""
    path = Path(directory) / PROCESSOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a saved VideoRefer model folder (no {PROCESSOR_FILE})")
    return int(json.loads(path.read_text())["num_frames"])


class VideoReferProcessor:
    """Tokenizer + frame/mask preprocessing + chat layout for VideoRefer (see the module docstring)."""

    def __init__(
        self,
        tokenizer: Any,
        image_size: int,
        num_frames: int = 16,
        grid: int | None = None,
        region_tokens_per_object: int = 4,
        *,
        connector_downsample: Sequence[int] = (2, 2, 2),
        video_token_id: int = VIDEO_PLACEHOLDER_ID,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        max_length: int = 2048,
        do_resize: bool = True,
        do_normalize: bool = True,
    ):
        if not do_resize and do_normalize:
            raise ValueError("do_resize=False needs do_normalize=False: frames left at their stored size stay uint8 "
                             "until normalize_pixels resizes and normalises them")
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.num_frames = int(num_frames)
        self.grid = int(grid) if grid is not None else self.image_size // 14
        self.region_tokens_per_object = int(region_tokens_per_object)
        self.connector_downsample = tuple(int(v) for v in connector_downsample)
        self.video_token_id = int(video_token_id)
        self.system_prompt = system_prompt
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.max_length = int(max_length)
        self.do_resize = bool(do_resize)
        self.do_normalize = bool(do_normalize)
        self.region_token_id = int(tokenizer.convert_tokens_to_ids(REGION))
        if self.region_token_id is None or self.region_token_id == tokenizer.unk_token_id:
            raise ValueError("the tokenizer has no <region> token")
        self.im_end_id = int(tokenizer.convert_tokens_to_ids("<|im_end|>"))
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.im_end_id)
        self._token_cache: dict[str, tuple[int, ...]] = {}  # text piece -> ids: the chat template's pieces repeat

    # ------------------------------------------------------------ construction and persistence

    @classmethod
    def from_config(cls, tokenizer: Any, config: VideoReferConfig, **kwargs: Any) -> VideoReferProcessor:
        """A processor whose sizes match a model configuration."""
        return cls(
            tokenizer,
            config.image_size,
            num_frames=config.num_frames,
            grid=config.grid_size,
            region_tokens_per_object=config.region_tokens_per_object,
            connector_downsample=config.connector_downsample,
            video_token_id=config.video_token_id,
            **kwargs,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "num_frames": self.num_frames,
            "grid": self.grid,
            "region_tokens_per_object": self.region_tokens_per_object,
            "connector_downsample": list(self.connector_downsample),
            "video_token_id": self.video_token_id,
            "system_prompt": self.system_prompt,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "max_length": self.max_length,
            "do_resize": self.do_resize,
            "do_normalize": self.do_normalize,
        }

    def replace(self, **settings: Any) -> VideoReferProcessor:
        """A new processor with the same tokenizer and settings, `settings` replacing some (as `to_dict` names
        them), e.g. `replace(do_resize=False, do_normalize=False)` for the training loader's workers."""
        merged = {**self.to_dict(), **settings}
        image_size = merged.pop("image_size")
        return type(self)(self.tokenizer, image_size, **merged)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the tokenizer files and `videorefer_processor.json` (atomically: temp name + rename)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(directory))
        target = directory / PROCESSOR_FILE
        temporary = target.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        temporary.replace(target)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> VideoReferProcessor:
        """Load a folder `save_pretrained` wrote; keyword overrides replace its settings.

        `AutoProcessor.from_pretrained(folder, trust_remote_code=True)` lands here too (the folder's
        `processor_config.json` names this class) and passes its loading options along; those are not settings.
        """
        from transformers import AutoTokenizer

        for option in _LOADING_OPTIONS:
            overrides.pop(option, None)
        directory = Path(directory)
        settings = json.loads((directory / PROCESSOR_FILE).read_text())
        settings.update(overrides)
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        image_size = settings.pop("image_size")
        return cls(tokenizer, image_size, **settings)

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoProcessor") -> None:
        """What transformers calls on a remote-code processor class it loaded; nothing to register here."""
        del auto_class

    def __call__(
        self,
        text: str,
        videos: np.ndarray | None = None,
        masks: Sequence[Mapping[int, MaskLike]] = (),
        *,
        frame_indices: Sequence[int] | None = None,
        mode: str = "single",
    ) -> dict[str, torch.Tensor]:
        """The batch of one that `model.generate(**batch)` takes, as transformers processors are called.

        `text`: the question, one `<region>` per object; without a `<video>`/`<image>` marker it becomes the
        release's prompt (`build_prompt`: `<video>\n` in front, or `\n` for a text-only question). `videos`: the
        frames `[T, H, W, 3]` uint8; `masks`: per object `{frame: mask}` (a bool array `[H, W]` or a COCO RLE).
        Without `frame_indices` the rows are frames 0..T-1 and a mask's key is its row; with them, `videos` holds
        one row per sampled frame followed by one per mask frame not sampled (the `encode` layout). Left-padded
        for generation; no labels.
        """
        frames = None if videos is None else np.asarray(videos)
        if frames is None:
            indices: list[int] = []
            prompt = self.build_prompt(text, 0, modality="text")
        else:
            indices = list(range(frames.shape[0])) if frame_indices is None else [int(i) for i in frame_indices]
            has_marker = any(marker in text for marker in VIDEO_MARKERS)
            prompt = text if has_marker else self.build_prompt(text, len(masks))
        item = self.encode(
            frames=frames, frame_indices=indices, objects=list(masks),
            conversations=[{"from": "human", "value": prompt}], mode=mode, add_generation_prompt=True,
        )
        batch = self.collate([item], padding_side="left")
        batch.pop("labels")
        return batch

    # ------------------------------------------------------------ sizes

    def video_token_count(self, num_frames: int) -> int:
        return video_token_count(num_frames, self.grid, self.connector_downsample)

    def tokens_per_object(self, mode: str, mask_frames: int) -> int:
        return 1 if mode == "single" else max(1, min(mask_frames, self.region_tokens_per_object))

    # ------------------------------------------------------------ prompts

    def build_prompt(self, question: str, num_objects: int, *, modality: str = "video") -> str:
        """The human turn for a question about `num_objects` objects, as the release's `mm_infer` builds it.

        `modality` "video" gives `<video>\n` + question, "image" `<image>\n` + question and "text" `\n` + question
        (the release puts an empty modal token before the newline). The question is not stripped. A question that
        already holds `num_objects` `<region>` markers is kept as is; one with none gets them named up front ("The
        object <region>. question" for one object, "<object0><region>, <object1><region>. question" for several;
        our convenience, the release needs the markers); any other count raises
        `InvalidSampleError(reason=REGION_COUNT_MISMATCH)` (a bad item, not a crash, for benchmark runners).
        """
        if modality not in ("video", "image", "text"):
            raise ValueError(f"modality must be video, image or text, got {modality!r}")
        count = question.count(REGION)
        text = question
        if count == 0 and num_objects > 0:
            names = ", ".join(f"<object{i}>{REGION}" for i in range(num_objects))
            text = f"{names}. {text.strip()}" if num_objects > 1 else f"The object {REGION}. {text.strip()}"
        elif count != num_objects:
            raise InvalidSampleError(
                f"question has {count} {REGION} markers but {num_objects} objects were given",
                reason=RejectReason.REGION_COUNT_MISMATCH,
            )
        if any(marker in text for marker in VIDEO_MARKERS):
            return text
        marker = {"video": "<video>", "image": "<image>", "text": ""}[modality]
        return f"{marker}\n{text}"

    # ------------------------------------------------------------ encoding

    def encode(
        self,
        *,
        frames: np.ndarray | None,
        frame_indices: Sequence[int],
        objects: Sequence[Mapping[int, MaskLike]],
        conversations: Sequence[Mapping[str, str]],
        mode: str = "single",
        add_generation_prompt: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Tensors for ONE sample (layout in the module docstring); `frames=None` is a text-only sample."""
        if mode not in ("single", "multi"):
            raise ValueError(f"mode must be 'single' or 'multi', got {mode!r}")
        if frames is None or len(frame_indices) == 0:
            return self._encode_text_only(frames, objects, conversations, add_generation_prompt)
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise InvalidSampleError(f"frames must be [n, h, w, 3], got {frames.shape}")
        sampled = [int(i) for i in frame_indices]
        distinct = list(dict.fromkeys(sampled))
        masks_by_object = [dict(sorted((int(k), v) for k, v in obj.items())) for obj in objects]
        extra_indices = sorted({k for obj in masks_by_object for k in obj} - set(sampled))
        if frames.shape[0] == len(sampled) + len(extra_indices):
            first_row = {index: sampled.index(index) for index in distinct}
            offset = len(sampled)
        elif frames.shape[0] == len(distinct) + len(extra_indices):
            first_row = {index: row for row, index in enumerate(distinct)}
            offset = len(distinct)
        else:
            raise InvalidSampleError(
                f"{frames.shape[0]} frames given for {len(sampled)} sampled frames"
                f" and {len(extra_indices)} extra mask frames"
            )
        supplied = {**first_row, **{index: offset + i for i, index in enumerate(extra_indices)}}
        chosen = [self._choose_mask_frames(obj, set(sampled), mode, i) for i, obj in enumerate(masks_by_object)]
        used_extras = sorted({index for frames_of in chosen for index in frames_of} - set(sampled))
        pixel_order = distinct + used_extras  # every distinct frame once: the vision tower never sees one twice
        pixel_row = {index: row for row, index in enumerate(pixel_order)}
        rows = [supplied[index] for index in pixel_order]  # the frames' rows in pixel order (often all, in order)

        grid_masks, mask_rows, mask_objects = [], [], []
        for object_number, (obj, frames_of) in enumerate(zip(masks_by_object, chosen, strict=True)):
            for index in frames_of:
                grid_masks.append(mask_grid(obj[index], self.grid))
                mask_rows.append(pixel_row[index])
                mask_objects.append(object_number)

        tokens_per_object = [self.tokens_per_object(mode, len(frames_of)) for frames_of in chosen]
        input_ids, labels = self.tokenize(
            conversations, len(sampled), tokens_per_object, add_generation_prompt=add_generation_prompt
        )
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.ones(len(input_ids), dtype=torch.long),
            "pixel_values": self.preprocess_frames(frames if rows == list(range(frames.shape[0])) else frames[rows]),
            "frame_counts": torch.tensor(len(pixel_order), dtype=torch.long),
            "video_frame_index": torch.tensor([pixel_row[index] for index in sampled], dtype=torch.long),
            "video_frame_counts": torch.tensor(len(sampled), dtype=torch.long),
            "object_masks": (
                torch.from_numpy(np.stack(grid_masks))
                if grid_masks
                else torch.zeros(0, self.grid, self.grid, dtype=torch.bool)
            ),
            "mask_frame_index": torch.tensor(mask_rows, dtype=torch.long),
            "mask_object_index": torch.tensor(mask_objects, dtype=torch.long),
            "num_objects": torch.tensor(len(masks_by_object), dtype=torch.long),
        }

    def _encode_text_only(
        self,
        frames: np.ndarray | None,
        objects: Sequence[Mapping[int, MaskLike]],
        conversations: Sequence[Mapping[str, str]],
        add_generation_prompt: bool,
    ) -> dict[str, torch.Tensor]:
        if objects:
            raise InvalidSampleError("objects were given without frames", reason=RejectReason.MALFORMED_SAMPLE)
        if frames is not None and np.asarray(frames).shape[0] != 0:
            raise InvalidSampleError("frames were given without frame indices", reason=RejectReason.MALFORMED_SAMPLE)
        input_ids, labels = self.tokenize(conversations, 0, [], add_generation_prompt=add_generation_prompt)
        size = self.image_size
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.ones(len(input_ids), dtype=torch.long),
            "pixel_values": torch.zeros(0, 3, size, size, dtype=torch.float32 if self.do_normalize else torch.uint8),
            "frame_counts": torch.tensor(0, dtype=torch.long),
            "video_frame_index": torch.zeros(0, dtype=torch.long),
            "video_frame_counts": torch.tensor(0, dtype=torch.long),
            "object_masks": torch.zeros(0, self.grid, self.grid, dtype=torch.bool),
            "mask_frame_index": torch.zeros(0, dtype=torch.long),
            "mask_object_index": torch.zeros(0, dtype=torch.long),
            "num_objects": torch.tensor(0, dtype=torch.long),
        }

    def encode_wds(
        self, sample_json: Mapping[str, Any], frames: Sequence[np.ndarray] | np.ndarray, *, mode: str | None = None
    ) -> dict[str, torch.Tensor]:
        """`encode` for one WebDataset sample: its `json` and its decoded frames ("00.jpg".. in frame order).

        `mode` None means: "single" when every object has exactly one mask frame, else "multi".
        """
        frame_array = frames if isinstance(frames, np.ndarray) else np.stack([np.asarray(f) for f in frames])
        if frame_array.ndim == 4 and frame_array.shape[-1] == 4:
            frame_array = frame_array[..., :3]
        try:
            objects = [obj["masks"] for obj in sample_json.get("objects", [])]
            conversations = sample_json["conversations"]
        except (KeyError, TypeError) as exc:
            raise InvalidSampleError(f"sample json lacks {exc}", reason=RejectReason.MALFORMED_SAMPLE) from exc
        frame_indices = sample_json.get("frame_indices") or list(range(frame_array.shape[0]))
        if mode is None:
            mode = sample_json.get("mode") or ("single" if all(len(masks) == 1 for masks in objects) else "multi")
        return self.encode(
            frames=frame_array, frame_indices=frame_indices, objects=objects, conversations=conversations, mode=mode
        )

    def collate(
        self, items: Sequence[Mapping[str, torch.Tensor]], *, padding_side: str = "right"
    ) -> dict[str, torch.Tensor]:
        """Pad and join encoded samples into one batch that `model(**batch)` accepts (left padding for generate)."""
        if not items:
            raise ValueError("collate needs at least one item")
        longest = max(int(item["input_ids"].shape[0]) for item in items)

        def pad(tensor: torch.Tensor, value: int) -> torch.Tensor:
            filler = tensor.new_full((longest - tensor.shape[0],), value)
            return torch.cat([tensor, filler] if padding_side == "right" else [filler, tensor])

        frame_offset, object_offset = 0, 0
        video_frames, mask_frames, mask_objects = [], [], []
        for item in items:
            video_frames.append(item["video_frame_index"] + frame_offset)
            mask_frames.append(item["mask_frame_index"] + frame_offset)
            mask_objects.append(item["mask_object_index"] + object_offset)
            frame_offset += int(item["frame_counts"])
            object_offset += int(item["num_objects"])
        return {
            "input_ids": torch.stack([pad(item["input_ids"], self.pad_token_id) for item in items]),
            "labels": torch.stack([pad(item["labels"], IGNORE_INDEX) for item in items]),
            "attention_mask": torch.stack([pad(item["attention_mask"], 0) for item in items]),
            "pixel_values": torch.cat(self._same_size_pixels([item["pixel_values"] for item in items])),
            "frame_counts": torch.stack([item["frame_counts"] for item in items]),
            "video_frame_index": torch.cat(video_frames),
            "video_frame_counts": torch.stack([item["video_frame_counts"] for item in items]),
            "object_masks": torch.cat([item["object_masks"] for item in items]),
            "mask_frame_index": torch.cat(mask_frames),
            "mask_object_index": torch.cat(mask_objects),
        }

    def preprocess_frames(self, frames: np.ndarray) -> torch.Tensor:
        """`[n, h, w, 3]` -> `pixel_values [n, 3, S, S]`: resize to S x S (no crop), rescale to 0..1, SigLIP norm.

        uint8 frames are resized as the release's SigLIP image processor does (Pillow, bicubic, on uint8:
        `resize_frames`), so the pixels equal `processor.preprocess(...)` of the release; float frames (0..1,
        webdataset's "rgb" decoding) use an antialiased bicubic torch resize.

        The two options split this between the loader's workers and the trainer's device (as transformers' image
        processors' `do_resize` / `do_normalize`): `do_normalize=False` returns the uint8 pixels `[n, 3, h, w]`
        (float frames rounded back to uint8), which `normalize_pixels` finishes wherever they are; with
        `do_resize=False` too, uint8 frames whose resize is one Pillow pass (`one_pass_resize`: the export's
        frames, short side S) keep their stored size, and `normalize_pixels` resizes them on its device
        (`resize_pixels`); others are resized here, as the device's integer resize reproduces one pass only.
        """
        size = self.image_size
        if frames.dtype == np.uint8:
            if self.do_resize or not one_pass_resize(frames.shape[1], frames.shape[2], size):
                frames = self.resize_frames(frames)
            # A channels-last view: `collate`'s concatenation (or the normalisation) is the one copy that lays it out.
            pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
            return self.normalize_pixels(pixels) if self.do_normalize else pixels
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        if tuple(pixels.shape[-2:]) != (size, size):
            pixels = F.interpolate(
                pixels, size=(size, size), mode="bicubic", align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
        if not self.do_normalize:
            return (pixels * 255.0).round_().clamp_(0, 255).to(torch.uint8)
        return self._normalize(pixels)

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 `[n, 3, h, w]` (the `pixel_values` of `do_normalize=False`) -> float32 `[n, 3, S, S]`, on the
        pixels' device: frames not yet S x S are resized first (`resize_pixels`: Pillow's bicubic bit for bit, by
        the one implementation of that device), then rescaled and normalised; the very values `preprocess_frames`
        gives with the default options. Float pixels (already normalised) are returned as they are."""
        if pixels.dtype != torch.uint8:
            return pixels
        if pixels.shape[0] and tuple(pixels.shape[-2:]) != (self.image_size, self.image_size):
            pixels = resize_pixels(pixels, self.image_size)
        return self._normalize(pixels.float() / 255.0)

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.image_mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=pixels.device).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def _same_size_pixels(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Items' pixels joinable in one tensor: uint8 frames left at several stored sizes (`do_resize=False`)
        are resized to S x S here (`resize_pixels`); one stored size stays for `normalize_pixels`, and the empty
        pixels of text-only items take that size."""
        size = self.image_size
        sizes = {tuple(p.shape[-2:]) for p in pixels if p.shape[0]}
        if len(sizes) > 1:
            pixels = [resize_pixels(p, size) if p.dtype == torch.uint8 and p.shape[0] else p for p in pixels]
            sizes = {(size, size)}
        if len(sizes) == 1:
            (common,) = sizes
            pixels = [p if p.shape[0] else p.new_zeros((0, *p.shape[1:-2], *common)) for p in pixels]
        return pixels

    def resize_frames(self, frames: np.ndarray) -> np.ndarray:
        """uint8 `[n, h, w, 3]` -> uint8 `[n, S, S, 3]` (contiguous) as the release's SigLIP processor resizes them:
        Pillow, bicubic, stretched (no crop); frames already S x S are returned as they are (no copy)."""
        frames = np.ascontiguousarray(frames)
        if tuple(frames.shape[1:3]) == (self.image_size, self.image_size):
            return frames
        return pillow_resize(frames, self.image_size)

    def decode(self, token_ids: Sequence[int] | torch.Tensor) -> str:
        """Text of generated ids, special tokens dropped."""
        ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
        return self.tokenizer.decode([i for i in ids if i >= 0], skip_special_tokens=True)

    # ------------------------------------------------------------ internals

    def _choose_mask_frames(
        self, masks: Mapping[int, MaskLike], sampled: set[int], mode: str, object_number: int
    ) -> list[int]:
        """The object's mask frames to pool: all of them ("multi"), or one ("single").

        Single-frame mode takes the first mask frame that is a sampled frame, else the first mask frame.
        """
        if not masks:
            raise InvalidSampleError(f"object {object_number} has no mask", reason=RejectReason.MISSING_MASK)
        frames = list(masks)
        if mode == "single":
            return [next((index for index in frames if index in sampled), frames[0])]
        return frames

    def _text_ids(self, text: str) -> list[int]:
        if not text:
            return []
        ids = self._token_cache.get(text)
        if ids is None:
            ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self._token_cache) < _TOKEN_CACHE_SIZE:
                self._token_cache[text] = ids
        return list(ids)

    def tokenize(
        self,
        conversations: Sequence[Mapping[str, str]],
        num_video_frames: int,
        tokens_per_object: Sequence[int],
        *,
        add_generation_prompt: bool,
    ) -> tuple[list[int], list[int]]:
        """Token ids and labels of a conversation whose video has `num_video_frames` frames (0: text only) and
        whose i-th `<region>` takes `tokens_per_object[i]` slots."""
        turns = [(_ROLES.get(str(turn.get("from", "")), ""), str(turn.get("value", ""))) for turn in conversations]
        if any(role == "" for role, _ in turns):
            raise InvalidSampleError("conversation turn with an unknown role", reason=RejectReason.MALFORMED_SAMPLE)
        regions = sum(value.count(REGION) for _, value in turns)
        if regions != len(tokens_per_object):
            raise InvalidSampleError(
                f"{regions} {REGION} markers for {len(tokens_per_object)} objects",
                reason=RejectReason.REGION_COUNT_MISMATCH,
            )
        markers = sum(value.count(marker) for _, value in turns for marker in VIDEO_MARKERS)
        if markers > 1:
            raise InvalidSampleError("more than one <video>/<image> marker", reason=RejectReason.MALFORMED_SAMPLE)
        if markers and not num_video_frames:
            raise InvalidSampleError("a <video>/<image> marker but no frames", reason=RejectReason.MALFORMED_SAMPLE)
        system = next((value for role, value in turns if role == "system"), self.system_prompt)
        turns = [(role, value) for role, value in turns if role != "system"]
        if markers == 0 and num_video_frames:
            first_user = next((i for i, (role, _) in enumerate(turns) if role == "user"), None)
            if first_user is None:
                raise InvalidSampleError("conversation has no human turn", reason=RejectReason.MALFORMED_SAMPLE)
            turns[first_user] = ("user", "<video>\n" + turns[first_user][1])

        ids: list[int] = []
        labels: list[int] = []
        objects = iter(tokens_per_object)

        def add(piece_ids: list[int], learn: bool) -> None:
            ids.extend(piece_ids)
            labels.extend(piece_ids if learn else [IGNORE_INDEX] * len(piece_ids))

        def add_content(text: str, learn: bool) -> None:
            for piece in _MARKER_PATTERN.split(text):
                if piece in VIDEO_MARKERS:
                    add([self.video_token_id] * self.video_token_count(num_video_frames), False)
                elif piece == REGION:
                    add([self.region_token_id] * next(objects), False)
                elif piece:
                    add(self._text_ids(piece), learn)

        add(self._text_ids(f"<|im_start|>system\n{system}<|im_end|>\n"), False)
        for role, value in turns:
            add(self._text_ids(f"<|im_start|>{role}\n"), False)
            learn = role == "assistant"
            add_content(value, learn)
            add([self.im_end_id], learn)
            add(self._text_ids("\n"), False)
        if add_generation_prompt:
            add(self._text_ids("<|im_start|>assistant\n"), False)

        if len(ids) > self.max_length:
            slots = [i for i, token in enumerate(ids) if token in (self.video_token_id, self.region_token_id)]
            if slots and slots[-1] >= self.max_length:
                raise InvalidSampleError(
                    f"sample of {len(ids)} tokens cuts video/region slots at max_length {self.max_length}",
                    reason=RejectReason.MALFORMED_SAMPLE,
                )
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        return ids, labels


# ---------------------------------------------------------------- Pillow's bicubic resize, exactly, in torch

_PILLOW_PRECISION_BITS = 22  # Pillow's 8-bit resampling: 32 - 8 - 2 fraction bits in int32 sums


def _pillow_bicubic(x: float) -> float:
    # Pillow's `bicubic_filter` (a = -0.5), evaluated in the same order, in double precision as its C code.
    x = -x if x < 0.0 else x
    if x < 1.0:
        return ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * -0.5
    return 0.0


@functools.lru_cache(maxsize=64)
def pillow_bicubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's 8-bit bicubic taps for one axis `in_size` -> `out_size` (its `precompute_coeffs` then
    `normalize_coeffs_8bpc`): per output position the first source index `[out]` (int64) and the integer
    coefficients `[out, ksize]` (int64, zero past the position's last source pixel), read-only and cached.
    """
    scale = float(np.float32(in_size)) / out_size  # (double)(in1 - in0) / outSize, in1 - in0 a float
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = math.ceil(support) * 2 + 1
    first = np.zeros(out_size, dtype=np.int64)
    coefficients = np.zeros((out_size, ksize), dtype=np.int64)
    inverse = 1.0 / filterscale
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C's cast
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = [_pillow_bicubic((x + xmin - center + 0.5) * inverse) for x in range(xmax)]
        total = 0.0
        for weight in weights:  # summed in order, as the C loop (not numpy's pairwise sum)
            total += weight
        for x, weight in enumerate(weights):
            weight = weight / total if total != 0.0 else weight
            scaled = weight * (1 << _PILLOW_PRECISION_BITS)
            coefficients[xx, x] = int(-0.5 + scaled) if weight < 0 else int(0.5 + scaled)
        first[xx] = xmin
    for array in (first, coefficients):
        array.flags.writeable = False
    return first, coefficients


def _resample_axis(pixels: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
    """One of Pillow's 8-bit passes along `dim` of int32 pixel values 0..255: the same integer sums, shift, clip."""
    in_size = pixels.shape[dim]
    first, coefficients = pillow_bicubic_taps(in_size, out_size)
    shape = [1] * pixels.dim()
    shape[dim] = out_size
    out_shape = list(pixels.shape)
    out_shape[dim] = out_size
    sums = torch.full(out_shape, 1 << (_PILLOW_PRECISION_BITS - 1), dtype=torch.int32, device=pixels.device)
    for tap in range(coefficients.shape[1]):
        if not coefficients[:, tap].any():
            continue
        index = torch.from_numpy(np.minimum(first + tap, in_size - 1)).to(pixels.device)
        weight = torch.from_numpy(coefficients[:, tap].astype(np.int32)).to(pixels.device).view(shape)
        sums += pixels.index_select(dim, index) * weight  # |products| < 2**31: 255 times at most ~1.1 * 2**22
    return (sums >> _PILLOW_PRECISION_BITS).clamp_(0, 255)


def one_pass_resize(height: int, width: int, size: int) -> bool:
    """Whether Pillow resizes `height x width` to `size x size` in one pass (one side is `size` already: the
    export's frames, short side `size`), the case `resample_like_pillow` reproduces."""
    return (height == size) != (width == size)


def pillow_resize(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 `[n, h, w, 3]` -> uint8 `[n, size, size, 3]`, frame by frame with Pillow's bicubic `Image.resize` (the
    release's SigLIP processor): the CPU's one implementation of the stretch."""
    from PIL import Image  # lazy: only resizing needs Pillow

    bicubic = Image.Resampling.BICUBIC
    out = np.empty((frames.shape[0], size, size, 3), dtype=np.uint8)
    for row, frame in enumerate(frames):
        out[row] = np.asarray(Image.fromarray(frame).resize((size, size), bicubic))
    return out


def resize_pixels(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 `[n, 3, h, w]` -> uint8 `[n, 3, size, size]`, bit for bit what Pillow's bicubic `Image.resize` (the
    release's SigLIP processor) gives frame by frame, on the tensor's own device.

    One implementation per device: on the CPU, Pillow itself (`pillow_resize`); on another device (the trainer's
    GPU: the resize leaves the loader's CPU), `resample_like_pillow` when one pass does it (`one_pass_resize`, the
    only frames a processor with `do_resize=False` leaves unresized), else Pillow on a CPU copy.
    """
    if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"resize_pixels expects uint8 [n, 3, h, w], got {pixels.dtype} {tuple(pixels.shape)}")
    height, width = (int(side) for side in pixels.shape[-2:])
    if (height, width) == (size, size):
        return pixels
    if pixels.device.type != "cpu" and one_pass_resize(height, width, size):
        return resample_like_pillow(pixels, size)
    frames = np.ascontiguousarray(pixels.cpu().permute(0, 2, 3, 1).numpy())
    return torch.from_numpy(pillow_resize(frames, size)).permute(0, 3, 1, 2).to(pixels.device)


def resample_like_pillow(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 `[n, 3, h, w]` with one side `size` -> `[n, 3, size, size]`: Pillow's bicubic pass along the other
    side (`pillow_bicubic_taps`: its fixed-point coefficients, integer sums, rounding, shift and clip) in torch
    integer ops on any device, so bit for bit Pillow's pixels. A resize of both sides is refused: Pillow picks
    which pass goes first (not always the horizontal one), and that choice is not reproduced here.
    """
    height, width = (int(side) for side in pixels.shape[-2:])
    if not one_pass_resize(height, width, size):
        raise ValueError(f"resample_like_pillow resizes one side only, got {height}x{width} -> {size}x{size}")
    dim = 3 if height == size else 2
    return _resample_axis(pixels.to(torch.int32), dim, size).to(torch.uint8)


# ---------------------------------------------------------------- tiny tokenizer for tests and CPU runs

_TINY_CORPUS = (
    "You are a helpful assistant.",
    "Please describe the object in the video in brief.",
    "Please describe in detail the object in the video.",
    "What is the object doing? The man is walking on the street and then he turns left.",
    "A dog runs across the green grass, chasing a red ball, then stops near a tree.",
    "The woman in a blue dress holds a cup of coffee and looks at the camera.",
    "A white car drives along the road while a cyclist passes by on the right side.",
    "Answer with the option's letter from the given choices directly. (A) left (B) right (C) up (D) down",
    "The cat sits on the sofa, licks its paw and jumps down to the floor.",
    "There are two objects: the first one is a boy, the second one is a ball.",
    "Which object moves faster? How many times does the bird flap its wings?",
    "It is small, brown, furry, and it moves slowly from the left to the right of the frame.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 32 64 100",
)


def build_tiny_tokenizer(directory: str | Path | None = None) -> Any:
    """A small byte-level BPE tokenizer trained offline, with Qwen2's chat tokens and `<region>`.

    Special tokens come first, in `model.configuration.TINY_SPECIAL_TOKENS` order (`<|endoftext|>` = 0 pad,
    `<|im_start|>` = 1, `<|im_end|>` = 2 eos, `<region>` = 3); the vocabulary is at most 512 (the tiny preset's).
    Any text encodes (byte fallback). Saved to `directory` when given; `AutoTokenizer` loads it back.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(_TINY_CORPUS) * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", REGION],
        model_max_length=2048,
    )
    if directory is not None:
        tokenizer.save_pretrained(str(directory))
    return tokenizer
