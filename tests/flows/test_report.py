"""The static data report (`flows.reporting`, `videorefer report`): it renders for a built root, an ingest-only and
an empty root, every file it links exists and decodes, the gallery is a bounded seeded sample, the mask audit is
optional, a build's `finish_run` writes it (and never fails on it), and, where chromium is installed, a headless
screenshot of the page is not blank."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows import engine_flows
from flows.pipeline import layout
from flows.pipeline.ingest import ingest
from flows.pipeline.runner import run_stage
from flows.pipeline.stages import SHARD_STAGES
from flows.reporting import REPORT_INDEX, write_report
from flows.reporting import collect as collect_module
from flows.reporting import report as report_module
from flows.reporting.collect import collect
from flows.reporting.gallery import rank_of
from tests.flows.conftest import tiny_config

PLOTTED_SECTIONS = ("funnel", "rejects", "cost", "distributions", "gallery", "runs")


class _Links(HTMLParser):
    """Every src/href of a page, the tags it uses, and the text of each section."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.section_imgs: dict[str, int] = {}
        self._section: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        values = dict(attrs)
        if tag == "section":
            self._section = values.get("id")
            self.section_imgs.setdefault(self._section or "", 0)
        if tag == "img" and self._section is not None:
            self.section_imgs[self._section] += 1
        for name in ("src", "href"):
            if values.get(name):
                self.links.append(str(values[name]))


def _parse(index: Path) -> _Links:
    parser = _Links()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser


def _check_links(index: Path, root: Path) -> list[Path]:
    """Every link is relative, inside the root, exists, and (for images) decodes; returns the files."""
    parser = _parse(index)
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    files = []
    for link in parser.links:
        if link.startswith("#"):
            continue
        assert "://" not in link and not link.startswith("/"), f"not a relative link: {link}"
        path = (index.parent / link).resolve()
        assert path.is_relative_to(root.resolve()), link
        assert path.is_file(), f"{link} is linked but missing"
        if path.suffix in (".png", ".webp"):
            with Image.open(path) as image:
                image.load()
                assert image.format == {".png": "PNG", ".webp": "WEBP"}[path.suffix]
                assert image.width > 10 and image.height > 10
        files.append(path)
    return files


def _build(root: Path, manifest: Path, config) -> list:
    reports = [ingest(root, manifest, config).report]
    for shard in layout.shards(layout.open_root(root)):
        reports.extend(run_stage(root, stage, shard, config) for stage in SHARD_STAGES)
    return reports


@pytest.fixture(scope="module")
def built_template(tmp_path_factory: pytest.TempPathFactory, corpus_template: Path) -> tuple[Path, list[str | None]]:
    """The demo corpus built without Prefect and finished as a build run (`finish_run`), once per module."""
    root = tmp_path_factory.mktemp("report-built") / "root"
    shutil.copytree(corpus_template, root)
    config = tiny_config()
    reports = _build(root, root / "manifest.jsonl", config)
    linked: list[str | None] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_flows, "_artifact", lambda run, failures, *, name, report=None: linked.append(report))
        engine_flows.finish_run(str(root), config, reports, [], started=time.perf_counter(), name="build")
    return root, linked


@pytest.fixture
def built(tmp_path: Path, built_template: tuple[Path, list[str | None]]) -> Path:
    root = tmp_path / "root"
    shutil.copytree(built_template[0], root)
    return root


def test_a_build_run_writes_the_report_and_links_it_from_its_artifact(built_template) -> None:
    root, linked = built_template
    index = root / REPORT_INDEX
    assert index.is_file() and linked == [str(index)]
    files = _check_links(index, root)
    assert any(f.suffix == ".webp" for f in files) and any(f.suffix == ".png" for f in files)


def test_the_build_flow_links_the_report_from_its_prefect_artifact(prefect_server, corpus, tmp_path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tests.flows.conftest import write_config

    root, manifest = corpus
    config = write_config(tmp_path / "tiny.yaml")
    report = engine_flows.build(root=str(root), manifest=str(manifest), config_path=str(config))
    index = root / REPORT_INDEX
    _check_links(index, root)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["engine-run-figures"])))
    mine = [a.data for a in artifacts if report["run_id"] in str(a.data)]
    assert mine and f"Data report: [{index}]({index.as_uri()})" in mine[0]
    assert report["run_id"] in index.read_text()  # the page lists the run that wrote it


