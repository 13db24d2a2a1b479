"""The server side of `videorefer app` without a browser: `flows.webapp.AppService` (clicks in point and box mode,
refining and removing objects, asking, downloads, input errors) and the `videorefer app` command's arguments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.errors import BadVideoError, InvalidSampleError
from engine.masks import decode_rle, iou


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from flows.cli_app import build_service

    return build_service(model=None, tiny=True, segmenter_config=None, workdir=tmp_path_factory.mktemp("service"),
                         max_new_tokens=4, max_frames=12)


def _centre(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    nearest = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    return float(xs[nearest]), float(ys[nearest])


def test_point_clicks_refine_one_object_and_new_object_starts_the_next(service) -> None:
    from engine.synthetic import load_ground_truth

    example = service.examples[1]
    truth = load_ground_truth(example.path)
    state = service.open(example.path)
    first, second = (decode_rle(o.masks[0]).astype(bool) for o in truth.objects[:2])
    state = service.click(state, *_centre(first), mode="point")
    assert [o.number for o in state.objects] == [1] and state.current == 1
    assert iou(decode_rle(state.objects[0].masklet.masks[0]), first) == 1.0
    state = service.click(state, *_centre(first), mode="point")  # a second point refines object 1
    assert [o.number for o in state.objects] == [1] and len(state.objects[0].prompt.points) == 2
    import dataclasses

    state = dataclasses.replace(state, current=None, pending=())  # "New object"
    state = service.click(state, *_centre(second), mode="point")
    assert [o.number for o in state.objects] == [1, 2]
    assert iou(decode_rle(state.objects[1].masklet.masks[0]), second) == 1.0
    picture = service.picture(state)
    assert picture.shape[1] == 640  # small clips are shown enlarged
    assert service.animation(state).endswith(".webp")
    masks = json.loads(Path(service.masks_file(state)).read_text())
    assert len(masks) == 2 and set(masks[0]) == {str(f) for f in state.video.segment_frames}


def test_two_clicks_in_box_mode_make_an_object(service) -> None:
    from engine.synthetic import load_ground_truth

    example = service.examples[0]
    truth = load_ground_truth(example.path)
    state = service.open(example.path)
    x0, y0, x1, y1 = truth.objects[0].boxes[0]
    state = service.click(state, x0, y0, mode="box")
    assert state.objects == () and state.pending == ((x0, y0),)
    state = service.click(state, x1, y1, mode="box")
    assert len(state.objects) == 1 and state.objects[0].prompt.box == (x0, y0, x1, y1)
    assert iou(decode_rle(state.objects[0].masklet.masks[0]), decode_rle(truth.objects[0].masks[0])) == 1.0
    with pytest.raises(ValueError, match="no area"):
        service.click(service.click(state, 5, 5, mode="box"), 5, 60, mode="box")


def test_asking_streams_and_the_sample_is_valid(service) -> None:
    from engine.synthetic import load_ground_truth

    example = service.examples[0]
    state = service.open(example.path)
    state = service.click(state, *_centre(decode_rle(load_ground_truth(example.path).objects[0].masks[0])),
                          mode="point")
    steps = list(service.ask(state, "What is <region1> doing?", "multi"))
    assert steps[-1][1].answered is not None and steps[-1][0] == steps[-1][1].answered.answer
    path, warning = service.sample_file(steps[-1][1])
    sample = json.loads(Path(path).read_text())
    assert warning == "" and sample["task"] == "qa" and sample["extra"]["mode"] == "multi"
    with pytest.raises(InvalidSampleError):
        next(service.ask(state, "Where is <region3>?", "single"))


def test_opening_a_bad_file_raises_a_typed_error(service, tmp_path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(BadVideoError):
        service.open(bad)
    with pytest.raises(ValueError, match="open a video first"):
        from flows.webapp import PageState

        service.click(PageState(), 1, 1, mode="point")


def test_the_app_command_refuses_a_missing_or_double_model() -> None:
    from flows.cli import app

    runner = CliRunner()
    neither = runner.invoke(app, ["app"])
    assert neither.exit_code != 0 and "--tiny" in neither.output
    both = runner.invoke(app, ["app", "--tiny", "--model", "x"])
    assert both.exit_code != 0
    no_segmenter = runner.invoke(app, ["app", "--model", "x"])
    assert no_segmenter.exit_code != 0 and "--segmenter-config" in no_segmenter.output


def test_a_model_folder_and_a_segmenter_config_build_the_service_the_page_names(service, tmp_path) -> None:
    from flows.cli_app import build_service

    offline = Path(__file__).resolve().parents[2] / "configs" / "offline.yaml"
    named = build_service(model=service.workdir / "tiny-model", tiny=False, segmenter_config=offline,
                          workdir=tmp_path, examples=False, max_frames=6)
    assert str(service.workdir / "tiny-model") in named.notice and "RANDOM" not in named.notice
    assert "FAKE" in named.notice and named.examples == () and named.limits.max_frames == 6
