"""`videorefer audit`: J&F of the engine's masks against ground truth, the labelling page, the reviewer's scores.

Roots are built without Prefect (`ingest` + `run_stage` over `SHARD_STAGES`) from the demo's synthetic corpus with
the offline profile; variants change only the fake segmenter's labelled degradation or the fake judge's
`disagree_rate`. The shared real clips get a hand-drawn box as DAVIS-layout ground truth.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from agents.backends.fake_vision import filled_box_mask, hashed_central_box
from engine.config import EngineConfig
from flows.audit import review as audit_review
from flows.audit.masks import audit_masks
from flows.audit.page import write_review_page
from flows.cli import app
from flows.pipeline import layout
from flows.pipeline.ingest import ingest
from flows.pipeline.runner import run_stage
from flows.pipeline.stages import SHARD_STAGES, chained_hash
from storage.truth import SidecarTruth, read_truth
from tests.engine import davis_reference as davis
from tests.flows.conftest import make_inputs, tiny_config

CLEAN: dict[str, Any] = {}
SHIFTED = {"agents": {"segmenter": {"kind": "fake", "degrade": {"shift_px": 1}}}}
DAMAGED = {"agents": {"segmenter": {"kind": "fake", "degrade": {"shift_px": 3, "erode_px": 1}}}}
DISAGREEING = {"agents": {"judge": {"kind": "fake", "disagree_rate": 0.5}}}


def build(root: Path, manifest: Path, config: EngineConfig, stages: tuple[str, ...] = SHARD_STAGES) -> None:
    ingest(root, manifest, config)
    for shard in layout.shards(layout.open_root(root)):
        for stage in stages:
            run_stage(root, stage, shard, config)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audit-corpus")
    make_inputs(root, clips=8, qa_clips=1)
    return root


@pytest.fixture(scope="module")
def built(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, dict[str, Any]], Path]:
    """`built(name, overrides)`: a root of the template corpus built with the tiny config plus `overrides`."""
    roots: dict[str, Path] = {}

    def make(name: str, overrides: dict[str, Any]) -> Path:
        if name not in roots:
            root = tmp_path_factory.mktemp(f"audit-{name}") / "root"
            shutil.copytree(template, root)
            build(root, root / "manifest.jsonl", tiny_config(max_reject_fraction=1.0, **overrides))
            roots[name] = root
        return roots[name]

    return make


# ------------------------------------------------------------------ audit masks


def test_the_offline_profile_masks_are_perfect_and_the_report_is_written(built) -> None:
    root = built("clean", CLEAN)
    audit = audit_masks(root, SidecarTruth())
    summary = audit.summary
    assert summary.stage == "segment" and summary.truth_objects > summary.found > 0
    assert summary.J_mean == pytest.approx(1.0) and summary.F_mean == pytest.approx(1.0)
    assert summary.recall_moving == pytest.approx(1.0)  # only the objects that stay still are dropped (annotator)
    assert audit.summaries["short_captions"].J_mean == pytest.approx(1.0)

    report = json.loads((root / "reports" / "audit" / "masks.json").read_text())
    for key in ("J_mean", "F_mean", "JF_mean", "objects", "recall", "worst", "stages"):
        assert key in report
    assert report["JF_mean"] == pytest.approx(1.0) and report["recall"] == pytest.approx(summary.recall)
    assert len(report["objects"]) == sum(s.truth_objects for s in audit.summaries.values())
    missed = [o for o in report["objects"] if not o["matched"]]
    assert missed and all(o["J"] == 0.0 for o in missed if o["stage"] == "segment")
    assert report["worst"]
    for case in report["worst"]:
        assert case["image"].startswith("audit/") and {"clip_id", "object_id", "J", "F"} <= set(case)
        picture = root / "reports" / case["image"]
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_j_and_f_fall_as_the_fake_segmenter_is_degraded(built) -> None:
    scores = [audit_masks(built(name, overrides), SidecarTruth(), write=False).summary
              for name, overrides in (("clean", CLEAN), ("shifted", SHIFTED), ("damaged", DAMAGED))]
    print("J", [round(s.J_mean, 3) for s in scores], "F", [round(s.F_mean, 3) for s in scores])
    assert scores[0].J_mean > scores[1].J_mean > scores[2].J_mean
    assert scores[0].F_mean > scores[1].F_mean > scores[2].F_mean
    assert scores[0].recall >= scores[2].recall
    config = tiny_config()
    degraded = tiny_config(**DAMAGED)
    assert chained_hash(config, "segment") != chained_hash(degraded, "segment")  # the degradation re-runs segment
    assert chained_hash(config, "analyze") == chained_hash(degraded, "analyze")


# ------------------------------------------------------------------ the reviewer


def _truth_score(root: Path) -> audit_review.ReviewerScore:
    picked = audit_review.sample_candidates(audit_review.review_candidates(root), 200)
    labels = audit_review.truth_labels(picked, SidecarTruth())
    document = audit_review.labels_document(picked, labels, labeller="synthetic-truth", root=str(root), seed=0,
                                            sample=200)
    return audit_review.score_labels(document)


def test_candidates_are_the_reviewed_objects_with_their_decisions(built) -> None:
    root = built("disagreeing", DISAGREEING)
    candidates = audit_review.review_candidates(root)
    droot = layout.open_root(root)
    kept = sum(len(layout.read_stage(droot, "review", s)) for s in layout.shards(droot))
    assert sum(c.decision == "keep" for c in candidates) == kept
    dropped = [c for c in candidates if c.decision == "drop"]
    assert dropped and all(c.region_caption and c.reason for c in dropped)
    assert any("disagreeing on purpose" in c.reason for c in candidates)


def test_reviewer_scores_fall_with_disagree_rate_and_degraded_masks(built) -> None:
    clean = _truth_score(built("clean", CLEAN))
    disagreeing = _truth_score(built("disagreeing", DISAGREEING))
    damaged = _truth_score(built("damaged", DAMAGED))
    print("clean", clean.to_json(), "\ndisagree_rate 0.5", disagreeing.to_json(), "\ndamaged", damaged.to_json())
    assert clean.labelled == disagreeing.labelled > 0
    assert disagreeing.f1 < clean.f1 and disagreeing.accuracy < clean.accuracy
    assert disagreeing.recall < clean.recall
    assert damaged.fp > clean.fp  # the truth drops masklets the reviewer still keeps


def test_the_sample_is_deterministic(built) -> None:
    candidates = audit_review.review_candidates(built("clean", CLEAN))
    first = [c.object_id for c in audit_review.sample_candidates(candidates, 5, seed=1)]
    assert first == [c.object_id for c in audit_review.sample_candidates(list(reversed(candidates)), 5, seed=1)]
    assert first != [c.object_id for c in audit_review.sample_candidates(candidates, 5, seed=2)]
    assert len(audit_review.sample_candidates(candidates, 0)) == len(candidates)


def test_the_labelling_page_is_self_contained(built) -> None:
    root = built("disagreeing", DISAGREEING)
    page = write_review_page(root, sample=6, seed=0)
    text = (root / "reports" / "audit" / "review.html").read_text()
    assert page.items == 6 == text.count('class="card"')
    assert text.count("data:image/jpeg;base64,") == 6
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing loaded from anywhere
    assert "<script src" not in text and "<link" not in text
    assert text.count('<button type="button" data-label="keep"') == 6
    assert text.count('<button type="button" data-label="drop"') == 6
    assert 'id="download"' in text and "encodeURIComponent" in text
    for candidate in audit_review.sample_candidates(audit_review.review_candidates(root), 6):
        assert f'data-object-id="{candidate.object_id}"' in text
        assert f'data-reviewer="{candidate.decision}"' in text
        assert candidate.record.descriptions.appearance in text


def _labels_file(path: Path, pairs: list[tuple[str, str | None]]) -> Path:
    items = [{"object_id": f"o{k}", "clip_id": "c", "noun": "ball", "reviewer": reviewer, "label": label}
             for k, (reviewer, label) in enumerate(pairs)]
    path.write_text(json.dumps({"kind": audit_review.LABELS_KIND, "version": 1, "items": items}))
    return path


def test_score_on_known_counts(tmp_path: Path) -> None:
    pairs = ([("keep", "keep")] * 3 + [("keep", "drop")] + [("drop", "keep")] * 2 + [("drop", "drop")] * 4
             + [("keep", None)])
    path = _labels_file(tmp_path / "labels.json", pairs)
    score = audit_review.score_labels(audit_review.read_labels(path))
    assert (score.tp, score.fp, score.fn, score.tn, score.unlabelled) == (3, 1, 2, 4, 1)
    assert score.precision == pytest.approx(0.75) and score.recall == pytest.approx(0.6)
    assert score.f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35) and score.accuracy == pytest.approx(0.7)
    result = CliRunner().invoke(app, ["audit", "score", "--labels", str(path)])
    assert result.exit_code == 0, result.output
    assert re.search(r"precision\s+0\.750\s+0\.88", result.output)
    assert re.search(r"recall\s+0\.600\s+0\.71", result.output)
    assert re.search(r"f1\s+0\.667\s+0\.79", result.output)
    assert re.search(r"accuracy\s+0\.700\s+0\.76", result.output)
    assert "TP 3 FP 1 FN 2 TN 4" in result.output


def test_score_edge_cases(tmp_path: Path) -> None:
    nobody_kept = audit_review.score_labels({"items": [{"object_id": "a", "reviewer": "drop", "label": "drop"}]})
    assert nobody_kept.precision is None and nobody_kept.recall is None and nobody_kept.accuracy == 1.0
    unlabelled = _labels_file(tmp_path / "none.json", [("keep", None)])
    assert CliRunner().invoke(app, ["audit", "score", "--labels", str(unlabelled)]).exit_code == 1
    (tmp_path / "other.json").write_text(json.dumps({"kind": "something-else", "items": []}))
    result = CliRunner().invoke(app, ["audit", "score", "--labels", str(tmp_path / "other.json")])
    assert result.exit_code == 1 and "labels" in result.output


def test_the_commands_on_a_demo_root(built, tmp_path: Path) -> None:
    root = built("clean", CLEAN)
    runner = CliRunner()
    result = runner.invoke(app, ["audit", "masks", "--root", str(root), "--worst", "2"])
    assert result.exit_code == 0, result.output
    assert re.search(r"segment\s+1\.000\s+1\.000\s+1\.000", result.output)
    assert len(list((root / "reports" / "audit").glob("masks-worst-*.png"))) == 2  # old pictures were removed
    result = runner.invoke(app, ["audit", "review", "--root", str(root), "--sample", "200"])
    assert result.exit_code == 0, result.output and (root / "reports" / "audit" / "review.html").is_file()
    result = runner.invoke(app, ["audit", "truth-labels", "--root", str(root), "--sample", "200"])
    assert result.exit_code == 0, result.output
    labels_path = root / "reports" / "audit" / "review-labels.truth.json"
    labels = json.loads(labels_path.read_text())
    assert labels["kind"] == audit_review.LABELS_KIND and labels["labeller"] == "synthetic-truth"
    assert {item["label"] for item in labels["items"]} <= {"keep", "drop"}
    # With --root the decisions come from the root, not from the file: flip them in the file to see it.
    for item in labels["items"]:
        item["reviewer"] = "drop" if item["reviewer"] == "keep" else "keep"
    flipped = tmp_path / "flipped.json"
    flipped.write_text(json.dumps(labels))
    from_root = runner.invoke(app, ["audit", "score", "--labels", str(flipped), "--root", str(root)])
    from_file = runner.invoke(app, ["audit", "score", "--labels", str(labels_path)])
    assert from_root.exit_code == 0 and from_root.output == from_file.output
    # Ground truth that names none of the root's videos: a clear error.
    (tmp_path / "davis" / "unrelated").mkdir(parents=True)
    _png(tmp_path / "davis" / "unrelated" / "00000.png", np.ones((4, 4), dtype=np.uint8))
    result = runner.invoke(app, ["audit", "masks", "--root", str(root), "--truth", str(tmp_path / "davis")])
    assert result.exit_code == 1 and "no clip of this root has ground truth" in result.output


def _png(path: Path, labels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(labels.astype(np.uint8), mode="P").save(path)


# ------------------------------------------------------------------ real clips, hand-made truth


def test_real_clips_against_a_hand_drawn_box(media_dir: Path, tmp_path: Path) -> None:
    from engine.video import probe

    root = tmp_path / "root"
    root.mkdir()
    manifest = root / "manifest.jsonl"
    rows = [{"video": str(media_dir / "dog.mp4"), "caption": "a dog runs on the grass"},
            {"video": str(media_dir / "demo2.mp4"), "caption": "a man walks with a dog"}]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # The shared media lie outside the manifest's folder and the root: allowed explicitly (issue 15, point 6).
    config = tiny_config(max_reject_fraction=1.0, paths={"allowed_roots": [str(media_dir)]})
    build(root, manifest, config, stages=("analyze", "annotate", "segment", "review", "short_captions"))
    info = probe(media_dir / "dog.mp4")
    # Off synthetic clips the fake segmenter fills the noun's hashed central box on every frame. The truth: that
    # box moved right by a quarter of its width, drawn by hand on every frame of dog.mp4 (DAVIS layout).
    engine_box = filled_box_mask(hashed_central_box("dog", width=info.width, height=info.height),
                                 width=info.width, height=info.height)
    rows_in, cols_in = np.flatnonzero(engine_box.any(axis=1)), np.flatnonzero(engine_box.any(axis=0))
    box_width, shift = len(cols_in), len(cols_in) // 4
    truth = np.zeros((info.height, info.width), dtype=np.uint8)
    truth[rows_in[0] : rows_in[-1] + 1, cols_in[0] + shift : cols_in[-1] + 1 + shift] = 1
    folder = tmp_path / "truth" / "dog"
    folder.mkdir(parents=True)
    for frame in range(info.num_frames):
        _png(folder / f"{frame:05d}.png", truth)

    audit = audit_masks(root, read_truth(tmp_path / "truth"))
    expected_j = (box_width - shift) / (box_width + shift)  # same height: overlap 3/4 of the width, union 5/4
    expected_f = davis.db_eval_boundary(truth.astype(bool), engine_box)
    for stage in ("segment", "short_captions"):
        summary = audit.summaries[stage]
        assert summary.clips == 2 and summary.clips_without_truth == 1 and summary.truth_objects == 1
        assert summary.J_mean == pytest.approx(expected_j) and summary.F_mean == pytest.approx(expected_f)
        assert summary.recall == 1.0  # J = 0.6 >= 0.5
    assert 0.0 < expected_f < 1.0
    [case, *_] = audit.worst
    assert (root / "reports" / case.image).is_file()

    page = write_review_page(root, sample=200)
    text = (root / page.path).read_text()
    assert page.items == page.candidates > 0 and text.count("data:image/jpeg;base64,") == page.items


# ------------------------------------------------------------------ the page in a real browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium on PATH: the headless screenshot of the labelling page is not checked here")


def test_a_headless_screenshot_of_the_page_is_not_blank(built, tmp_path: Path) -> None:
    import cv2

    browser = _chromium()
    root = built("disagreeing", DISAGREEING)
    page = write_review_page(root, sample=8)
    url = (root / page.path).resolve().as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1200,900"]
    shot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (900, 1200)
    assert image.std() > 20 and len(np.unique(image.reshape(-1, 3), axis=0)) > 500  # text and pictures, not blank

    # The page's script ran: it counted the cards and built the download link from its (empty) labels.
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False).stdout
    assert f"0 / {page.items} labelled" in dom
    href = re.search(r'id="download" href="data:application/json;charset=utf-8,([^"]+)"', dom)
    assert href, "the download link was not built"
    document = json.loads(urllib.parse.unquote(href.group(1).replace("&amp;", "&")))
    assert document["kind"] == audit_review.LABELS_KIND and len(document["items"]) == page.items
    assert all(item["label"] is None and item["reviewer"] in ("keep", "drop") for item in document["items"])
