"""The segmenter: the `sam2` package's video predictor turns boxes on key frames into masklets, both ways in time.

The predictor is built once per segmenter with `sam2.build_sam.build_sam2_video_predictor` from
`config.config_name` (a config inside the sam2 package), `config.checkpoint` (or random weights when the
config asks for them with `random_weights: true`: tests and demos only), `config.device`, and
`++model.image_size=N` when `config.image_size` is set (512 makes CPU runs fast). Hole-filling
post-processing needs SAM 2's CUDA extension, so it is only asked for on CUDA devices.

`segment_many` segments all objects of one clip together. The requested absolute frames (at most
`config.max_frames`, uniformly thinned, every key frame kept) are taken from the frames the caller passed
in, and only missing ones are read (`agents.frames.read_video_frames`, through the stage's frame cache when
one is active); they are written once as a numbered JPEG folder, the input the predictor's `init_state`
accepts besides an mp4 path (whose frame numbers would not be ours; sam2 1.1.0 takes no in-memory frames).
One inference state is started for the call and every object's box is added on its own key frame under its
own `obj_id`. One propagation then runs through the clip, frame by frame, forward and then backward: on
each frame every object that is being tracked there is stepped (so the image encoder runs once per frame
and pass for all objects, the dominant cost), and each object is tracked exactly as `propagate_in_video`
tracks it alone: forward from its key frame to the last frame, then backward from its key frame to the
first. SAM 2 keeps each object's memory, pointers and outputs in its own slice of the state, so an object's
masks do not depend on the other objects of the call (SAM 2's own multi-object `propagate_in_video` starts
every object at the earliest prompted frame, which makes an object's masks depend on the others' key
frames). The loop uses the predictor's per-frame step (`_run_single_frame_inference`) the way
`propagate_in_video` does in sam2 1.1.0, the pinned version. Masks (logits > 0 at video resolution) come
back as COCO RLE keyed by absolute frame index. `stats` counts calls, frame reads and states started.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.backends.base import SegmenterStats, SegmentPrompt
from engine.config import Sam2Config
from engine.errors import ConfigError
from engine.masks import encode_rle
from engine.types import Masklet, RleMask

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_SEED = 0  # torch seed of the model's initialisation (what random weights come out as)


class Sam2Segmenter:
    """`Segmenter` over SAM 2's video predictor; see the module docstring."""

    kind = "sam2"

    def __init__(self, config: Sam2Config) -> None:
        if config.max_frames < 1:
            raise ConfigError("sam2: max_frames must be at least 1")
        if config.checkpoint is None and not config.random_weights:
            raise ConfigError("sam2: no checkpoint; set one, or ask for random weights with random_weights: true")
        self.config = config
        weights = Path(config.checkpoint).name if config.checkpoint else "random-weights"
        self.model = f"{Path(config.config_name).stem}:{weights}"
        self._lock = threading.Lock()
        self._predictor: Any = None
        self._stats = SegmenterStats()
        self._stats_lock = threading.Lock()

    def __repr__(self) -> str:
        device, size = self.config.device, self.config.image_size
        return f"Sam2Segmenter(model={self.model!r}, device={device!r}, image_size={size})"

    @property
    def stats(self) -> SegmenterStats:
        """Calls, objects, frame reads and SAM 2 states so far (a snapshot)."""
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
        """One masklet per prompt, in order: one state, one propagation for all of them (module docstring)."""
        if not prompts:
            return []
        import torch
        from PIL import Image

        keys = [int(prompt.key_frame) for prompt in prompts]
        indices = thin_frames(frame_indices, keys, self.config.max_frames)
        pixels = self._frames(video_uri, indices, frames or {})
        local_keys = [indices.index(key) for key in keys]
        with self._lock:  # one propagation at a time per predictor: its state and the device are shared
            predictor = self._ensure_built()
            with tempfile.TemporaryDirectory(prefix="sam2-frames-") as folder:
                for position, frame in enumerate(pixels):
                    Image.fromarray(np.ascontiguousarray(frame)).save(Path(folder) / f"{position:05d}.jpg", quality=95)
                with torch.inference_mode():
                    state = predictor.init_state(video_path=folder, offload_video_to_cpu=True)
                    self._count(calls=1, objects=len(prompts), states_started=1, propagations=1)
                    try:
                        for obj_id, (prompt, local_key) in enumerate(zip(prompts, local_keys, strict=True), start=1):
                            box = np.asarray(prompt.box, dtype=np.float32)
                            predictor.add_new_points_or_box(state, frame_idx=local_key, obj_id=obj_id, box=box)
                        per_object: list[dict[int, RleMask]] = [{} for _ in prompts]
                        for n, position, scores in propagate_each_object(predictor, state, local_keys):
                            mask = (scores > 0.0).cpu().numpy()
                            per_object[n][indices[position]] = RleMask.from_coco(encode_rle(mask))
                    finally:
                        predictor.reset_state(state)
        return [
            Masklet(masks=dict(sorted(masks.items())), key_frame=key, box=tuple(prompt.box), score=1.0)
            for prompt, key, masks in zip(prompts, keys, per_object, strict=True)
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

    def _ensure_built(self) -> Any:
        if self._predictor is None:
            import torch
            from sam2.build_sam import build_sam2_video_predictor

            overrides = [f"++model.image_size={self.config.image_size}"] if self.config.image_size else []
            if self.config.random_weights:
                log.warning("sam2 built with RANDOM weights (random_weights: true): its masks are meaningless")
            try:
                # Random weights are drawn from a fixed seed (the global RNG left as it was), so they are the same
                # in every process: a random-weight run is reproducible.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(RANDOM_WEIGHTS_SEED)
                    self._predictor = build_sam2_video_predictor(
                        self.config.config_name,
                        ckpt_path=self.config.checkpoint,
                        device=self.config.device,
                        hydra_overrides_extra=overrides,
                        apply_postprocessing=self.config.device.startswith("cuda"),
                    )
            except Exception as exc:  # hydra / torch raise many kinds; all mean the config cannot be used
                message = f"sam2 cannot build {self.config.config_name!r}: {type(exc).__name__}: {exc}"
                raise ConfigError(message) from exc
        return self._predictor


def propagate_each_object(
    predictor: Any, state: dict[str, Any], local_keys: Sequence[int]
) -> Iterator[tuple[int, int, Any]]:
    """Track every object of `state` (object `n` is obj_id `n + 1`, prompted on state-local frame `local_keys[n]`)
    forward from its key frame to the end, then backward from it to the start, as `propagate_in_video` tracks
    one object alone, but frame-major, so that each frame's image features serve all objects of the pass.

    Yields `(n, frame, scores)`: object position, state-local frame and the mask logits `[h, w]` at video
    resolution (a frame tracked in both passes, the key frame, is yielded twice with the same scores). Mirrors
    the loop body of sam2 1.1.0's `propagate_in_video` per object; the predictor option
    `clear_non_cond_mem_around_input` (off in every config this project builds) is refused.
    """
    if getattr(predictor, "clear_non_cond_mem_around_input", False):
        raise ConfigError("sam2: clear_non_cond_mem_around_input is not supported by the multi-object propagation")
    predictor.propagate_in_video_preflight(state)  # memory of the prompted frames, as propagate_in_video does first
    num_frames = int(state["num_frames"])
    slots = [state["obj_id_to_idx"][obj_id] for obj_id in range(1, len(local_keys) + 1)]
    for reverse in (False, True):
        order = range(num_frames - 1, -1, -1) if reverse else range(num_frames)
        for frame in order:
            for n, (slot, key) in enumerate(zip(slots, local_keys, strict=True)):
                # Forward: the key frame to the end. Backward: the key frame to 0, skipped when the key is frame 0.
                if (frame > key or key == 0) if reverse else frame < key:
                    continue
                output_dict = state["output_dict_per_obj"][slot]
                if frame in output_dict["cond_frame_outputs"]:
                    scores = output_dict["cond_frame_outputs"][frame]["pred_masks"].to(state["device"])
                else:
                    out, scores = predictor._run_single_frame_inference(
                        inference_state=state,
                        output_dict=output_dict,
                        frame_idx=frame,
                        batch_size=1,
                        is_init_cond_frame=False,
                        point_inputs=None,
                        mask_inputs=None,
                        reverse=reverse,
                        run_mem_encoder=True,
                    )
                    output_dict["non_cond_frame_outputs"][frame] = out
                state["frames_tracked_per_obj"][slot][frame] = {"reverse": reverse}
                _, video_scores = predictor._get_orig_video_res_output(state, scores)
                yield n, frame, video_scores[0, 0]


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
