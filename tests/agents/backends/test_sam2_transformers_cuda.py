"""SAM 2 through transformers (`Sam2VideoModel`, the library path of the SAM 2 segmenter) on the GPU check's device.

A small random-weight SAM 2 video model (a Hiera backbone of five blocks, 128 px) tracks one box-prompted object
through a short clip, propagating forward from the prompted frame, once on the device in float32 and once on the
CPU; the masks must agree. Inputs are built the way `Sam2VideoProcessor` builds them (frames already at the model's
size, the box as two labelled corner points), so neither the processor nor torchvision (which the processor needs)
is imported: the lent GPU machine may have neither. `gpu`-marked: `scripts/gpu_check.sh` runs it (--cpu-dry-run:
on the CPU).
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]

SIZE = 128
FRAMES = 4


def _tiny_sam2():
    import torch
    from transformers import Sam2VideoConfig, Sam2VideoModel

    grid = SIZE // 16
    config = Sam2VideoConfig(
        image_size=SIZE,
        vision_config={
            "model_type": "sam2_vision_model",
            "backbone_config": {"model_type": "sam2_hiera_det_model", "image_size": [SIZE, SIZE],
                                "blocks_per_stage": [1, 1, 2, 1], "global_attention_blocks": [3]},
            "backbone_feature_sizes": [[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]],
        },
        prompt_encoder_config={"image_size": SIZE},
        memory_attention_rope_feat_sizes=[grid, grid],
        memory_attention_num_layers=2,
    )
    torch.manual_seed(0)
    return Sam2VideoModel(config).eval()


def _video():
    import torch

    # A bright square moving right on a dark textured background, normalised as SAM 2's processor does.
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(FRAMES, 3, SIZE, SIZE, generator=generator) * 0.2
    for t in range(FRAMES):
        video[t, :, 48:80, 20 + 8 * t : 52 + 8 * t] = 0.9
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (video - mean) / std


def _track(model, video, device) -> list:
    import torch
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    model = model.to(device)
    session = Sam2VideoInferenceSession(video=video, video_height=SIZE, video_width=SIZE, inference_device=device,
                                        inference_state_device=device, video_storage_device=device,
                                        dtype=torch.float32)
    obj_idx = session.obj_id_to_idx(1)
    # Sam2VideoProcessor.process_new_points_or_boxes_for_video_frame: a box is its two corners labelled 2 and 3.
    box = torch.tensor([[[[20.0, 48.0], [52.0, 80.0]]]])
    session.add_point_inputs(obj_idx, 0, {"point_coords": box, "point_labels": torch.tensor([[[2, 3]]])})
    session.remove_mask_inputs(obj_idx, 0)
    session.obj_with_new_inputs = [1]
    masks = []
    # float32 means float32 on the GPU too: no TF32 in cuDNN convolutions or matmuls (on by default for convolutions).
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            model(inference_session=session, frame_idx=0)
            for output in model.propagate_in_video_iterator(session, start_frame_idx=0):
                masks.append(output.pred_masks.float().cpu())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return masks


def test_sam2_video_tracks_a_box_on_the_device_as_on_the_cpu(gpu_device) -> None:
    import torch

    model, video = _tiny_sam2(), _video()
    reference = _track(model, video, torch.device("cpu"))
    ours = _track(model, video, gpu_device)
    assert len(ours) == len(reference) == FRAMES
    for frame, (mask, expected) in enumerate(zip(ours, reference, strict=True)):
        assert torch.isfinite(mask).all(), frame
        # Same random weights and inputs in float32: logits agree to float32 rounding of different kernels, and the
        # binary masks (logit > 0) agree except on a sliver of near-zero logits.
        assert torch.allclose(mask, expected, atol=1e-2, rtol=1e-3), (frame, (mask - expected).abs().max())
        agree = ((mask > 0) == (expected > 0)).float().mean()
        assert agree >= 0.999, (frame, float(agree))
