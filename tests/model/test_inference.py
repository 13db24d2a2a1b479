"""The inference pipeline on a generated clip: frame sampling with extra mask frames, greedy, sampling, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

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
