"""Point 1 of issue 24: on the same weights, the transformers SAM 2 segmenter's masks equal the sam2 package's.

A tiny SAM 2 is built in the `sam2` package (the release's code; a test-only dependency installed by
scripts/setup.sh), its weights renamed into transformers' `Sam2VideoModel` of the same tiny config and saved as a
Hugging Face folder, which `Sam2Segmenter` loads like any real one. Both then segment the same frames (a JPEG folder,
the package's video input, and the same JPEGs decoded for ours) from the same boxes; every object is tracked by the
package alone in its own state, forward then backward from its key frame. Masks must agree on every frame with
IoU >= 0.999 (they come out equal here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agents.backends.base import SegmentPrompt
from agents.backends.sam2_segmenter import Sam2Segmenter
from engine.config import Sam2Config
from engine.masks import decode_rle
from engine.synthetic import make_clip
from engine.video import read_frames

pytest.importorskip("sam2")
pytest.importorskip("hydra")

IMAGE_SIZE = 128
FRAMES = [0, 2, 3, 5, 7, 8, 10]
KEYS = [2, 7, 10]  # one key frame per object: forward and backward passes of different lengths


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    """(the sam2 package's predictor, the folder of the same weights in transformers' format)."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor
    from transformers import Sam2VideoModel

    from agents.backends.tiny_models import tiny_sam2_video_config
    from tests.agents.backends.sam2_package_weights import package_overrides, to_transformers

    torch.manual_seed(0)
    predictor = build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu",
        hydra_overrides_extra=package_overrides(IMAGE_SIZE), apply_postprocessing=True,
    ).eval()
    with torch.no_grad():  # random weights say "no object" everywhere (all masks empty): make them say "object"
        predictor.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(5.0)
    model = Sam2VideoModel(tiny_sam2_video_config(IMAGE_SIZE))
    model.load_state_dict(to_transformers(predictor.state_dict()), strict=True)
    folder = tmp_path_factory.mktemp("sam2-hf") / "tiny"
    model.save_pretrained(folder)
    return predictor, folder


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory):
    """(the synthetic clip, a JPEG folder of FRAMES, the decoded JPEGs by absolute frame)."""
    clip = make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seed=11, num_frames=12, width=128, height=96,
                     num_objects=3)
    folder = tmp_path_factory.mktemp("jpegs")
    decoded = {}
    for position, (index, frame) in enumerate(zip(FRAMES, read_frames(str(clip.path), FRAMES), strict=True)):
        path = folder / f"{position:05d}.jpg"
        Image.fromarray(frame).save(path, quality=95)
        decoded[index] = np.asarray(Image.open(path).convert("RGB"))
    return clip, folder, decoded


def _package_alone(predictor, folder: Path, key: int, box) -> dict[int, np.ndarray]:
    """One object through the package's public single-object path: its own state, propagate_in_video both ways."""
    import torch

    masks = {}
    with torch.inference_mode():
        state = predictor.init_state(video_path=str(folder), offload_video_to_cpu=True)
        local_key = FRAMES.index(key)
        predictor.add_new_points_or_box(state, frame_idx=local_key, obj_id=1, box=np.asarray(box, dtype=np.float32))
        for reverse in (False, True):
            for position, _ids, logits in predictor.propagate_in_video(state, start_frame_idx=local_key,
                                                                       reverse=reverse):
                masks[FRAMES[position]] = (logits[0, 0] > 0.0).cpu().numpy()
    return masks


def test_transformers_sam2_masks_equal_the_sam2_package_on_the_same_weights(models, jpegs, one_torch_thread) -> None:
    predictor, folder = models
    clip, jpeg_folder, decoded = jpegs
    objects = clip.ground_truth.objects
    prompts = [SegmentPrompt(key_frame=k, box=obj.boxes[k]) for k, obj in zip(KEYS, objects, strict=True)]
    segmenter = Sam2Segmenter(Sam2Config(model=str(folder), encoder_batch=4))
    ours = segmenter.segment_many(video_uri=str(clip.path), frame_indices=FRAMES, prompts=prompts, frames=decoded)
    assert segmenter.stats.frame_reads == 0 and segmenter.stats.frames_encoded == len(FRAMES)
    ious, equal, nonempty = [], 0, 0
    for masklet, prompt in zip(ours, prompts, strict=True):
        reference = _package_alone(predictor, jpeg_folder, prompt.key_frame, prompt.box)
        assert sorted(masklet.masks) == sorted(reference) == FRAMES
        for frame, expected in reference.items():
            got = decode_rle(masklet.masks[frame])
            union = np.logical_or(got, expected).sum()
            ious.append(1.0 if union == 0 else np.logical_and(got, expected).sum() / union)
            equal += int(np.array_equal(got, expected))
            nonempty += int(expected.any())
    print(f"sam2 equality: {equal}/{len(ious)} frames equal, min IoU {min(ious):.6f}, {nonempty} non-empty")
    assert nonempty >= len(ious) // 2  # the comparison is not between empty masks
    assert min(ious) >= 0.999
