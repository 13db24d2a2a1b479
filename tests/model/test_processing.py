"""The processor contract: chat layout, placeholder slots, labels, mask-frame reuse, RLE inputs, WDS samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.errors import InvalidSampleError, RejectReason
from engine.masks import encode_rle, resize_to_grid
from engine.types import RleMask
from model.processing import IGNORE_INDEX, VideoReferProcessor, build_tiny_tokenizer

QUESTION = [{"from": "human", "value": "<video>\nWhat is <region> doing?"}, {"from": "gpt", "value": "It runs away."}]


def _frames(n: int = 8, height: int = 48, width: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def _mask(y0: int = 10, x0: int = 10, height: int = 48, width: int = 80) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0 : y0 + 12, x0 : x0 + 20] = True
    return mask


SAMPLED = [0, 2, 4, 6, 8, 10, 12, 14]


def test_tiny_tokenizer_has_the_chat_tokens_first_and_reloads(tmp_path) -> None:
    from transformers import AutoTokenizer

    tokenizer = build_tiny_tokenizer(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for tok in (tokenizer, reloaded):
        assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<region>"]) == [0, 1, 2, 3]
        assert len(tok) <= 512
    text = "<|im_start|>user\nWhere is <region>?<|im_end|>"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded(text)["input_ids"].count(3) == 1


def test_encode_lays_out_video_slots_region_slots_and_assistant_labels(tiny_processor: VideoReferProcessor) -> None:
    item = tiny_processor.encode(
        frames=_frames(), frame_indices=SAMPLED, objects=[{4: _mask()}], conversations=QUESTION, mode="single"
    )
    ids, labels = item["input_ids"], item["labels"]
    assert (ids == tiny_processor.video_token_id).sum() == tiny_processor.video_token_count(8) == 64
    assert (ids == tiny_processor.region_token_id).sum() == 1
    learned = ids[labels != IGNORE_INDEX].tolist()
    assert learned[-1] == tiny_processor.im_end_id
    assert tiny_processor.tokenizer.decode(learned[:-1]) == "It runs away."
    assert torch.equal(labels[labels != IGNORE_INDEX], ids[labels != IGNORE_INDEX])
    assert item["pixel_values"].shape == (8, 3, 64, 64)
    assert int(item["frame_counts"]) == int(item["video_frame_counts"]) == 8
    assert item["mask_frame_index"].tolist() == [2]  # frame 4 is the third sampled frame: reused, not re-encoded
    expected_grid = torch.from_numpy(resize_to_grid(_mask(), 8) > 0)
    assert torch.equal(item["object_masks"][0], expected_grid)


def test_multi_mode_pools_every_mask_and_gives_up_to_u_slots(tiny_processor: VideoReferProcessor) -> None:
    objects = [{i: _mask(x0=i) for i in (0, 2, 4, 6, 8, 10)}, {2: _mask(), 3: _mask()}]
    conversations = [{"from": "human", "value": "Compare <region> and <region>."}, {"from": "gpt", "value": "Same."}]
    item = tiny_processor.encode(
        frames=_frames(n=9), frame_indices=SAMPLED, objects=objects, conversations=conversations, mode="multi"
    )
    assert (item["input_ids"] == tiny_processor.region_token_id).sum() == 4 + 2
    assert item["mask_object_index"].tolist() == [0] * 6 + [1, 1]
    assert item["mask_frame_index"].tolist() == [0, 1, 2, 3, 4, 5, 1, 8]  # frame 3 is an extra frame, row 8
    with pytest.raises(InvalidSampleError):  # frame 3 must be supplied: no mask is silently dropped
        tiny_processor.encode(
            frames=_frames(), frame_indices=SAMPLED, objects=objects, conversations=conversations, mode="multi"
        )
    # Without a <video> marker the video slots open the first human turn.
    first_video_slot = int((item["input_ids"] == tiny_processor.video_token_id).nonzero()[0])
    assert first_video_slot < int((item["input_ids"] == tiny_processor.region_token_id).nonzero()[0])


def test_mask_frames_outside_the_sampled_ones_come_as_extra_frames(tiny_processor: VideoReferProcessor) -> None:
    frames = _frames(n=8 + 2)
    objects = [{5: _mask()}, {4: _mask(), 7: _mask()}]  # extras in ascending order: 5, 7
    conversations = [{"from": "human", "value": "<region> and <region>?"}, {"from": "gpt", "value": "Yes."}]
    single = tiny_processor.encode(
        frames=frames, frame_indices=SAMPLED, objects=objects, conversations=conversations, mode="single"
    )
    assert int(single["frame_counts"]) == 9 and int(single["video_frame_counts"]) == 8  # frame 7 is not needed
    assert single["mask_frame_index"].tolist() == [8, 2]
    assert torch.equal(single["pixel_values"][8], tiny_processor.preprocess_frames(frames[8:9])[0])
    with pytest.raises(InvalidSampleError) as missing:
        tiny_processor.encode(
            frames=frames[:8], frame_indices=SAMPLED, objects=[{}], conversations=QUESTION, mode="single"
        )
    assert missing.value.reason == RejectReason.MISSING_MASK


def test_rle_mappings_rle_masks_and_arrays_encode_identically(tiny_processor: VideoReferProcessor) -> None:
    rle = encode_rle(_mask())
    variants = [_mask(), rle, RleMask.from_coco(rle), {"segmentation": rle}]
    items = [
        tiny_processor.encode(frames=_frames(), frame_indices=SAMPLED, objects=[{"4": v}], conversations=QUESTION)
        for v in variants
    ]
    for item in items[1:]:
        assert torch.equal(item["object_masks"], items[0]["object_masks"])


def test_bad_samples_raise_invalid_sample_with_a_reason(tiny_processor: VideoReferProcessor) -> None:
    with pytest.raises(InvalidSampleError) as mismatch:
        tiny_processor.encode(frames=_frames(), frame_indices=SAMPLED, objects=[], conversations=QUESTION)
    assert mismatch.value.reason == RejectReason.REGION_COUNT_MISMATCH
    with pytest.raises(InvalidSampleError):
        tiny_processor.encode(
            frames=_frames(n=5), frame_indices=SAMPLED, objects=[{4: _mask()}], conversations=QUESTION
        )
    with pytest.raises(InvalidSampleError) as null_mask:
        tiny_processor.encode(
            frames=_frames(), frame_indices=SAMPLED, objects=[{4: {"segmentation": None}}], conversations=QUESTION
        )
    assert null_mask.value.reason == RejectReason.MISSING_MASK


def test_collate_pads_and_offsets_frames_and_objects(tiny_processor: VideoReferProcessor) -> None:
    short = tiny_processor.encode(
        frames=_frames(), frame_indices=SAMPLED, objects=[{4: _mask()}], conversations=QUESTION
    )
    conversations = [{"from": "human", "value": "<region> or <region>?"}, {"from": "gpt", "value": "The first one."}]
    long = tiny_processor.encode(
        frames=_frames(), frame_indices=SAMPLED, objects=[{0: _mask(), 2: _mask()}, {6: _mask()}],
        conversations=conversations, mode="multi",
    )
    batch = tiny_processor.collate([short, long])
    lengths = [len(short["input_ids"]), len(long["input_ids"])]
    assert lengths[0] != lengths[1]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    shorter = lengths.index(min(lengths))
    assert batch["input_ids"][shorter, -1] == tiny_processor.pad_token_id
    assert batch["labels"][shorter, -1] == IGNORE_INDEX
    assert batch["pixel_values"].shape[0] == 16
    assert batch["mask_frame_index"].tolist() == [2, 8 + 0, 8 + 1, 8 + 3]
    assert batch["mask_object_index"].tolist() == [0, 1, 1, 2]
    left = tiny_processor.collate([short, long], padding_side="left")
    assert left["attention_mask"][shorter, -1] == 1 and left["attention_mask"][shorter, 0] == 0


def test_build_prompt_adds_the_video_marker_and_names_objects(tiny_processor: VideoReferProcessor) -> None:
    assert tiny_processor.build_prompt("What is <region> doing?", 1) == "<video>\nWhat is <region> doing?"
    named = tiny_processor.build_prompt("Which one is bigger?", 2)
    assert named.count("<region>") == 2 and named.startswith("<video>\n<object0><region>")
    with pytest.raises(InvalidSampleError) as mismatch:
        tiny_processor.build_prompt("<region> and <region>", 1)
    assert mismatch.value.reason == RejectReason.REGION_COUNT_MISMATCH


def test_save_and_load_keep_every_setting(tiny_processor: VideoReferProcessor, tmp_path) -> None:
    tiny_processor.save_pretrained(tmp_path)
    loaded = VideoReferProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == tiny_processor.to_dict()
    assert loaded.region_token_id == tiny_processor.region_token_id


def test_encode_wds_reads_what_the_storage_shard_writer_wrote(tiny_processor: VideoReferProcessor, tmp_path) -> None:
    from engine.types import Sample, SampleObject, Turn
    from storage.wds import read_raw

    storage_wds = pytest.importorskip("storage.wds")
    frames = _frames(n=4, height=64, width=64)
    indices = (0, 5, 10, 15)
    masks = {5: RleMask.from_coco(encode_rle(_mask(height=64, width=64))),
             15: RleMask.from_coco(encode_rle(_mask(y0=30, height=64, width=64)))}
    sample = Sample(
        key="detailed_0123abcd", task="detailed", video_uri="clip.mp4", height=64, width=64, frame_indices=indices,
        conversations=(Turn(role="human", value="<video>\nDescribe <region>."), Turn(role="gpt", value="A box.")),
        objects=(SampleObject(object_id="obj", category="box", masks=masks),),
    )
    with storage_wds.ShardWriter(tmp_path, grid=8) as writer:
        assert writer.write(sample, frames) is None
    (raw,) = list(read_raw(next(tmp_path.glob("*.tar"))))
    sample_json = json.loads(raw["json"])
    decoded = [storage_wds.decode_jpeg(raw[name]) for name in sorted(n for n in raw if n.endswith(".jpg"))]
    item = tiny_processor.encode_wds(sample_json, decoded)
    assert item["mask_frame_index"].tolist() == [1, 3]  # two mask frames: multi mode inferred
    assert (item["input_ids"] == tiny_processor.region_token_id).sum() == 2
    single = tiny_processor.encode_wds(sample_json, decoded, mode="single")
    assert single["mask_frame_index"].tolist() == [1]


def test_float_frames_in_zero_one_match_uint8_frames(tiny_processor: VideoReferProcessor) -> None:
    frames = _frames(n=2)
    as_uint8 = tiny_processor.preprocess_frames(frames)
    as_float = tiny_processor.preprocess_frames(frames.astype(np.float32) / 255.0)
    # uint8 frames are resized on uint8 by Pillow (the release's image processor), float frames by torch: both
    # are bicubic, within a few grey levels of each other.
    assert (as_uint8 - as_float).abs().mean() < 0.02
    assert as_uint8.min() >= -1.0 and as_uint8.max() <= 1.0
    at_size = _frames(n=2)[:, :1, :1].repeat(64, axis=1).repeat(64, axis=2)
    assert torch.allclose(tiny_processor.preprocess_frames(at_size),
                          tiny_processor.preprocess_frames(at_size.astype(np.float32) / 255.0), atol=1e-5)


def test_tokenizing_through_the_piece_cache_gives_the_tokenizers_ids(monkeypatch) -> None:
    import model.processing as processing

    monkeypatch.setattr(processing, "_TOKEN_CACHE_SIZE", 3)  # a full cache early: later pieces go uncached
    tokenizer = build_tiny_tokenizer()
    processor = VideoReferProcessor(tokenizer, 64)
    answers = ["It runs away.", "A dog runs across the green grass.", "It sits.", "It runs away."]
    for answer in answers * 2:
        conversation = [QUESTION[0], {"from": "gpt", "value": answer}]
        ids, labels = processor.tokenize(conversation, 8, [1], add_generation_prompt=False)
        learnt = [token for token in labels if token != IGNORE_INDEX]
        assert learnt == tokenizer(answer, add_special_tokens=False)["input_ids"] + [processor.im_end_id]
        system = tokenizer(f"<|im_start|>system\n{processor.system_prompt}<|im_end|>\n",
                           add_special_tokens=False)["input_ids"]
        assert ids[: len(system)] == system


def test_resize_frames_gives_the_release_siglip_pixels_as_uint8() -> None:
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    processor = VideoReferProcessor(build_tiny_tokenizer(), 64)
    for height, width in ((48, 64), (64, 85), (40, 56), (64, 64)):  # 4:3 and 16:9 at the short side, smaller, square
        frames = _frames(n=3, height=height, width=width, seed=height + width)
        reference = SiglipImageProcessorPil(size={"height": 64, "width": 64}).preprocess(
            list(frames), return_tensors="pt"
        )["pixel_values"]
        resized = processor.resize_frames(frames)
        assert resized.dtype == np.uint8 and resized.shape == (3, 64, 64, 3)
        as_uint8 = ((reference * 0.5 + 0.5) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(resized, as_uint8)
        assert torch.equal(processor.preprocess_frames(frames),
                           (torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5)


def test_mask_forms_keep_their_errors(tiny_processor: VideoReferProcessor) -> None:
    cases = [({"segmentation": _mask()}, RejectReason.MALFORMED_SAMPLE),  # an array under segmentation: unsupported
             ("not a mask", RejectReason.MALFORMED_SAMPLE),
             ({"size": [48, 80], "counts": [5, 5]}, RejectReason.INVALID_MASK)]  # counts short of 48 x 80
    for mask, reason in cases:
        with pytest.raises((InvalidSampleError, ValueError)) as caught:
            tiny_processor.encode(frames=_frames(), frame_indices=SAMPLED, objects=[{4: mask}], conversations=QUESTION)
        assert caught.value.reason == reason


@pytest.mark.parametrize(("height", "width"), [(64, 85), (64, 114), (85, 64), (64, 40), (23, 64), (64, 256), (64, 65)])
def test_resample_like_pillow_is_pillows_bicubic_bit_for_bit(height: int, width: int) -> None:
    # The device path of resize_pixels (torch integer ops; run here on the CPU): the export's frames have one side
    # at the vision size (4:3, 16:9, portrait, and narrower or shorter ones stretched up).
    from PIL import Image

    from model.processing import resample_like_pillow

    frames = _frames(n=3, height=height, width=width, seed=height * width)
    reference = np.stack([np.asarray(Image.fromarray(f).resize((64, 64), Image.Resampling.BICUBIC)) for f in frames])
    ours = resample_like_pillow(torch.from_numpy(frames).permute(0, 3, 1, 2), 64)
    assert ours.dtype == torch.uint8
    assert np.array_equal(ours.permute(0, 2, 3, 1).numpy(), reference)
    edges = np.zeros_like(frames)
    edges[..., ::2, :] = 255  # full-range stripes: the negative lobes clip at 0 and 255
    reference = np.stack([np.asarray(Image.fromarray(f).resize((64, 64), Image.Resampling.BICUBIC)) for f in edges])
    assert np.array_equal(resample_like_pillow(torch.from_numpy(edges).permute(0, 3, 1, 2), 64)
                          .permute(0, 2, 3, 1).numpy(), reference)


def test_resample_like_pillow_refuses_a_resize_of_both_sides() -> None:
    from model.processing import resample_like_pillow, resize_pixels

    frames = torch.from_numpy(_frames(n=1, height=48, width=80)).permute(0, 3, 1, 2)
    with pytest.raises(ValueError, match="one side"):
        resample_like_pillow(frames, 64)
    from PIL import Image

    reference = np.asarray(Image.fromarray(_frames(n=1, height=48, width=80)[0]).resize((64, 64),
                                                                                       Image.Resampling.BICUBIC))
    assert np.array_equal(resize_pixels(frames, 64)[0].permute(1, 2, 0).numpy(), reference)  # Pillow does it


# ---------------------------------------------------------------- the pixel options (loader workers vs device)


def test_the_pixel_options_persist_and_a_deferred_resize_needs_uint8_pixels(tmp_path) -> None:
    processor = VideoReferProcessor(build_tiny_tokenizer(), 64, max_length=99)
    assert processor.do_resize and processor.do_normalize  # as the release's SigLIP processor
    with pytest.raises(ValueError, match="do_normalize=False"):
        VideoReferProcessor(build_tiny_tokenizer(), 64, do_resize=False)
    loader = processor.replace(do_resize=False, do_normalize=False)
    assert type(loader) is VideoReferProcessor and loader.tokenizer is processor.tokenizer
    assert loader.to_dict() == {**processor.to_dict(), "do_resize": False, "do_normalize": False}
    assert processor.do_resize and processor.do_normalize  # the original is untouched
    loader.save_pretrained(tmp_path / "loader")
    assert VideoReferProcessor.from_pretrained(tmp_path / "loader").to_dict() == loader.to_dict()
    settings = json.loads((tmp_path / "loader" / "videorefer_processor.json").read_text())
    for key in ("do_resize", "do_normalize"):  # a folder saved before the options existed loads with the defaults
        settings.pop(key)
    (tmp_path / "loader" / "videorefer_processor.json").write_text(json.dumps(settings))
    assert VideoReferProcessor.from_pretrained(tmp_path / "loader").to_dict() == processor.to_dict()


@pytest.mark.parametrize("do_resize", [True, False])
def test_uint8_pixels_finish_on_the_device_as_the_default_processor_gives_them(do_resize: bool) -> None:
    # Stored export frames (short side 64, 4:3), a smaller square (two Pillow passes: resized in the loader) and
    # a text-only sample in one micro-batch: the loader's half keeps uint8 (the text-only item too, so the joined
    # pixels are not promoted to float), and normalize_pixels gives what the default processor gives.
    processor = VideoReferProcessor(build_tiny_tokenizer(), 64)
    loader = processor.replace(do_resize=do_resize, do_normalize=False)
    text_only = [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]
    samples = [
        {"frames": _frames(4, 64, 85, seed=1), "frame_indices": [0, 1, 2, 3], "objects": [{1: _mask(5, 5, 64, 85)}],
         "conversations": QUESTION},
        {"frames": None, "frame_indices": [], "objects": [], "conversations": text_only},
        {"frames": _frames(2, 40, 40, seed=2), "frame_indices": [0, 1], "objects": [{0: _mask(2, 2, 40, 40)}],
         "conversations": QUESTION},
    ]
    expected = processor.collate([processor.encode(**sample) for sample in samples])
    items = [loader.encode(**sample) for sample in samples]
    assert items[1]["pixel_values"].dtype == torch.uint8 and items[1]["pixel_values"].shape == (0, 3, 64, 64)
    assert tuple(items[0]["pixel_values"].shape[-2:]) == ((64, 64) if do_resize else (64, 85))
    assert tuple(items[2]["pixel_values"].shape[-2:]) == (64, 64)
    got = loader.collate(items)  # two stored sizes when deferred: resized here, with Pillow
    assert got["pixel_values"].dtype == torch.uint8 and tuple(got["pixel_values"].shape) == (6, 3, 64, 64)
    assert torch.equal(processor.normalize_pixels(got["pixel_values"]), expected["pixel_values"])
    alone = loader.collate(items[:2])  # one stored size: left for the device step
    assert tuple(alone["pixel_values"].shape[-2:]) == ((64, 64) if do_resize else (64, 85))
    assert torch.equal(processor.normalize_pixels(alone["pixel_values"]), expected["pixel_values"][:4])
    assert processor.normalize_pixels(expected["pixel_values"]) is expected["pixel_values"]  # float: as it is


@pytest.mark.gpu
def test_the_device_half_on_a_gpu_gives_the_default_processors_pixels_bit_for_bit() -> None:
    # The training loop on a GPU: the loader leaves the export's frames at their stored size, the step resizes
    # them on the device (resample_like_pillow) and normalises them there.
    processor = VideoReferProcessor(build_tiny_tokenizer(), 64)
    loader = processor.replace(do_resize=False, do_normalize=False)
    for height, width in ((64, 85), (64, 114), (85, 64)):
        frames = _frames(4, height, width, seed=height * width)
        pixels = loader.preprocess_frames(frames)
        assert tuple(pixels.shape[-2:]) == (height, width)
        on_device = processor.normalize_pixels(pixels.cuda())
        assert on_device.device.type == "cuda"
        assert torch.equal(on_device.cpu(), processor.preprocess_frames(frames))