def test_the_report_of_a_built_root_has_every_section_with_its_plot(built: Path) -> None:
    index = Path(write_report(built))
    assert index == built / REPORT_INDEX
    _check_links(index, built)
    parser = _parse(index)
    for section in PLOTTED_SECTIONS:
        assert parser.section_imgs.get(section, 0) >= 1, f"section {section} has no plot"
    assert parser.section_imgs["distributions"] == 5 and parser.section_imgs["cost"] == 2
    html = index.read_text()
    data = json.loads((built / "reports" / "report.json").read_text())
    # The funnel is the sum of the stored stage reports; ingest counts the sources.
    funnel = {row["stage"]: row for row in data["funnel"]}
    stored = [json.loads(p.read_text()) for p in sorted((built / "reports" / "stages").glob("*/*.json"))]
    for stage in SHARD_STAGES:
        rows = [s for s in stored if s["stage"] == stage]
        assert funnel[stage]["items_in"] == sum(s["items_in"] for s in rows)
        assert funnel[stage]["items_out"] == sum(s["items_out"] for s in rows)
        assert funnel[stage]["done"] == funnel[stage]["shards"] == 2
    assert funnel["ingest"]["items_out"] == 5
    assert any(row["rejects"] for row in data["funnel"])  # the synthetic corpus has static objects, wrong objects
    # Costs: one analyzer call per analyzed clip (not one per noun), one refiner call per refined object.
    costs = {(c["stage"], c["agent"]): c for c in data["costs"]}
    analyzed = funnel["analyze"]["items_in"] - sum(funnel["analyze"]["rejects"].values())
    assert costs[("analyze", "analyzer")]["calls"] == analyzed
    assert costs[("refine", "refiner")]["calls"] == funnel["refine"]["items_out"]
    assert costs[("refine", "refiner")]["prompt_tokens"] > 0
    assert not any(stage == "refine" and agent == "analyzer" for stage, agent in costs)  # inherited, not re-counted
    dist = data["distributions"]
    assert set(dist["caption_words"]) >= {"detailed", "short"} and set(dist["mask_area"]) == {"detailed", "short",
                                                                                              "qa"}
    assert sum(dist["qa_types"].values()) > 0 and set(dist["objects_per_clip"])
    # The gallery: every task, each card with its text and the provenance of each field.
    assert set(data["gallery"]["shown"]) == {"detailed", "short", "qa"}
    assert all(data["gallery"]["shown"].values())
    assert "fake-chat" in html and "refiner-" in html and "detailed caption" in html and "Options:" in html
    assert "No mask audit yet" in html  # the audit is optional
    assert "runs" in data and data["runs"]


def test_a_root_with_only_ingest_done_renders_and_says_what_is_missing(corpus) -> None:
    root, manifest = corpus
    ingest(root, manifest, tiny_config())
    index = Path(write_report(root))
    _check_links(index, root)
    html = index.read_text()
    for stage in SHARD_STAGES:
        assert f"{stage}: 0 of 2 shards done" in html
    assert "Nothing was rejected" in html and "No exported samples to show" in html
    assert "No run reports yet" in html and "No captions yet" in html
    parser = _parse(index)
    assert parser.section_imgs["funnel"] == 1  # ingest's in/out


