"""Parity with the release: object encoder, merge ties, mask pairing and order, pixels and prompt token ids.

Every expectation comes from `tests/model/release_reference.py` (code transcribed from the release), run on
random and edge inputs: random tokens, tied and identical tokens, empty masks, masks on and off the sampled
frames, single- and multi-object questions.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from engine.masks import encode_rle
from engine.video import uniform_indices
from model.object_encoder import ObjectEncoder, batched_temporal_token_merge, temporal_token_merge
from model.processing import VideoReferProcessor, build_tiny_tokenizer
from tests.model import release_reference as release


def _merge_cases(rng: torch.Generator) -> list[torch.Tensor]:
    cases = [torch.randn(k, 16, generator=rng) for k in range(1, 41)]
    base = torch.randn(5, 16, generator=rng)
    cases.append(base[[0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 4]])  # runs of identical tokens: tied similarities of 1
    cases.append(base[[0] * 12])  # all identical
    cases.append(torch.zeros(9, 16))  # every mask empty: all similarities 0
    mixed = torch.randn(32, 16, generator=rng)
    mixed[[3, 4, 5, 10, 11, 20, 21, 22, 23, 30]] = 0  # the object leaves the frame: empty masks among real ones
    cases.append(mixed)
    cases.append(torch.cat([torch.zeros(6, 16), base[[1] * 6]]))
    return cases


def test_temporal_merge_equals_the_release_on_random_tied_identical_and_zero_tokens() -> None:
    fewer = 0
    for tokens in _merge_cases(torch.Generator().manual_seed(0)):
        for u in (1, 4, 8):
            ours = temporal_token_merge(tokens, u)
            count = tokens.shape[0]
            reference = tokens[None] if count <= u else release.token_merge(tokens[None], count - u)
            assert ours.shape == reference[0].shape, (tokens.shape, u)
            assert torch.allclose(ours, reference[0], atol=1e-6)
            fewer += ours.shape[0] < min(tokens.shape[0], u)
    assert fewer >= 4  # ties really leave fewer than u tokens, as released


def test_batched_merge_equals_the_plain_merge_on_mixed_objects() -> None:
    cases = _merge_cases(torch.Generator().manual_seed(1))
    random.Random(0).shuffle(cases)
    tokens = torch.cat(cases)
    object_index = torch.cat([torch.full((case.shape[0],), i) for i, case in enumerate(cases)])
    merged, counts = batched_temporal_token_merge(tokens, object_index, len(cases), 4)
    for i, case in enumerate(cases):
        plain = temporal_token_merge(case, 4)
        assert int(counts[i]) == plain.shape[0]
        assert torch.allclose(merged[i, : plain.shape[0]], plain, atol=1e-6)
        assert not merged[i, plain.shape[0] :].any()


def _blob(rng: np.random.Generator, height: int, width: int, empty: bool = False) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    if not empty:
        y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
        mask[y : y + rng.integers(2, height - y), x : x + rng.integers(2, width - x)] = 1
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_object_encoder_equals_the_release_mask_extractor(seed: int) -> None:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    grid, depth, hidden, height, width = 6, 8, 12, 30, 42
    num_frames = 10
    feats = torch.randn(num_frames, grid * grid, depth)
    ann_indices, masks, frame_rows, object_rows = [], [], [], []
    for obj in range(int(rng.integers(1, 4))):
        frames = sorted(rng.choice(num_frames, size=int(rng.integers(1, num_frames + 1)), replace=False).tolist())
        ann_indices.append(frames)
        for frame in frames:
            masks.append(_blob(rng, height, width, empty=bool(rng.random() < 0.3)))
            frame_rows.append(frame)
            object_rows.append(obj)
    encoder = ObjectEncoder(depth, hidden, tokens_per_object=4).eval()
    with torch.no_grad():
        reference, reference_counts = release.mask_extractor_forward(
            encoder.feat_linear, feats, [torch.Tensor(np.array(masks))], [ann_indices]
        )
        ours, counts = encoder(
            feats.reshape(num_frames, grid, grid, depth), torch.from_numpy(np.array(masks)),
            torch.tensor(frame_rows), torch.tensor(object_rows), len(ann_indices),
        )
    assert counts.tolist() == reference_counts
    assert torch.allclose(ours, reference, atol=1e-5)


def _frame_of_value(index: int, height: int = 24, width: int = 32) -> np.ndarray:
    return np.full((height, width, 3), index, dtype=np.uint8)


def test_processor_pools_the_release_masks_in_the_release_order() -> None:
    """Bench-style entries (masks on 32 frames, on and off the 8 sampled ones; a null mask) in multi-frame mode."""
    rng = np.random.default_rng(3)
    processor = VideoReferProcessor(build_tiny_tokenizer(), 64, num_frames=8, grid=8)
    total, height, width = 120, 24, 32
    sampled = uniform_indices(total, 8)
    mask_frames = sorted(rng.choice(total, size=32, replace=False).tolist())
    annotations = []
    for _ in range(2):
        entry = {}
        for frame in mask_frames:
            entry[str(frame)] = {"segmentation": dict(encode_rle(_blob(rng, height, width).astype(bool)))}
        annotations.append(entry)
    ann_indices, _, all_frames, reference_masks = release.bench_item_masks(annotations, "multi", 0, height, width)
    reference_pairs = [(obj, all_frames[row]) for obj, rows in enumerate(ann_indices[0]) for row in rows]

    objects = [{int(k): v["segmentation"] for k, v in ann.items()} for ann in annotations]
    extras = sorted({f for obj in objects for f in obj} - set(sampled))
    frames = np.stack([_frame_of_value(f) for f in sampled + extras])
    question = "Is <region> left of <region>?"
    item = processor.encode(
        frames=frames, frame_indices=sampled, objects=objects, mode="multi", add_generation_prompt=True,
        conversations=[{"from": "human", "value": processor.build_prompt(question, 2)}],
    )
    pixel_frame = [round(float((row[0, 0, 0] + 1) / 2 * 255)) for row in item["pixel_values"]]
    pairs = zip(item["mask_object_index"], item["mask_frame_index"], strict=True)
    ours = [(int(obj), pixel_frame[int(row)]) for obj, row in pairs]
    assert ours == reference_pairs  # 64 masks: every one pooled, each on its own frame, in the release's order
    assert len(set(pixel_frame)) == len(pixel_frame)  # no frame encoded twice
    assert [pixel_frame[int(r)] for r in item["video_frame_index"]] == sampled
    grid_reference = torch.nn.functional.interpolate(reference_masks[:, None], size=(8, 8), mode="bilinear") > 0
    assert torch.equal(item["object_masks"], grid_reference[:, 0])
    assert int((item["input_ids"] == processor.region_token_id).sum()) == 2 * 4


def test_single_frame_mode_pools_the_mask_on_frame_idx() -> None:
    rng = np.random.default_rng(4)
    processor = VideoReferProcessor(build_tiny_tokenizer(), 64, num_frames=8, grid=8)
    sampled = uniform_indices(60, 8)
    annotation = {str(f): {"segmentation": dict(encode_rle(_blob(rng, 24, 32).astype(bool)))} for f in (3, 17, 40)}
    for frame_idx in (3, 17, 40):
        ann_indices, _, all_frames, _ = release.bench_item_masks([annotation], "single", frame_idx, 24, 32)
        objects = [{frame_idx: annotation[str(frame_idx)]["segmentation"]}]
        extras = [frame_idx] if frame_idx not in sampled else []
        item = processor.encode(
            frames=np.stack([_frame_of_value(f) for f in sampled + extras]), frame_indices=sampled, objects=objects,
            conversations=[{"from": "human", "value": "<video>\nWhat is <region>?"}], mode="single",
        )
        row = int(item["mask_frame_index"][0])
        assert round(float((item["pixel_values"][row, 0, 0, 0] + 1) / 2 * 255)) == all_frames[ann_indices[0][0][0]]


def test_pixels_equal_the_release_siglip_image_processor() -> None:
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)
    reference = SiglipImageProcessorPil(size={"height": 64, "width": 64}).preprocess(
        [frame for frame in frames], return_tensors="pt"
    )["pixel_values"]
    ours = VideoReferProcessor(build_tiny_tokenizer(), 64).preprocess_frames(frames)
    assert torch.allclose(ours, reference, atol=1e-6)


QUESTIONS = [
    ("Please give a detailed description of the highlighted object [<region>] in the video.", 1),
    (release.bench_q_question("What is <region> doing?", ["(A) running", "(B) sitting", "(C) eating"]), 1),
    (release.bench_q_question("Is <region> bigger than <region>?", ["(A) yes", "(B) no"]), 2),
    ("  There are <object0><region>, <object1><region> and <object2><region>. Which one moves first?\n", 3),
]


@pytest.mark.parametrize(("question", "objects"), QUESTIONS)
@pytest.mark.parametrize("mode", ["single", "multi"])
def test_prompt_token_ids_equal_the_release(question: str, objects: int, mode: str) -> None:
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = release.QWEN2_CHAT_TEMPLATE
    processor = VideoReferProcessor(tokenizer, 64, num_frames=8, grid=8)
    reference = release.mm_infer_prompt_ids(question, tokenizer)
    masks = [{f: np.ones((24, 32), bool) for f in (0, 5, 9, 14, 20)} for _ in range(objects)]
    sampled = uniform_indices(24, 8)
    extras = {0, 5, 9, 14, 20} - set(sampled)
    item = processor.encode(
        frames=np.zeros((8 + len(extras), 24, 32, 3), np.uint8), frame_indices=sampled, objects=masks,
        conversations=[{"from": "human", "value": processor.build_prompt(question, objects)}], mode=mode,
        add_generation_prompt=True,
    )
    ids = item["input_ids"].tolist()
    slots = (processor.video_token_id, processor.region_token_id)
    collapsed = [t for i, t in enumerate(ids) if i == 0 or t not in slots or t != ids[i - 1]]
    if objects > 1 and mode == "multi":  # adjacent objects' slots cannot be told apart after collapsing: count
        assert ids.count(processor.region_token_id) == objects * 4
    assert collapsed == reference


def test_text_only_and_image_prompts_equal_the_release() -> None:
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = release.QWEN2_CHAT_TEMPLATE
    processor = VideoReferProcessor(tokenizer, 64, num_frames=8, grid=8)
    text = processor.encode(
        frames=None, frame_indices=[], objects=[], add_generation_prompt=True,
        conversations=[{"from": "human", "value": processor.build_prompt("What is a dog?", 0, modality="text")}],
    )
    assert text["input_ids"].tolist() == release.mm_infer_prompt_ids("What is a dog?", tokenizer, modal="text")
    image = processor.encode(
        frames=np.zeros((1, 24, 32, 3), np.uint8), frame_indices=[0] * 8, objects=[{0: np.ones((24, 32), bool)}],
        conversations=[{"from": "human", "value": processor.build_prompt("What is <region>?", 1, modality="image")}],
        add_generation_prompt=True,
    )
    ids = image["input_ids"].tolist()
    first = ids.index(processor.video_token_id)
    ids = ids[:first] + [MODAL_IMAGE] + [t for t in ids[first:] if t != processor.video_token_id]
    assert ids == release.mm_infer_prompt_ids("What is <region>?", tokenizer, modal="image")
    assert image["pixel_values"].shape[0] == 1 and image["video_frame_index"].tolist() == [0] * 8


MODAL_IMAGE = release.MODAL_INDEX_MAP["<image>"]
