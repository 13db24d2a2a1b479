"""`videorefer model info` and `videorefer infer` through typer's CliRunner (the commands of flows/cli_model.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.masks import decode_rle
from flows.cli import app

runner = CliRunner()
OFFLINE = str(Path(__file__).resolve().parents[2] / "configs" / "offline.yaml")  # the fake segmenter


def test_model_info_7b_reports_the_papers_token_and_parameter_counts() -> None:
    result = runner.invoke(app, ["model", "info", "--preset", "7b"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["video_tokens_16_frames"] == 1352
    assert report["parameters"]["object_encoder"] == 16_980_992
    assert report["tokens_per_object"] == {"single": 1, "multi_max": 4}
    parts = ("vision", "connector", "object_encoder", "llm")
    assert report["parameters"]["total"] == sum(report["parameters"][p] for p in parts)


def test_model_info_tiny_and_a_saved_model(tiny_model_dir) -> None:
    tiny = json.loads(runner.invoke(app, ["model", "info", "--preset", "tiny"]).output)
    saved = json.loads(runner.invoke(app, ["model", "info", "--model", str(tiny_model_dir)]).output)
    assert tiny["parameters"] == saved["parameters"]
    assert tiny["grid"] == 8
    assert runner.invoke(app, ["model", "info", "--preset", "70b"]).exit_code == 1


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from engine.synthetic import make_clip

    return make_clip(tmp_path_factory.mktemp("cli") / "clip.mp4", seed=5, num_frames=16, width=64, height=48)


def test_infer_streams_an_answer_for_masks_in_the_700k_annotation_format(tiny_model_dir, clip, tmp_path) -> None:
    masks = clip.ground_truth.objects[0].masks
    annotation = [{str(frame): {"segmentation": masks[frame].to_coco()} for frame in (0, 5, 10)}]
    masks_file = tmp_path / "masks.json"
    masks_file.write_text(json.dumps(annotation))
    args = ["infer", "--model", str(tiny_model_dir), "--video", str(clip.path), "--masks", str(masks_file)]
    result = runner.invoke(app, [*args, "--question", "What is <region> doing?", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    multi = runner.invoke(
        app, [*args, "--question", "Describe it.", "--mode", "multi", "--max-new-tokens", "3", "--sample"]
    )
    assert multi.exit_code == 0, multi.output


def test_infer_accepts_one_objects_frame_to_rle_mapping(tiny_model_dir, clip, tmp_path) -> None:
    rle = clip.ground_truth.objects[1].masks[3].to_coco()
    assert decode_rle(rle).any()
    masks_file = tmp_path / "one.json"
    masks_file.write_text(json.dumps({"3": rle}))
    result = runner.invoke(
        app,
        ["infer", "--model", str(tiny_model_dir), "--video", str(clip.path), "--masks", str(masks_file),
         "--question", "<region>?", "--max-new-tokens", "2"],
    )
    assert result.exit_code == 0, result.output


def test_infer_rejects_bad_arguments(tiny_model_dir, clip, tmp_path) -> None:
    base = ["infer", "--model", str(tiny_model_dir), "--video", str(clip.path), "--question", "<region>?"]
    assert runner.invoke(app, base).exit_code != 0  # neither --masks nor --box
    assert runner.invoke(app, [*base, "--box", "1,2,3,4"]).exit_code != 0  # --box without --frame
    masks_file = tmp_path / "m.json"
    masks_file.write_text(json.dumps({"3": clip.ground_truth.objects[0].masks[3].to_coco()}))
    two_regions = ["infer", "--model", str(tiny_model_dir), "--video", str(clip.path), "--masks", str(masks_file),
                   "--question", "<region> and <region>?"]
    result = runner.invoke(app, two_regions)
    assert result.exit_code == 1 and "error" in result.output


def test_infer_with_several_boxes_segments_each_object_and_saves_the_masklets(tiny_model_dir, clip, tmp_path) -> None:
    from PIL import Image

    from engine.masks import iou
    from flows.cli_model import load_masks_file

    boxes = [",".join(str(v) for v in obj.boxes[4]) for obj in clip.ground_truth.objects[:2]]
    saved = tmp_path / "out" / "masklets.json"
    base = ["infer", "--model", str(tiny_model_dir), "--video", str(clip.path), "--max-new-tokens", "2",
            "--segmenter-config", OFFLINE]
    result = runner.invoke(app, [*base, "--question", "Is <region> near <region>?", "--box", boxes[0], "--box",
                                 boxes[1], "--frame", "4", "--mode", "multi", "--save-masklet", str(saved)])
    assert result.exit_code == 0, result.output
    objects = load_masks_file(saved)
    assert len(objects) == 2
    for obj, truth in zip(objects, clip.ground_truth.objects[:2], strict=True):
        assert 4 in obj and all(
            iou(decode_rle(mask["segmentation"]), decode_rle(truth.masks[frame])) == 1.0 for frame, mask in obj.items()
        )
    with Image.open(saved.with_suffix(".png")) as preview:
        assert preview.height == clip.ground_truth.height and preview.width >= 2 * clip.ground_truth.width
    per_box = runner.invoke(app, [*base, "--question", "<region> or <region>?", "--box", boxes[0], "--box", boxes[1],
                                  "--frame", "4", "--frame", "6"])
    assert per_box.exit_code == 0, per_box.output


def test_infer_box_refuses_what_it_cannot_do(tiny_model_dir, clip) -> None:
    base = ["infer", "--model", str(tiny_model_dir), "--video", str(clip.path), "--question", "<region>?"]
    no_config = runner.invoke(app, [*base, "--box", "1,2,30,40", "--frame", "0"])
    assert no_config.exit_code != 0 and "--segmenter-config" in no_config.output
    config = ["--segmenter-config", OFFLINE]
    frames = runner.invoke(app, [*base, *config, "--box", "1,2,30,40", "--box", "1,2,9,9", "--frame", "0",
                                 "--frame", "1", "--frame", "2"])
    assert frames.exit_code != 0 and "once per --box" in frames.output
    past = runner.invoke(app, [*base, *config, "--box", "1,2,30,40", "--frame", "99"])
    assert past.exit_code != 0 and "past the video" in past.output
    assert runner.invoke(app, [*base, "--masks", "m.json", "--save-masklet", "x.json"]).exit_code != 0


@pytest.mark.slow  # random-weight SAM 2 on CPU: ~20 s of CPU time
def test_infer_with_a_box_builds_the_masklet_with_sam2_first(tiny_model_dir, clip, tmp_path) -> None:
    config = tmp_path / "sam2.yaml"
    config.write_text("agents:\n  segmenter: {kind: sam2, random_weights: true, image_size: 128}\n")
    x0, y0, x1, y1 = clip.ground_truth.objects[0].boxes[4]
    result = runner.invoke(
        app,
        ["infer", "--model", str(tiny_model_dir), "--video", str(clip.path), "--question", "What is <region>?",
         "--box", f"{x0},{y0},{x1},{y1}", "--frame", "4", "--mode", "multi", "--max-new-tokens", "2",
         "--segmenter-config", str(config)],
    )
    assert result.exit_code == 0, result.output


def test_model_convert_turns_a_released_layout_into_a_loadable_folder(tmp_path) -> None:
    import torch
    from safetensors.torch import save_file

    from model.checkpoint import released_state_dict
    from model.configuration import preset
    from model.modeling import VideoReferForCausalLM
    from model.processing import build_tiny_tokenizer

    torch.manual_seed(0)
    source = VideoReferForCausalLM(preset("tiny"))
    release = tmp_path / "release"
    release.mkdir()
    save_file({k: v.contiguous() for k, v in released_state_dict(source).items()}, str(release / "model.safetensors"))
    build_tiny_tokenizer(release)
    siglip = tmp_path / "siglip.safetensors"
    save_file({f"vision_model.{k}": v for k, v in source.vision_tower.state_dict().items()}, str(siglip))
    args = ["model", "convert", "--checkpoint", str(release), "--vision-tower", str(siglip), "--preset", "tiny"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out"), "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    loaded = VideoReferForCausalLM.from_pretrained(tmp_path / "out")
    pairs = zip(source.state_dict().values(), loaded.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    wrong = runner.invoke(app, ["model", "convert", "--checkpoint", str(release), "--vision-tower", str(siglip),
                                "--out", str(tmp_path / "bad")])  # 7b shapes do not fit tiny weights
    assert wrong.exit_code == 1


def test_infer_on_an_image_a_span_and_text_only(tiny_model_dir, clip, tmp_path) -> None:
    from PIL import Image

    base = ["infer", "--model", str(tiny_model_dir), "--max-new-tokens", "2"]
    masks_file = tmp_path / "m.json"
    masks_file.write_text(json.dumps({"3": clip.ground_truth.objects[0].masks[3].to_coco()}))
    span = runner.invoke(app, [*base, "--video", str(clip.path), "--masks", str(masks_file), "--question",
                               "<region>?", "--start", "0.1", "--end", "0.6", "--num-frames", "4"])
    assert span.exit_code == 0, span.output
    image = tmp_path / "frame.png"
    from engine.video import read_frames

    Image.fromarray(read_frames(clip.path, [3])[0]).save(image)
    on_image = tmp_path / "image_masks.json"
    on_image.write_text(json.dumps({"0": clip.ground_truth.objects[0].masks[3].to_coco()}))
    result = runner.invoke(app, [*base, "--video", str(image), "--masks", str(on_image), "--question", "<region>?"])
    assert result.exit_code == 0, result.output
    text = runner.invoke(app, [*base, "--question", "Say hello."])
    assert text.exit_code == 0, text.output
    assert runner.invoke(app, [*base, "--masks", str(masks_file), "--question", "<region>?"]).exit_code != 0


def test_model_info_reports_the_release_evaluation_token_count() -> None:
    report = json.loads(runner.invoke(app, ["model", "info", "--preset", "7b"]).output)
    assert report["video_tokens_8_frames"] == 676 and report["image_tokens"] == 1352


def test_frame_count_says_which_count_and_why() -> None:
    from flows.cli_model import frame_count

    count, why = frame_count(None, None, 16)
    assert count == 16 and "model's config" in why and "use 8" in why and "--protocol release" in why
    release = "--protocol release: the release's notebook and Bench scripts use 8"
    assert frame_count(None, "release", 16) == (8, release)
    assert frame_count(None, "paper", 4)[0] == 16
    assert frame_count(6, "release", 16) == (6, "--num-frames")  # an explicit count wins over the protocol's
    assert frame_count(6, None, 16) == (6, "--num-frames")
    assert frame_count(None, None, 8)[1].endswith("as the release's notebook and Bench scripts")


def test_infer_prints_the_frame_count_it_uses_and_why(tiny_model_dir, clip, tmp_path) -> None:
    masks_file = tmp_path / "m.json"
    masks_file.write_text(json.dumps({"3": clip.ground_truth.objects[0].masks[3].to_coco()}))
    base = ["infer", "--model", str(tiny_model_dir), "--video", str(clip.path), "--masks", str(masks_file),
            "--question", "<region>?", "--max-new-tokens", "1"]
    default = runner.invoke(app, base)
    assert default.exit_code == 0, default.output
    assert "frames: 8 (the model's config (num_frames), as the release's" in default.output  # the tiny model's 8
    paper = runner.invoke(app, [*base, "--protocol", "paper"])
    assert paper.exit_code == 0, paper.output
    assert "frames: 16 (--protocol paper" in paper.output
    release = runner.invoke(app, [*base, "--protocol", "release", "--num-frames", "4"])
    assert release.exit_code == 0, release.output
    assert "frames: 4 (--num-frames)" in release.output
    unknown = runner.invoke(app, [*base, "--protocol", "nope"])
    assert unknown.exit_code == 1 and "unknown protocol 'nope'" in unknown.output


def test_infer_checks_its_inputs_before_the_model_loads(tiny_model_dir, clip, tmp_path, monkeypatch) -> None:
    from engine.masks import encode_rle
    from model.inference import VideoReferPipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(VideoReferPipeline, "from_pretrained", classmethod(no_loading))
    base = ["infer", "--model", str(tiny_model_dir), "--video", str(clip.path), "--question", "<region>?"]
    wrong_size = tmp_path / "wrong.json"
    wrong_size.write_text(json.dumps({"3": encode_rle(np.ones((20, 20), dtype=bool))}))  # the clip is 48 x 64
    result = runner.invoke(app, [*base, "--masks", str(wrong_size)])
    assert result.exit_code == 1 and "error:" in result.output and "mask is 20x20" in result.output
    assert "was loaded" not in str(result.exception or "")
    no_model = tmp_path / "sam2.yaml"
    no_model.write_text("agents:\n  segmenter: {kind: sam2}\n")  # neither a model folder nor random weights
    result = runner.invoke(app, [*base, "--box", "1,2,30,40", "--frame", "0", "--segmenter-config", str(no_model)])
    assert result.exit_code == 1 and f"--segmenter-config {no_model}" in result.output
    assert "was loaded" not in str(result.exception or "")
    missing_model = runner.invoke(app, ["infer", "--model", str(tmp_path / "nope"), "--question", "hi"])
    assert missing_model.exit_code == 1 and "not a saved VideoRefer model folder" in missing_model.output