def test_an_empty_root_renders(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    index = Path(write_report(root))
    _check_links(index, root)
    html = index.read_text()
    assert "no dataset.json" in html and "no shards" in html


def test_the_gallery_is_a_bounded_seeded_sample_of_a_larger_root(built: Path, monkeypatch) -> None:
    from storage import wds
    from storage.root import DatasetRoot

    # 20 variants of every exported sample, in 12+ more tars: a root far larger than the gallery.
    originals = list(wds.iter_samples(wds.list_tars(DatasetRoot(built))))
    with wds.ShardWriter(DatasetRoot(built), split="bulk", max_samples_per_tar=25, grid=6) as w:
        for copy in range(20):
            for sample, frames in originals:
                assert w.write(dataclasses.replace(sample, key=f"{sample.key}v{copy}"), np.stack(frames)) is None
    keys: dict[str, list[str]] = {}
    for tar in wds.list_tars(DatasetRoot(built)):
        for row in wds.read_index(tar):
            keys.setdefault(row["task"], []).append(row["key"])
    assert sum(map(len, keys.values())) == 21 * len(originals)

    reads = []
    real_read = wds.read_sample_at
    monkeypatch.setattr(wds, "read_sample_at", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    write_report(built, per_kind=3, seed=7)
    assert len(reads) == 9  # only the picked samples are read, 3 per task
    shown = json.loads((built / "reports" / "report.json").read_text())["gallery"]["shown"]
    for task, task_keys in keys.items():
        assert shown[task] == sorted(task_keys, key=lambda k: (rank_of(7, k), k))[:3]
    gallery = sorted((built / "reports" / "assets" / "gallery").iterdir())
    assert len(gallery) == 9  # the earlier report's strips that are no longer shown were removed
    _check_links(built / REPORT_INDEX, built)

    write_report(built, per_kind=3, seed=7)
    assert json.loads((built / "reports" / "report.json").read_text())["gallery"]["shown"] == shown
    write_report(built, per_kind=3, seed=8)
    assert json.loads((built / "reports" / "report.json").read_text())["gallery"]["shown"] != shown


def test_stage_tables_are_streamed_in_batches_with_the_same_figures(built: Path, monkeypatch) -> None:
    whole = collect(built)
    monkeypatch.setattr(collect_module, "BATCH_ROWS", 1)
    assert collect(built) == whole


def test_the_mask_audit_becomes_a_segmentation_section_and_missing_keys_are_tolerated(built: Path) -> None:
    audit = built / "reports" / "audit"
    (audit / "worst").mkdir(parents=True)
    for name in ("masks-worst-00.png", "worst/obj1.png"):
        Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(audit / name)
    objects = [{"stage": "segment", "object_id": f"o{k}", "J": 0.5 + k / 20, "F": 0.4 + k / 25, "JF": 0.45 + k / 22}
               for k in range(8)]
    objects.append({"stage": "short_captions", "object_id": "s0", "J": 0.99, "F": 0.99, "JF": 0.99})
    (audit / "masks.json").write_text(json.dumps({
        "kind": "videorefer-mask-audit", "stage": "segment", "J_mean": 0.71, "F_mean": 0.66, "JF_mean": 0.685,
        "recall": 0.9, "truth": "sidecars", "objects": objects,
        "stages": {"segment": {"J_mean": 0.71, "recall": 0.9}, "short_captions": {"J_mean": 0.99}},
        "worst": [{"image": "audit/masks-worst-00.png", "object_id": "o0", "JF": 0.45},  # relative to reports/
                  {"image": "worst/obj1.png"},  # relative to reports/audit/
                  {"image": "audit/gone.png"}, {"image": "/etc/passwd"}, {"image": "../../outside.png"}],
    }))
    index = Path(write_report(built))
    _check_links(index, built)
    html = index.read_text()
    assert "0.710" in html and "0.685" in html and "J mean (region IoU) (segment)" in html and "sidecars" in html
    assert 'src="audit/masks-worst-00.png"' in html and 'src="audit/worst/obj1.png"' in html
    assert "audit/gone.png not found" in html and "/etc/passwd not found" in html and "outside.png not found" in html
    assert "<td>s0</td>" not in html and "<td>o0</td>" in html  # objects of the headline stage only
    assert _parse(index).section_imgs["segmentation"] == 3  # the score plot and the two images that exist
    assert "no mask audit" not in html

    (audit / "masks.json").write_text(json.dumps({"objects": "not a list", "stages": [1], "note": "partial"}))
    html = Path(write_report(built)).read_text()
    assert "J&amp;F mean" in html and "partial" in html and "The audit lists no per-object scores" in html
    (audit / "masks.json").write_text("{ not json")
    assert "cannot be read" in Path(write_report(built)).read_text()
    (audit / "masks.json").write_text("[]")
    assert "is not a JSON object" in Path(write_report(built)).read_text()


def test_a_report_that_cannot_be_written_never_fails_the_build(built: Path, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_module, "write_report", broken)
    linked = []
    monkeypatch.setattr(engine_flows, "_artifact", lambda run, failures, *, name, report=None: linked.append(report))
    run = engine_flows.finish_run(str(built), tiny_config(), [], [], started=time.perf_counter(), name="build")
    assert run.run_id and linked == [None]
    assert "disk full" in caplog.text


def test_report_command(built: Path, tmp_path: Path) -> None:
    from flows.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["report", "--root", str(built), "--samples", "2"])
    assert result.exit_code == 0, result.output
    assert f"data report: {built / REPORT_INDEX}" in result.output
    shown = json.loads((built / "reports" / "report.json").read_text())["gallery"]["shown"]
    assert all(len(keys) <= 2 for keys in shown.values())
    missing = runner.invoke(app, ["report", "--root", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "does not exist" in missing.output


CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); the headless "
                                             "screenshot check runs where it is")
def test_a_headless_screenshot_of_the_report_is_not_blank(built: Path, tmp_path: Path) -> None:
    index = Path(write_report(built))
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
         "--window-size=1280,2000", f"--user-data-dir={tmp_path / 'profile'}", index.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 20  # text, tables and plots, not a blank page
    assert (pixels < 200).mean() > 0.05
