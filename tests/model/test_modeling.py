"""The assembled model: loss on processor batches, frames encoded once, freezing per stage, generation, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.modeling import VideoReferForCausalLM, default_attn_implementation, set_trainable
from model.processing import VideoReferProcessor

SAMPLED = [0, 2, 4, 6, 8, 10, 12, 14]


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 40, 56, 3), dtype=np.uint8)


def _mask(x0: int = 8) -> np.ndarray:
    mask = np.zeros((40, 56), dtype=bool)
    mask[8:24, x0 : x0 + 16] = True
    return mask


def _batch(processor: VideoReferProcessor) -> dict[str, torch.Tensor]:
    single = processor.encode(
        frames=_frames(8), frame_indices=SAMPLED, objects=[{4: _mask()}],
        conversations=[{"from": "human", "value": "<video>\nDescribe <region>."}, {"from": "gpt", "value": "A cat."}],
    )
    multi = processor.encode(
        frames=_frames(9, seed=1),
        frame_indices=SAMPLED,
        objects=[{0: _mask(), 2: _mask(20), 6: _mask(30)}, {3: _mask()}],
        conversations=[
            {"from": "human", "value": "<video>\nIs <region> near <region>?"}, {"from": "gpt", "value": "No, far."},
        ],
        mode="multi",
    )
    return processor.collate([single, multi])


@pytest.fixture()
def tiny_model(tiny_model_dir) -> VideoReferForCausalLM:
    return VideoReferForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_forward_on_a_collated_batch_returns_a_loss(tiny_model, tiny_processor) -> None:
    batch = _batch(tiny_processor)
    out = tiny_model(**batch)
    assert out.logits.shape == (*batch["input_ids"].shape, tiny_model.config.llm_vocab_size)
    assert torch.isfinite(out.loss) and out.loss > 0


def test_each_frame_goes_through_the_vision_tower_once(tiny_model, tiny_processor) -> None:
    seen: list[int] = []
    hook = tiny_model.vision_tower.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["pixel_values"].shape[0]), with_kwargs=True
    )
    try:
        tiny_model(**_batch(tiny_processor))
        image = tiny_processor.encode(  # an image: num_frames copies of one frame, as the release feeds it
            frames=_frames(1), frame_indices=[0] * 8, objects=[{0: _mask()}],
            conversations=[{"from": "human", "value": "<image>\nWhat is <region>?"}],
            add_generation_prompt=True,
        )
        tiny_model(**tiny_processor.collate([image]))
    finally:
        hook.remove()
    # 8 + (8 sampled + 1 extra mask frame): mask frames among the sampled ones are not encoded again; the image's
    # 8 copies are one frame for the vision tower.
    assert seen == [17, 1]
    assert (image["input_ids"] == tiny_model.config.video_token_id).sum() == tiny_model.config.video_token_count(8)


def test_object_tokens_land_on_the_region_slots(tiny_model, tiny_processor) -> None:
    batch = _batch(tiny_processor)
    embeds, _, _ = tiny_model.build_inputs_embeds(
        batch["input_ids"], batch["pixel_values"], batch["frame_counts"], batch["video_frame_counts"],
        batch["object_masks"], batch["mask_frame_index"], batch["mask_object_index"], batch["video_frame_index"],
    )
    features = tiny_model.vision_tower(pixel_values=batch["pixel_values"], output_hidden_states=True).hidden_states[-2]
    features = features.reshape(-1, 8, 8, features.shape[-1])
    object_tokens, counts = tiny_model.object_encoder(
        features, batch["object_masks"], batch["mask_frame_index"], batch["mask_object_index"], 3
    )
    assert counts.tolist() == [1, 3, 1]
    region_slots = batch["input_ids"] == tiny_model.config.region_token_id
    assert torch.allclose(embeds[region_slots], object_tokens, atol=1e-5)
    text_slots = batch["input_ids"] >= 0
    text_slots &= ~region_slots
    plain = tiny_model.get_input_embeddings()(batch["input_ids"].clamp(min=0))
    assert torch.equal(embeds[text_slots], plain[text_slots])


def test_slot_counts_that_do_not_match_the_objects_fail_loudly(tiny_model, tiny_processor) -> None:
    batch = _batch(tiny_processor)
    batch["mask_object_index"] = torch.zeros_like(batch["mask_object_index"])
    with pytest.raises(ValueError, match="region"):
        tiny_model(**batch)


@pytest.mark.parametrize(
    ("groups", "trained"),
    [
        ({"object_encoder"}, {"object_encoder"}),
        ({"connector"}, {"connector"}),
        ({"connector", "object_encoder", "llm"}, {"connector", "object_encoder", "language_model"}),
    ],
)
def test_gradients_reach_exactly_the_modules_a_stage_trains(tiny_model, tiny_processor, groups, trained) -> None:
    tiny_model.train()
    names = set_trainable(tiny_model, groups)
    assert names and all(name.split(".")[0] in trained for name in names)
    tiny_model(**_batch(tiny_processor)).loss.backward()
    for name, parameter in tiny_model.named_parameters():
        has_gradient = parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)
        if name.split(".")[0] in trained and not name.startswith("language_model.lm_head"):
            assert parameter.requires_grad, name
        if name.split(".")[0] not in trained:
            assert not has_gradient, name
    touched = {name.split(".")[0] for name, p in tiny_model.named_parameters() if p.grad is not None}
    assert touched == trained
    with pytest.raises(ValueError):
        set_trainable(tiny_model, {"projector"})


def test_greedy_generation_is_deterministic_and_bounded(tiny_model, tiny_processor) -> None:
    item = tiny_processor.encode(
        frames=_frames(8), frame_indices=SAMPLED, objects=[{4: _mask()}],
        conversations=[{"from": "human", "value": "<video>\nDescribe <region>."}], add_generation_prompt=True,
    )
    batch = tiny_processor.collate([item], padding_side="left")
    first = tiny_model.generate(**batch, max_new_tokens=6, do_sample=False)
    second = tiny_model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert torch.equal(first, second)
    assert 1 <= first.shape[1] <= 6
    assert isinstance(tiny_processor.decode(first[0]), str)


def test_save_and_load_round_trip_exactly(tiny_model, tiny_processor, tmp_path) -> None:
    tiny_model.save_pretrained(tmp_path)
    loaded = VideoReferForCausalLM.from_pretrained(tmp_path).eval()
    original, reloaded = tiny_model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[name], reloaded[name]) for name in original)
    batch = _batch(tiny_processor)
    with torch.no_grad():
        assert torch.equal(tiny_model(**batch).logits, loaded(**batch).logits)
    assert not any(p.requires_grad for p in loaded.vision_tower.parameters())


def test_attention_is_sdpa_without_cuda_and_flash_attn() -> None:
    assert default_attn_implementation("cpu") == "sdpa"
    assert default_attn_implementation(None) == "sdpa"


def test_left_padded_batch_generation_matches_one_by_one(tiny_model, tiny_processor) -> None:
    short = tiny_processor.encode(
        frames=_frames(8), frame_indices=SAMPLED, objects=[{4: _mask()}],
        conversations=[{"from": "human", "value": "<region>?"}], add_generation_prompt=True,
    )
    long = tiny_processor.encode(
        frames=_frames(8, seed=2), frame_indices=SAMPLED, objects=[{2: _mask()}, {6: _mask(30)}],
        conversations=[{"from": "human", "value": "Is <region> bigger than <region> in this long video?"}],
        add_generation_prompt=True,
    )
    options = {"max_new_tokens": 5, "do_sample": False}
    together = tiny_model.generate(**tiny_processor.collate([short, long], padding_side="left"), **options)
    for row, item in enumerate((short, long)):
        alone = tiny_model.generate(**tiny_processor.collate([item], padding_side="left"), **options)
        assert together[row, : alone.shape[1]].tolist() == alone[0].tolist()
