"""The SAM 3 segmenter through transformers: a noun phrase -> every instance of it, tracked with stable ids.

`Sam3Segmenter.segment_phrases` runs transformers' `Sam3VideoModel` over the clip's frames with the phrases as text
prompts: on every frame its detector finds the instances of each phrase, its tracker (SAM 2's memory tracker)
follows them, and new detections that match no tracked instance start new ones, so an instance that enters after
the first frame gets its own id from the frame it appears on. Each instance comes back as a `PhraseInstance`
(phrase, id, masks from its first frame on, detection score). Instances the model suppresses or removes (its
hot-start heuristics) are left out. Grounding DINO is not needed on this path.

`segment_many` (boxes or points on key frames, the `Segmenter` interface used by `infer --box` and the app) runs
SAM 3's tracker alone, on the detector's image features, exactly as the SAM 2 segmenter tracks
(`agents.backends.sam2_segmenter.VideoTracker`: features once per frame in batches, one session per object).

Weights are a Hugging Face folder (`hf download facebook/sam3 --local-dir models/sam3`; gated) or, with
`random_weights: true` (tests and demos only), the tiny random model of `agents.backends.tiny_models`.
Frames are prepared here (Pillow bilinear resize to the model's square, mean and std 0.5, what transformers' SAM 3
processors do) and phrases tokenized with the folder's tokenizer (32 tokens, padded): transformers'
`Sam3VideoProcessor` needs torchvision, which the CPU environment must not have. The text path tracks frame by
frame (the model's own loop runs its image encoder one frame at a time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agents.backends.base import PhraseInstance, normalize_phrase
from agents.backends.sam2_segmenter import (
    FramePrep,
    Sam2Segmenter,
    VideoTracker,
    load_pretrained,
    prepare_frames,
    thin_frames,
    to_rle,
    video_masks,
)
from engine.config import Sam3Config
from engine.masks import bbox
from engine.types import Masklet

SAM3_MEAN = (0.5, 0.5, 0.5)
SAM3_STD = (0.5, 0.5, 0.5)
TEXT_TOKENS = 32  # what the model's text encoder is given per phrase (transformers' processor pads to 32)
RANDOM_SAM3_SIZE = 112  # a multiple of 14 x 4 (SAM 3's patch and its largest feature upscale)


class Sam3Segmenter(Sam2Segmenter):
    """`Segmenter` and `PhraseSegmenter` over transformers' SAM 3 video model; see the module docstring."""

    kind = "sam3"

    def __init__(self, config: Sam3Config) -> None:
        super().__init__(config)  # type: ignore[arg-type]  # the same fields; only the model differs
        size = config.image_size or RANDOM_SAM3_SIZE
        self.model = config.model or f"sam3-tiny-random-{size}px"
        self._sam3: Any = None
        self._tokenizer: Any = None

    def segment_phrases(
        self,
        *,
        video_uri: str,
        frame_indices: Sequence[int],
        phrases: Sequence[str],
        frames: Mapping[int, np.ndarray] | None = None,
    ) -> dict[str, list[PhraseInstance]]:
        """Every instance of every phrase on the frames of `frame_indices` (thinned to `max_frames`), by phrase,
        in id order; each instance's masks start on the frame it was first found on."""
        import torch
        from transformers import Sam3VideoInferenceSession

        wanted = list(dict.fromkeys(normalize_phrase(p) for p in phrases if p.strip()))
        found: dict[str, list[PhraseInstance]] = {phrase: [] for phrase in wanted}
        if not wanted:
            return found
        indices = thin_frames(frame_indices, [], self.config.max_frames)
        images = self._frames(video_uri, indices, frames or {})
        height, width = images[0].shape[:2]
        masks: dict[int, dict[int, np.ndarray]] = {}  # instance id -> local frame -> mask
        scores: dict[int, float] = {}
        with self._lock, torch.inference_mode():
            tracker = self._ensure_loaded()
            model = self._sam3
            pixels = prepare_frames(images, tracker.prep).to(self.config.device)
            device = self.config.device
            session = Sam3VideoInferenceSession(
                video=pixels, video_height=height, video_width=width, inference_device=device,
                inference_state_device=device, video_storage_device=device, dtype=torch.float32,
            )
            prompt_ids = {}
            for phrase in wanted:
                prompt_id = session.add_prompt(phrase)
                tokens = self._tokenizer(phrase, padding="max_length", max_length=TEXT_TOKENS, truncation=True,
                                         return_tensors="pt").to(device)
                session.prompt_input_ids[prompt_id] = tokens.input_ids
                session.prompt_attention_masks[prompt_id] = tokens.attention_mask
                prompt_ids[prompt_id] = phrase
            for output in model.propagate_in_video_iterator(session, start_frame_idx=0):
                hidden = set(output.suppressed_obj_ids or ()) | set(session.hotstart_removed_obj_ids)
                shown = [obj_id for obj_id in sorted(output.obj_id_to_mask) if obj_id not in hidden]
                if not shown:
                    continue
                low_res = torch.stack([output.obj_id_to_mask[obj_id] for obj_id in shown])  # [N, 1, h, w]
                for obj_id, mask in zip(shown, video_masks(low_res, height, width), strict=True):
                    if mask.any():
                        masks.setdefault(obj_id, {})[int(output.frame_idx)] = mask
                        scores[obj_id] = max(scores.get(obj_id, 0.0), float(output.obj_id_to_score.get(obj_id, 0.0)))
            owner = {obj_id: prompt_ids[session.obj_id_to_prompt_id[obj_id]] for obj_id in masks}
        self._count(calls=1, objects=len(masks), states_started=1, propagations=1, frames_encoded=len(indices),
                    encoder_batches=len(indices))
        for obj_id in sorted(masks):
            local = masks[obj_id]
            first = min(local)
            masklet = Masklet(
                masks={indices[frame]: to_rle(mask) for frame, mask in sorted(local.items())},
                key_frame=indices[first],
                box=tuple(float(v) for v in bbox(local[first])),
                score=scores[obj_id],
            )
            instance = PhraseInstance(phrase=owner[obj_id], instance_id=obj_id, masklet=masklet,
                                      first_frame=indices[first], score=scores[obj_id])
            found[owner[obj_id]].append(instance)
        return found

    def _ensure_loaded(self) -> VideoTracker:
        if self._tracker is None:
            import torch
            from transformers import AutoTokenizer, Sam3TrackerVideoInferenceSession, Sam3VideoModel
            from transformers.models.sam3_video import modeling_sam3_video

            from agents.backends.tiny_models import build_tiny_sam3_video
            from engine.errors import ConfigError

            if modeling_sam3_video.cv_utils_kernel is None:
                # transformers would fetch a post-processing kernel from the hub on first use: nothing may be
                # downloaded at run time, so mark it as unavailable (NMS and hole filling are then skipped).
                modeling_sam3_video.cv_utils_kernel = False

            size = self.config.image_size or RANDOM_SAM3_SIZE
            source = self._source(lambda folder: build_tiny_sam3_video(folder, image_size=size))
            model = load_pretrained(Sam3VideoModel, source, self.kind).to(self.config.device).eval()
            threshold = getattr(self.config, "score_threshold", None)
            if threshold is not None:
                model.score_threshold_detection = float(threshold)
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(source)
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(f"sam3 cannot load the tokenizer of {source!r}: {exc}") from exc
            device = self.config.device

            def new_session(pixels: Any, height: int, width: int) -> Any:
                return Sam3TrackerVideoInferenceSession(
                    video=pixels, video_height=height, video_width=width, inference_device=device,
                    inference_state_device=device, video_storage_device=device,
                    max_vision_features_cache_size=int(pixels.shape[0]), dtype=torch.float32,
                )

            def encode(batch: Any) -> tuple[list[Any], list[Any]]:
                feats, pos = model.get_vision_features_for_tracker(model.detector_model.get_vision_features(batch))
                return list(feats), list(pos)

            prep = FramePrep(size=int(model.config.image_size), resample="bilinear", mean=SAM3_MEAN, std=SAM3_STD)
            self._sam3 = model
            self._tracker = VideoTracker(tracker=model.tracker_model, encode=encode, new_session=new_session,
                                         prep=prep, encoder_batch=self.config.encoder_batch)
        return self._tracker
