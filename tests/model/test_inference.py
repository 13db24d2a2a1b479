"""The inference pipeline on a generated clip: frame sampling with extra mask frames, greedy, sampling, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import InvalidSampleError
from engine.video import uniform_indices
from model.inference import VideoReferPipeline, sample_video, save_tiny_model
from model.modeling import VideoReferForCausalLM


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from engine.synthetic import make_clip

    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seed=3, num_frames=20, width=64, height=48)


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir: Path) -> VideoReferPipeline:
    return VideoReferPipeline.from_pretrained(tiny_model_dir)


def test_save_tiny_model_is_deterministic_per_seed(tmp_path, tiny_model_dir) -> None:
    again = save_tiny_model(tmp_path / "again", seed=0)
    assert {p.name for p in again.iterdir()} >= {"config.json", "model.safetensors", "videorefer_processor.json"}
    first = VideoReferForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    second = VideoReferForCausalLM.from_pretrained(again).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    other = VideoReferForCausalLM.from_pretrained(save_tiny_model(tmp_path / "other", seed=1)).state_dict()
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_sample_video_puts_unsampled_mask_frames_after_the_uniform_ones(clip) -> None:
    sampled = uniform_indices(20, 8)
    extra = next(i for i in range(20) if i not in sampled)
    frames, indices = sample_video(str(clip.path), 8, [sampled[2], extra])
    assert indices == sampled
    assert frames.shape == (9, 48, 64, 3)
    all_frames = np.random.default_rng(0).integers(0, 255, (20, 6, 6, 3), dtype=np.uint8)
    from_array, _ = sample_video(all_frames, 8, [extra])
    assert np.array_equal(from_array[-1], all_frames[extra])
    with pytest.raises(ValueError):
        sample_video(all_frames, 8, [25])


def test_ask_answers_in_single_and_multi_mode(pipeline: VideoReferPipeline, clip) -> None:
    masks = dict(clip.ground_truth.objects[0].masks)
    single = pipeline.ask(video=str(clip.path), masks=[masks], question="What is <region> doing?", max_new_tokens=5)
    assert isinstance(single, str)
    again = pipeline.ask(video=str(clip.path), masks=[masks], question="What is <region> doing?", max_new_tokens=5)
    assert again == single  # greedy
    multi = pipeline.ask(
        video=str(clip.path), masks=[masks, dict(clip.ground_truth.objects[1].masks)],
        question="Which object moves more?", mode="multi", max_new_tokens=5,
    )
    assert isinstance(multi, str)
    batch = pipeline.prepare(video=str(clip.path), masks=[masks], question="<region>?", mode="multi")
    assert (batch["input_ids"] == pipeline.processor.region_token_id).sum() == 4


def test_streaming_delivers_the_same_text_and_sampling_runs(pipeline: VideoReferPipeline, clip) -> None:
    masks = [{0: clip.ground_truth.objects[0].masks[0]}]
    chunks: list[str] = []
    streamed = pipeline.ask(
        video=str(clip.path), masks=masks, question="Describe <region>.", max_new_tokens=6,
        streamer_callback=chunks.append,
    )
    plain = pipeline.ask(video=str(clip.path), masks=masks, question="Describe <region>.", max_new_tokens=6)
    assert streamed == plain
    assert "".join(chunks).strip() == plain
    torch.manual_seed(0)
    sampled = pipeline.ask(
        video=str(clip.path), masks=masks, question="Describe <region>.", max_new_tokens=6, do_sample=True,
        temperature=1.0,
    )
    assert isinstance(sampled, str)


def test_ask_on_a_real_clip(pipeline: VideoReferPipeline, media_dir: Path) -> None:
    from engine.video import probe

    info = probe(media_dir / "dog.mp4")
    mask = np.zeros((info.height, info.width), dtype=bool)
    mask[info.height // 4 : info.height // 2, info.width // 4 : info.width // 2] = True
    answer = pipeline.ask(video=str(media_dir / "dog.mp4"), masks=[{0: mask}], question="<region>?", max_new_tokens=3)
    assert isinstance(answer, str)


# ---------------------------------------------------------------- what the model sees (release parity)


def _blob_mask(height: int, width: int, top: int = 10) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + 16, 12:40] = True
    return mask


def test_frame_count_comes_from_the_model_config_unless_told(pipeline: VideoReferPipeline, clip) -> None:
    processor = pipeline.processor
    masks = [{0: _blob_mask(48, 64)}]
    default = pipeline.prepare(video=str(clip.path), masks=masks, question="<region>?")
    assert int(default["video_frame_counts"][0]) == processor.num_frames
    assert int((default["input_ids"] == processor.video_token_id).sum()) == processor.video_token_count(
        processor.num_frames)
    six = pipeline.prepare(video=str(clip.path), masks=masks, question="<region>?", num_frames=6)
    assert int(six["video_frame_counts"][0]) == 6
    assert int((six["input_ids"] == processor.video_token_id).sum()) == processor.video_token_count(6)


def test_a_time_span_samples_frames_by_the_release_rule(clip) -> None:
    from tests.engine.test_release_sampling import release_frame_sample, release_span_indices

    all_frames = np.random.default_rng(1).integers(0, 255, (90, 6, 6, 3), dtype=np.uint8)
    for start, end in ((1.0, 2.5), (2.5, 1.0), (0.0, 0.0), (-1.0, 10.0), (1.3, None)):
        frames, indices = sample_video(all_frames, 8, start_s=start, end_s=end, fps=30.0)
        span = release_span_indices(90, 30.0, start, end)
        assert indices == [span[i] for i in release_frame_sample(len(span), 8)]
        assert np.array_equal(frames[: len(set(indices))], all_frames[list(dict.fromkeys(indices))])
    with pytest.raises(ValueError, match="fps"):
        sample_video(all_frames, 8, start_s=1.0, end_s=2.0)
    _, from_file = sample_video(str(clip.path), 4, start_s=0.2, end_s=0.9)
    assert all(0 <= i < 20 for i in from_file)


def test_an_image_is_read_once_and_shown_to_the_connector_num_frames_times(pipeline, tmp_path) -> None:
    from PIL import Image

    image = np.random.default_rng(2).integers(0, 255, (30, 44, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    processor = pipeline.processor
    seen: list[int] = []
    hook = pipeline.model.vision_tower.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["pixel_values"].shape[0]), with_kwargs=True
    )
    try:
        answer = pipeline.ask(video=path, masks=[{0: _blob_mask(30, 44, top=4)}], question="What is <region>?",
                              max_new_tokens=3)
    finally:
        hook.remove()
    assert isinstance(answer, str) and seen == [1]
    batch = pipeline.prepare(video=path, masks=[{0: _blob_mask(30, 44, top=4)}], question="What is <region>?")
    assert batch["video_frame_index"].tolist() == [0] * processor.num_frames
    assert torch.equal(batch["pixel_values"], processor.preprocess_frames(image[None]))
    with pytest.raises(InvalidSampleError):
        pipeline.prepare(video=path, masks=[{3: _blob_mask(30, 44)}], question="What is <region>?")


def test_text_only_questions_are_answered(pipeline: VideoReferPipeline) -> None:
    batch = pipeline.prepare(video=None, question="What is a dog?")
    assert "pixel_values" in batch and batch["pixel_values"].shape[0] == 0
    assert not bool((batch["input_ids"] < 0).any())
    assert isinstance(pipeline.ask(video=None, question="What is a dog?", max_new_tokens=3), str)
    with pytest.raises(InvalidSampleError):
        pipeline.prepare(video=None, masks=[{0: _blob_mask(48, 64)}], question="<region>?")


def test_mm_infer_with_the_releases_inputs_equals_ask(pipeline: VideoReferPipeline, clip) -> None:
    """The low-level port fed as the release's Bench-Q loader feeds `mm_infer` gives ask()'s embeddings and answer."""
    from engine.masks import encode_rle
    from engine.video import read_frames
    from tests.model import release_reference as release

    processor = pipeline.processor
    annotations = [
        {str(f): {"segmentation": dict(encode_rle(_blob_mask(48, 64, top=2 + f)))} for f in (1, 4, 7, 13, 19)},
        {str(f): {"segmentation": dict(encode_rle(_blob_mask(48, 64, top=20 - f)))} for f in (4, 9)},
    ]
    question = release.bench_q_question("Is <region> above <region>?", ["(A) yes", "(B) no"])
    ann_indices, frame_nums, all_frames, masks = release.bench_item_masks(annotations, "multi", 0, 48, 64)
    sampled = uniform_indices(20, processor.num_frames)
    video_tensor = processor.preprocess_frames(read_frames(str(clip.path), sampled))
    frame_data = processor.preprocess_frames(read_frames(str(clip.path), all_frames))
    low = pipeline.prepare_tensors(video_tensor, question, masks=masks[None], ann_indices=ann_indices,
                                   frame=frame_data)
    objects = [{int(k): v["segmentation"] for k, v in ann.items()} for ann in annotations]
    high = pipeline.prepare(video=str(clip.path), masks=objects, question=question, mode="multi")
    assert torch.equal(low["input_ids"], high["input_ids"])
    with torch.no_grad():
        low_embeds, _, _ = pipeline.model.build_inputs_embeds(**{k: v for k, v in low.items() if k != "labels"})
        high_embeds, _, _ = pipeline.model.build_inputs_embeds(**{k: v for k, v in high.items() if k != "labels"})
    assert torch.allclose(low_embeds, high_embeds, atol=1e-4)
    answer = pipeline.mm_infer(video_tensor, question, masks=masks[None], ann_indices=ann_indices, frame=frame_data,
                               frame_nums=frame_nums, max_new_tokens=4)
    assert answer == pipeline.ask(video=str(clip.path), masks=objects, question=question, mode="multi",
                                  max_new_tokens=4)


def test_tied_merges_remove_surplus_region_slots_and_close_the_sequence(pipeline: VideoReferPipeline, clip) -> None:
    """Six masks, five of them empty: every similarity is 0, the release merges all into ONE token, not four."""
    processor = pipeline.processor
    empty = np.zeros((48, 64), dtype=bool)
    tied = [{0: _blob_mask(48, 64), 3: empty, 6: empty, 9: empty, 12: empty, 15: empty}]
    untied = [{f: _blob_mask(48, 64, top=2 * f) for f in (0, 3, 6, 9, 12, 15)}]
    batch_tied = pipeline.prepare(video=str(clip.path), masks=tied, question="<region>?", mode="multi")
    assert int((batch_tied["input_ids"] == processor.region_token_id).sum()) == 4  # the most it can get
    inputs = {k: v for k, v in batch_tied.items() if k != "labels"}
    with torch.no_grad():
        embeds, attention, _ = pipeline.model.build_inputs_embeds(**inputs)
    assert embeds.shape[1] == batch_tied["input_ids"].shape[1] - 3 and attention.shape == embeds.shape[:2]
    assert bool(attention.all())
    region_at = int((batch_tied["input_ids"][0] == processor.region_token_id).nonzero()[0])
    after = batch_tied["input_ids"][0, region_at + 4 :]
    plain = pipeline.model.get_input_embeddings()(after.clamp(min=0))
    assert torch.equal(embeds[0, region_at + 1 :], plain)  # the text after the object moved up by three
    assert isinstance(pipeline.ask(video=str(clip.path), masks=tied, question="<region>?", mode="multi",
                                   max_new_tokens=3), str)
    frames, indices = sample_video(str(clip.path), 8, [0, 3, 6, 9, 12, 15])
    turns = [{"from": "human", "value": "<video>\n<region>?"}, {"from": "gpt", "value": "A."}]
    both = processor.collate([
        processor.encode(frames=frames, frame_indices=indices, objects=masks, mode="multi", conversations=turns)
        for masks in (tied, untied)
    ])
    out = pipeline.model(**both)
    assert torch.isfinite(out.loss) and out.logits.shape[1] == both["input_ids"].shape[1]


def test_masks_of_another_size_than_the_video_are_refused(pipeline: VideoReferPipeline, clip) -> None:
    from engine.masks import encode_rle

    small = np.ones((10, 10), dtype=bool)
    for mask in (small, encode_rle(small), {"segmentation": encode_rle(small)}):
        with pytest.raises(InvalidSampleError, match="10x10"):
            pipeline.prepare(video=str(clip.path), masks=[{0: mask}], question="<region>?")


def test_a_folder_that_is_no_model_fails_at_once(tmp_path) -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="not a saved VideoRefer folder"):
        VideoReferPipeline.from_pretrained(tmp_path / "runs" / "nope")
