"""The segmenter: the `sam2` package's video predictor turns a box on a key frame into a masklet, both ways in time.

The predictor is built once per segmenter with `sam2.build_sam.build_sam2_video_predictor` from
`config.config_name` (a config inside the sam2 package), `config.checkpoint` (None builds random weights: for
tests only), `config.device`, and `++model.image_size=N` when `config.image_size` is set (512 makes CPU runs
fast). Hole-filling post-processing needs SAM 2's CUDA extension, so it is only asked for on CUDA devices.
For each call the requested absolute frames (at most `config.max_frames`, uniformly thinned, the key frame
always kept) are read with `engine.video.read_frames` and written as a numbered JPEG folder, the input the
predictor's `init_state` accepts besides an mp4 path, whose frame numbers would not be ours. The box is
added on the key frame, the object is propagated forward and then backward (`reverse=True`) from it, and
the masks (logits > 0 at video resolution) come back as COCO RLE keyed by absolute frame index.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import Sam2Config
from engine.errors import ConfigError
from engine.masks import encode_rle
from engine.types import Masklet, RleMask
from engine.video import read_frames

log = logging.getLogger(__name__)

_OBJECT_ID = 1


class Sam2Segmenter:
    """`Segmenter` over SAM 2's video predictor; see the module docstring."""

    kind = "sam2"

    def __init__(self, config: Sam2Config) -> None:
        if config.max_frames < 1:
            raise ConfigError("sam2: max_frames must be at least 1")
        self.config = config
        weights = Path(config.checkpoint).name if config.checkpoint else "random-weights"
        self.model = f"{Path(config.config_name).stem}:{weights}"
        self._lock = threading.Lock()
        self._predictor: Any = None

    def __repr__(self) -> str:
        device, size = self.config.device, self.config.image_size
        return f"Sam2Segmenter(model={self.model!r}, device={device!r}, image_size={size})"

    def segment(
        self,
        *,
        video_uri: str,
        frame_indices: Sequence[int],
        key_frame: int,
        box: tuple[float, float, float, float],
    ) -> Masklet:
        import torch
        from PIL import Image

        indices = thin_frames(frame_indices, key_frame, self.config.max_frames)
        local_key = indices.index(key_frame)
        frames = read_frames(video_uri, indices)
        with self._lock:  # one propagation at a time per predictor: its state and the device are shared
            predictor = self._ensure_built()
            with tempfile.TemporaryDirectory(prefix="sam2-frames-") as folder:
                for position, frame in enumerate(frames):
                    Image.fromarray(frame).save(Path(folder) / f"{position:05d}.jpg", quality=95)
                with torch.inference_mode():
                    state = predictor.init_state(video_path=folder, offload_video_to_cpu=True)
                    predictor.add_new_points_or_box(
                        state, frame_idx=local_key, obj_id=_OBJECT_ID, box=np.asarray(box, dtype=np.float32)
                    )
                    masks: dict[int, RleMask] = {}
                    for reverse in (False, True):
                        for position, _ids, logits in predictor.propagate_in_video(
                            state, start_frame_idx=local_key, reverse=reverse
                        ):
                            mask = (logits[0, 0] > 0.0).cpu().numpy()
                            masks[indices[position]] = RleMask.from_coco(encode_rle(mask))
                    predictor.reset_state(state)
        return Masklet(masks=dict(sorted(masks.items())), key_frame=key_frame, box=tuple(box), score=1.0)

    def _ensure_built(self) -> Any:
        if self._predictor is None:
            from sam2.build_sam import build_sam2_video_predictor

            overrides = [f"++model.image_size={self.config.image_size}"] if self.config.image_size else []
            if self.config.checkpoint is None:
                log.warning("sam2 segmenter built with RANDOM weights (checkpoint: null): its masks are meaningless")
            try:
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


def thin_frames(frame_indices: Sequence[int], key_frame: int, max_frames: int) -> list[int]:
    """Sorted unique frames with the key frame, uniformly thinned to at most `max_frames` (the key frame kept)."""
    frames = sorted({int(i) for i in frame_indices} | {int(key_frame)})
    if len(frames) <= max_frames:
        return frames
    others = [f for f in frames if f != key_frame]
    keep = max_frames - 1
    picked = [others[round(i * (len(others) - 1) / (keep - 1))] for i in range(keep)] if keep > 1 else others[:keep]
    return sorted(set(picked) | {int(key_frame)})
