"""The model on the GPU check's device: half-precision forward and generation against CPU float32, the attention
kernels, and the device-side frame stretch against Pillow.

`gpu`-marked (deselected by default): `scripts/gpu_check.sh` runs them on CUDA, and its `--cpu-dry-run` runs the
same code on the CPU (`VIDEOREFER_GPU_CHECK_DEVICE=cpu`) at the same tiny sizes. The reference is always the
tiny random model in float32 on the CPU. Tolerances, stated once here: logits in float16 within 1% and in bfloat16
within 4% of the reference's largest logit magnitude (float16 keeps 11 significant bits, bfloat16 8); a greedy
token chosen in half precision must be within that tolerance of the reference's best logit at its step (a near-tie
may flip either way, a wrong token may not).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from model.modeling import VideoReferForCausalLM, default_attn_implementation
from model.processing import VideoReferProcessor, resample_like_pillow, resize_pixels

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]

TOLERANCE = {torch.float16: 0.01, torch.bfloat16: 0.04}
SAMPLED = [0, 2, 4, 6, 8, 10, 12, 14]


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 40, 56, 3), dtype=np.uint8)


def _mask(x0: int = 8) -> np.ndarray:
    mask = np.zeros((40, 56), dtype=bool)
    mask[8:24, x0 : x0 + 16] = True
    return mask


def _batch(processor: VideoReferProcessor) -> dict[str, torch.Tensor]:
    """Two samples (single- and multi-frame objects, padding in the second row): a loss and logits to compare."""
    single = processor.encode(
        frames=_frames(8), frame_indices=SAMPLED, objects=[{4: _mask()}],
        conversations=[{"from": "human", "value": "<video>\nDescribe <region>."}, {"from": "gpt", "value": "A cat."}],
    )
    multi = processor.encode(
        frames=_frames(9, seed=1), frame_indices=SAMPLED,
        objects=[{0: _mask(), 2: _mask(20), 6: _mask(30)}, {3: _mask()}],
        conversations=[{"from": "human", "value": "<video>\nIs <region> near <region>?"},
                       {"from": "gpt", "value": "No, far."}],
        mode="multi",
    )
    return processor.collate([single, multi])


def _question(processor: VideoReferProcessor) -> dict[str, torch.Tensor]:
    item = processor.encode(
        frames=_frames(8, seed=2), frame_indices=SAMPLED, objects=[{2: _mask()}, {6: _mask(30)}],
        conversations=[{"from": "human", "value": "What is <region> doing next to <region>?"}],
        add_generation_prompt=True,
    )
    return processor.collate([item])


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def _load(model_dir, device: torch.device, dtype: torch.dtype, attn: str | None = None) -> VideoReferForCausalLM:
    model = VideoReferForCausalLM.from_pretrained(
        str(model_dir), dtype=dtype, attn_implementation=attn or default_attn_implementation(device))
    return model.to(device).eval()


@pytest.fixture(scope="module")
def reference(tiny_model_dir) -> VideoReferForCausalLM:
    return _load(tiny_model_dir, torch.device("cpu"), torch.float32, "sdpa")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_forward_in_half_precision_matches_cpu_float32(gpu_device, tiny_model_dir, tiny_processor, reference,
                                                       dtype) -> None:
    batch = _batch(tiny_processor)
    model = _load(tiny_model_dir, gpu_device, dtype)
    with torch.no_grad():
        expected = reference(**batch)
        ours = model(**_to(batch, gpu_device))
    assert ours.logits.dtype == dtype
    logits = ours.logits.float().cpu()
    real = batch["attention_mask"].bool()  # padded positions carry no meaning
    scale = float(expected.logits[real].abs().max())
    error = float((logits[real] - expected.logits[real]).abs().max())
    assert torch.isfinite(logits[real]).all()
    assert error <= TOLERANCE[dtype] * scale, f"max |logit error| {error:.4g} vs largest logit {scale:.4g}"
    assert float(ours.loss) == pytest.approx(float(expected.loss), rel=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_greedy_generation_in_half_precision_follows_cpu_float32(gpu_device, tiny_model_dir, tiny_processor,
                                                                 reference, dtype) -> None:
    question = _question(tiny_processor)
    model = _load(tiny_model_dir, gpu_device, dtype)
    steps = 6
    inputs = {key: value for key, value in _to(question, gpu_device).items() if key != "labels"}
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                                   eos_token_id=None, pad_token_id=0).cpu()
    new = generated[0, -steps:]
    assert new.shape == (steps,)
    # Teacher-force the generated tokens through the reference: at each step the chosen token's float32 logit is
    # within the tolerance of the best one.
    prompt = question["input_ids"]
    forced = {**question, "input_ids": torch.cat([prompt, new[None, :-1]], dim=1),
              "attention_mask": torch.ones(1, prompt.shape[1] + steps - 1, dtype=torch.long)}
    forced.pop("labels", None)
    with torch.no_grad():
        logits = reference(**forced).logits[0, prompt.shape[1] - 1 :]
    scale = float(logits.abs().max())
    for step, token in enumerate(new.tolist()):
        gap = float(logits[step].max() - logits[step, token])
        assert gap <= TOLERANCE[dtype] * scale, f"step {step}: token {token} is {gap:.4g} below the best logit"


def test_attention_runs_the_fused_kernels(gpu_device, tiny_model_dir, tiny_processor) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    flash_attn = importlib.util.find_spec("flash_attn") is not None
    expected_impl = "flash_attention_2" if gpu_device.type == "cuda" and flash_attn else "sdpa"
    assert default_attn_implementation(gpu_device) == expected_impl
    question = {key: value for key, value in _to(_question(tiny_processor), gpu_device).items() if key != "labels"}
    model = _load(tiny_model_dir, gpu_device, torch.bfloat16, "sdpa")
    with torch.no_grad():
        with sdpa_kernel([SDPBackend.MATH]):
            math = model(**question).logits.float()
        # One unpadded sample: every attention call (SigLIP's, the causal LLM's with grouped KV heads) can take a
        # fused kernel (flash; on CUDA also memory-efficient or cuDNN); allowing only those raises if any call cannot
        # (a mask or a layout that would fall back to the math kernel).
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
            flash = model(**question).logits.float()
        scale = float(math.abs().max())
        assert float((flash - math).abs().max()) <= TOLERANCE[torch.bfloat16] * scale
        if expected_impl == "flash_attention_2":
            dao = _load(tiny_model_dir, gpu_device, torch.bfloat16, "flash_attention_2")(**question).logits.float()
            assert float((dao - math).abs().max()) <= TOLERANCE[torch.bfloat16] * scale


@pytest.mark.parametrize(("height", "width"), [(384, 683), (384, 512), (512, 384), (216, 384)])
def test_the_device_frame_stretch_is_pillows_bicubic_bit_for_bit(gpu_device, height: int, width: int) -> None:
    from PIL import Image

    frames = np.random.default_rng(height + width).integers(0, 256, (3, height, width, 3), dtype=np.uint8)
    frames[0, :, : width // 2] = 0  # hard edges: the clip to 0..255 matters there
    frames[0, :, width // 2 :] = 255
    expected = np.stack([np.asarray(Image.fromarray(f).resize((384, 384), Image.Resampling.BICUBIC)) for f in frames])
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous().to(gpu_device)
    ours = resample_like_pillow(pixels, 384)
    assert ours.device == pixels.device and ours.dtype == torch.uint8
    assert np.array_equal(ours.cpu().permute(0, 2, 3, 1).numpy(), expected)
    # resize_pixels takes this path on any device but the CPU (where it calls Pillow itself).
    assert np.array_equal(resize_pixels(pixels, 384).cpu().permute(0, 2, 3, 1).numpy(), expected)
