"""The SAM 2 segmenter through transformers: boxes or points on key frames -> masklets, both ways in time.

`Sam2Segmenter` runs transformers' `Sam2VideoModel` (no `sam2` package, no CUDA extension build). Weights are a
Hugging Face folder saved by transformers (`config.model`: `hf download facebook/sam2.1-hiera-large --local-dir
...`; tiny, small and base-plus exist too), or, when the config asks for `random_weights: true` (tests and demos
only), the tiny random model of `agents.backends.tiny_models` built into a temporary folder.

Frames are prepared here, as the sam2 release prepares them (Pillow's bicubic resize to the model's square,
ImageNet mean and std): transformers' `Sam2VideoProcessor` would need torchvision, which the CPU environment
must not have. Prompt coordinates are scaled from frame pixels to that square (what the processor does).

`segment_many` segments all objects of one clip together. The requested absolute frames (at most
`config.max_frames`, uniformly thinned, every key frame kept) are taken from the frames the caller passed in,
and only missing ones are read (`agents.frames.read_video_frames`, through the stage's frame cache when one is
active). The image encoder runs once per frame for all objects, `config.encoder_batch` frames at a time (the
dominant cost; `benchmarks/segmenter_throughput.py` measures it against the per-frame loop), and the features
are put in each object's inference session cache. Each object then gets its own session and is tracked exactly
as SAM 2 tracks one object alone (`propagate_in_video_iterator`): forward from its key frame to the last frame,
then backward from it to the first, so an object's masks never depend on the other objects of the call. Masks
(logits > 0, upsampled bilinearly to the video's size as the release does) come back as COCO RLE keyed by
absolute frame index. On the same weights the masks equal the sam2 package's (tests/agents/backends/
test_sam2_equality.py). `stats` counts calls, frame reads, encoded frames and encoder batches.

`VideoTracker` is the model-independent part (frames, batched features, per-object sessions, masks), shared with
the SAM 3 segmenter, whose tracker has the same session interface.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.backends.base import SegmenterStats, SegmentPrompt
from engine.config import Sam2Config
from engine.errors import ConfigError
from engine.masks import encode_rle
from engine.types import Masklet, RleMask

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_IMAGE_SIZE = 128  # input size of the tiny random model when the config names none
_BOX_LABELS = (2, 3)  # SAM's point labels of a box's top-left and bottom-right corners


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FramePrep:
    """How frames become model input: the square side, the Pillow resampling filter, mean and std."""

    size: int
    resample: str = "bicubic"  # "bicubic" (the sam2 release) or "bilinear" (SAM 3)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def prepare_frames(frames: Sequence[np.ndarray], prep: FramePrep) -> Any:
    """RGB uint8 frames -> a float tensor `[T, 3, size, size]`, resized with Pillow and normalised."""
    import torch
    from PIL import Image

    resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[prep.resample]
    resized = np.stack([
        np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize((prep.size, prep.size), resample))
        for frame in frames
    ])
    pixels = torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    return (pixels - mean) / std


class VideoTracker:
    """Per-object SAM tracking over features computed once per frame (module docstring).

    `encode(batch) -> (feats, pos)`: the image features of a pixel batch, each a list of `[HW, B, C]` levels (what
    the tracker's session cache holds); `new_session(pixels, height, width)`: an empty inference session over
    the prepared frames; `tracker`: the model whose `propagate_in_video_iterator` tracks one session.
    """

    def __init__(
        self,
        *,
        tracker: Any,
        encode: Callable[[Any], tuple[list[Any], list[Any]]],
        new_session: Callable[[Any, int, int], Any],
        prep: FramePrep,
        encoder_batch: int,
    ) -> None:
        self.tracker = tracker
        self.encode = encode
        self.new_session = new_session
        self.prep = prep
        self.encoder_batch = encoder_batch

    def features(self, pixels: Any) -> tuple[list[dict[str, Any]], int]:
        """Per frame `{"vision_feats", "vision_pos_embeds"}`, encoded `encoder_batch` frames at a time; and the
        number of encoder batches run."""
        per_frame: list[dict[str, Any]] = []
        batches = 0
        for start in range(0, int(pixels.shape[0]), self.encoder_batch):
            feats, pos = self.encode(pixels[start : start + self.encoder_batch])
            batches += 1
            for i in range(int(feats[0].shape[1])):
                per_frame.append({
                    "vision_feats": [level[:, i : i + 1] for level in feats],
                    "vision_pos_embeds": [level[:, i : i + 1] for level in pos],
                })
        return per_frame, batches

    def track(
        self,
        pixels: Any,
        features: Sequence[dict[str, Any]],
        prompts: Sequence[tuple[int, SegmentPrompt]],
        *,
        height: int,
        width: int,
    ) -> list[dict[int, np.ndarray]]:
        """Per prompt `(local key frame, prompt)`: boolean masks `[height, width]` by local frame index."""
        import torch

        results = []
        for local_key, prompt in prompts:
            session = self.new_session(pixels, height, width)
            for frame, cached in enumerate(features):
                session.cache.cache_vision_features(frame, cached)
            coords, labels = prompt_points(prompt, height=height, width=width, size=self.prep.size)
            obj_idx = session.obj_id_to_idx(1)
            session.add_point_inputs(obj_idx, local_key, {
                "point_coords": torch.tensor(coords, dtype=torch.float32).view(1, 1, -1, 2),
                "point_labels": torch.tensor(labels, dtype=torch.int32).view(1, 1, -1),
            })
            session.obj_with_new_inputs = [1]
            masks: dict[int, np.ndarray] = {}
            for reverse in (False, True):
                for output in self.tracker.propagate_in_video_iterator(
                    session, start_frame_idx=local_key, reverse=reverse
                ):
                    masks[int(output.frame_idx)] = video_masks(output.pred_masks, height, width)[0]
            results.append(masks)
        return results


def prompt_points(
    prompt: SegmentPrompt, *, height: int, width: int, size: int
) -> tuple[list[list[float]], list[int]]:
    """The prompt as SAM point inputs in the model's square: a box's two corners (labels 2, 3) first, then the
    points (label 1 inside, 0 outside)."""
    scale_x, scale_y = size / width, size / height
    coords: list[list[float]] = []
    labels: list[int] = []
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        coords += [[x0 * scale_x, y0 * scale_y], [x1 * scale_x, y1 * scale_y]]
        labels += list(_BOX_LABELS)
    for x, y, label in prompt.points:
        coords.append([x * scale_x, y * scale_y])
        labels.append(int(label))
    return coords, labels


def video_masks(low_res: Any, height: int, width: int) -> np.ndarray:
    """Mask logits `[N, 1, h, w]` -> boolean masks `[N, height, width]` (bilinear, align_corners=False, > 0)."""
    import torch.nn.functional as F

    scores = F.interpolate(low_res.float(), size=(height, width), mode="bilinear", align_corners=False)
    return (scores[:, 0] > 0.0).cpu().numpy()


class Sam2Segmenter:
    """`Segmenter` over transformers' SAM 2 video model; see the module docstring."""

    kind = "sam2"

    def __init__(self, config: Sam2Config) -> None:
        if not config.model and not config.random_weights:
            raise ConfigError("sam2: no model; set one, or ask for random weights with random_weights: true")
        self.config = config
        size = config.image_size or RANDOM_IMAGE_SIZE
        self.model = config.model or f"sam2-tiny-random-{size}px"
        self._lock = threading.Lock()
        self._tracker: VideoTracker | None = None
        self._random_folder: tempfile.TemporaryDirectory[str] | None = None
        self._stats = SegmenterStats()
        self._stats_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, device={self.config.device!r})"

    @property
    def stats(self) -> SegmenterStats:
        """Calls, objects, frame reads, encoded frames and sessions so far (a snapshot)."""
        return self._stats

    def segment(
        self,
        *,
        video_uri: str,
        frame_indices: Sequence[int],
        key_frame: int,
        box: tuple[float, float, float, float],
    ) -> Masklet:
        """One object: `segment_many` with one prompt (frames are read here)."""
        prompt = SegmentPrompt(key_frame=key_frame, box=box)
        [masklet] = self.segment_many(video_uri=video_uri, frame_indices=frame_indices, prompts=[prompt])
        return masklet

    def segment_many(
        self,
        *,
        video_uri: str,
        frame_indices: Sequence[int],
        prompts: Sequence[SegmentPrompt],
        frames: Mapping[int, np.ndarray] | None = None,
    ) -> list[Masklet]:
        """One masklet per prompt, in order: features once per frame, one session per object (module docstring)."""
        if not prompts:
            return []
        import torch

        keys = [int(prompt.key_frame) for prompt in prompts]
        indices = thin_frames(frame_indices, keys, self.config.max_frames)
        images = self._frames(video_uri, indices, frames or {})
        height, width = images[0].shape[:2]
        with self._lock, torch.inference_mode():  # one clip at a time per model: the device is shared
            tracker = self._ensure_loaded()
            pixels = prepare_frames(images, tracker.prep).to(self.config.device)
            features, batches = tracker.features(pixels)
            local = [(indices.index(key), prompt) for key, prompt in zip(keys, prompts, strict=True)]
            tracked = tracker.track(pixels, features, local, height=height, width=width)
        self._count(calls=1, objects=len(prompts), states_started=len(prompts), propagations=len(prompts),
                    frames_encoded=len(indices), encoder_batches=batches)
        return [
            Masklet(
                masks={indices[position]: to_rle(mask) for position, mask in sorted(masks.items())},
                key_frame=key,
                box=tuple(prompt.box) if prompt.box is not None else None,
                score=1.0,
            )
            for prompt, key, masks in zip(prompts, keys, tracked, strict=True)
        ]

    def _frames(self, video_uri: str, indices: Sequence[int], given: Mapping[int, np.ndarray]) -> list[np.ndarray]:
        """The frames at `indices`: those the caller passed in, the rest read once."""
        missing = [index for index in indices if index not in given]
        read: dict[int, np.ndarray] = {}
        if missing:
            from agents.frames import read_video_frames

            read = dict(zip(missing, read_video_frames(video_uri, missing), strict=True))
            self._count(frame_reads=1, frames_read=len(missing))
        return [given[index] if index in given else read[index] for index in indices]

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            stats = self._stats
            self._stats = dataclasses.replace(
                stats, **{name: getattr(stats, name) + value for name, value in increments.items()}
            )

    def _source(self, build_random: Callable[[Path], Path]) -> str:
        """The model folder: the config's, or a tiny random model built into a temporary folder (kept while this
        segmenter lives)."""
        if self.config.model:
            return self.config.model
        log.warning("%s built with RANDOM weights (random_weights: true): its masks are meaningless", self.kind)
        self._random_folder = tempfile.TemporaryDirectory(prefix=f"{self.kind}-random-")
        return str(build_random(Path(self._random_folder.name) / "model"))

    def _ensure_loaded(self) -> VideoTracker:
        if self._tracker is None:
            import torch
            from transformers import Sam2VideoInferenceSession, Sam2VideoModel

            from agents.backends.tiny_models import build_tiny_sam2_video

            size = self.config.image_size or RANDOM_IMAGE_SIZE
            source = self._source(lambda folder: build_tiny_sam2_video(folder, image_size=size))
            model = load_pretrained(Sam2VideoModel, source, self.kind).to(self.config.device).eval()
            device = self.config.device

            def new_session(pixels: Any, height: int, width: int) -> Any:
                return Sam2VideoInferenceSession(
                    video=pixels, video_height=height, video_width=width, inference_device=device,
                    inference_state_device=device, video_storage_device=device,
                    max_vision_features_cache_size=int(pixels.shape[0]), dtype=torch.float32,
                )

            def encode(batch: Any) -> tuple[list[Any], list[Any]]:
                output = model.get_image_features(batch, return_dict=True)
                return list(output.fpn_hidden_states), list(output.fpn_position_encoding)

            self._tracker = VideoTracker(
                tracker=model, encode=encode, new_session=new_session,
                prep=FramePrep(size=int(model.config.image_size)), encoder_batch=self.config.encoder_batch,
            )
        return self._tracker


def load_pretrained(model_class: Any, source: str, kind: str) -> Any:
    """`model_class.from_pretrained(source)`; a folder that is not such a model is a `ConfigError`."""
    try:
        return model_class.from_pretrained(source)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{kind} cannot load {source!r}: {type(exc).__name__}: {exc}") from exc


def to_rle(mask: np.ndarray) -> RleMask:
    """A boolean mask as COCO RLE."""
    return RleMask.from_coco(encode_rle(mask))


def thin_frames(frame_indices: Sequence[int], key_frame: int | Sequence[int], max_frames: int) -> list[int]:
    """Sorted unique frames with the key frame(s), uniformly thinned to at most `max_frames` (key frames always kept,
    even when they alone are more than `max_frames`)."""
    keys = {int(key_frame)} if isinstance(key_frame, int) else {int(key) for key in key_frame}
    frames = sorted({int(i) for i in frame_indices} | keys)
    if len(frames) <= max_frames:
        return frames
    others = [f for f in frames if f not in keys]
    keep = max(0, max_frames - len(keys))
    picked = [others[round(i * (len(others) - 1) / (keep - 1))] for i in range(keep)] if keep > 1 else others[:keep]
    return sorted(set(picked) | keys)
