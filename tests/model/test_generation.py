"""Generation settings: the folder's generation_config.json, the release's mm_infer defaults, and overrides."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from model.generation import RELEASE_MAX_NEW_TOKENS, decoding_config, load_generation_config
from model.inference import VideoReferPipeline

QUESTION = "What is <region> doing?"


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def _video() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (12, 40, 56, 3), dtype=np.uint8)


def _masks() -> list[dict[int, np.ndarray]]:
    mask = np.zeros((40, 56), dtype=bool)
    mask[8:30, 10:40] = True
    return [{3: mask}]


def test_saved_folders_carry_a_generation_config_that_stops_at_im_end(tiny_model_dir) -> None:
    written = json.loads((tiny_model_dir / "generation_config.json").read_text())
    pipeline = VideoReferPipeline.from_pretrained(tiny_model_dir)
    assert written["eos_token_id"] == [pipeline.processor.im_end_id]


def test_decoding_defaults_are_the_release_mm_infer_ones_on_top_of_the_file(tiny_processor) -> None:
    base = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05,
                            eos_token_id=[7, 0])
    greedy = decoding_config(base, tiny_processor)
    assert greedy.do_sample is False and greedy.max_new_tokens == RELEASE_MAX_NEW_TOKENS == 2048
    assert greedy.repetition_penalty == 1.05  # the file's, as in the release's generate call
    assert greedy.eos_token_id == [7, 0, tiny_processor.im_end_id]
    assert greedy.temperature is None and greedy.top_p is None and greedy.top_k is None
    sampled = decoding_config(base, tiny_processor, do_sample=True, max_new_tokens=5)
    assert (sampled.temperature, sampled.top_p, sampled.max_new_tokens) == (0.2, 0.9, 5)
    override = decoding_config(base, tiny_processor, repetition_penalty=1.0, do_sample=True, temperature=1.0)
    assert override.repetition_penalty == 1.0 and override.temperature == 1.0
    assert base.repetition_penalty == 1.05 and base.do_sample is True  # the loaded config is not changed


def test_the_files_eos_and_repetition_penalty_change_what_ask_generates(model_copy, tiny_processor) -> None:
    pipeline = VideoReferPipeline.from_pretrained(model_copy)
    batch = pipeline.prepare(video=_video(), masks=_masks(), question=QUESTION)
    free = pipeline.model.generate(**batch, generation_config=decoding_config(
        pipeline.generation_config, tiny_processor, max_new_tokens=12))
    first = int(free[0, 0])
    assert free.shape[1] > 1
    GenerationConfig(eos_token_id=[first], repetition_penalty=1.0).save_pretrained(str(model_copy))
    stopped = VideoReferPipeline.from_pretrained(model_copy)
    assert load_generation_config(model_copy, tiny_processor).eos_token_id == [first]
    out = stopped.model.generate(**batch, generation_config=decoding_config(
        stopped.generation_config, tiny_processor, max_new_tokens=12))
    assert out[0].tolist() == [first]  # stops at the file's eos id
    repeated = free[0].tolist()
    if len(set(repeated)) < len(repeated):  # the tiny random model repeats itself: a strong penalty must change that
        GenerationConfig(repetition_penalty=50.0).save_pretrained(str(model_copy))
        penalised = VideoReferPipeline.from_pretrained(model_copy)
        again = penalised.model.generate(**batch, generation_config=decoding_config(
            penalised.generation_config, tiny_processor, max_new_tokens=12))
        assert again[0].tolist() != repeated
        assert len(set(again[0].tolist())) == again.shape[1]
    text = stopped.ask(video=_video(), masks=_masks(), question=QUESTION)
    assert text == tiny_processor.decode([first]).strip()


def test_generation_is_bounded_by_max_new_tokens(tiny_model_dir) -> None:
    pipeline = VideoReferPipeline.from_pretrained(tiny_model_dir)
    batch = pipeline.prepare(video=_video(), masks=_masks(), question=QUESTION)
    config = decoding_config(pipeline.generation_config, pipeline.processor, max_new_tokens=3)
    assert pipeline.model.generate(**batch, generation_config=config).shape[1] <= 3
    assert torch.is_tensor(batch["video_frame_index"])


def test_save_pretrained_alone_writes_a_generation_config(tiny_model_dir, tmp_path) -> None:
    from model.modeling import VideoReferForCausalLM

    model = VideoReferForCausalLM.from_pretrained(tiny_model_dir)
    model.save_pretrained(str(tmp_path / "plain"))
    assert (tmp_path / "plain" / "generation_config.json").is_file()
