"""The report's HTML: one static, self-contained page (inline CSS, no script, no external resource).

`render_page` turns the collected figures, the drawn gallery and the relative paths of the plots into the text of
`reports/index.html`, rendered from the jinja2 template `templates/report.html.j2` (with `report.css.j2` inlined)
by `engine.pages`, autoescaping on: every value that comes from the data (captions, messages, ids, paths) is
HTML-escaped by the template engine, and every link is relative to the page (`assets/...`, `audit/...`), so the
folder works when copied or served as is. A section without data says what is missing instead of showing an empty
plot. This module only picks and formats the values each section shows; the markup is the template's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.pages import render_template
from flows.reporting.collect import RootFigures, StageFunnel
from flows.reporting.gallery import Gallery, GalleryItem

TEMPLATE = "report.html.j2"
TASK_TITLES = {"detailed": "Detailed captions", "short": "Short captions", "qa": "Question / answer"}
MAX_AUDIT_ROWS = 50
PLOTS = ("funnel", "rejects", "stage_seconds", "call_costs", "caption_lengths", "mask_area", "masklet_frames",
         "objects_per_clip", "qa_types", "audit", "runs")
_AUDIT_COLUMNS = ("stage", "J_mean", "F_mean", "JF_mean", "JF_mean_all", "recall", "precision", "truth_objects",
                  "found", "masklets")
_OBJECT_COLUMNS = ("stage", "clip_id", "object_id", "truth_name", "noun", "frames", "J", "F", "JF", "found")

SECTIONS = (
    ("overview", "Overview"),
    ("funnel", "Funnel"),
    ("rejects", "Rejects"),
    ("cost", "Time and tokens"),
    ("distributions", "Distributions"),
    ("gallery", "Gallery"),
    ("segmentation", "Segmentation quality"),
    ("runs", "Runs"),
)


def _shards(row: StageFunnel) -> str:
    text = f"{row.done}/{row.shards}"
    return text + (f" ({row.stale} stale)" if row.stale else "")


def _overview(figures: RootFigures) -> dict[str, Any]:
    refine = figures.stage("refine")
    export = figures.export
    tiles: list[tuple[Any, str]] = [(figures.clips, "clips ingested"), (figures.shards, "shards")]
    if refine is not None:
        tiles.append((refine.items_out, "objects with a detailed caption"))
    if export is not None:
        tiles.append((export.total, "training samples exported"))
        tiles += [(n, f"{task} samples") for task, n in export.samples.items()]
    tiles.append((sum(row.rejected for row in figures.funnel), "rejects, all stages"))
    line = None
    if export is not None:
        line = {"tars": export.tars, "megabytes": f"{export.bytes / 1e6:.1f}", "json_files": export.json_files,
                "reasons": ", ".join(f"{k} {v}" for k, v in export.rejects.items()) or "none"}
    latest = figures.runs[-1] if figures.runs else None
    failed = {"run_id": latest.run_id, "why": latest.failed_because} if latest and latest.failed_because else None
    return {"tiles": tiles, "export": line, "notes": figures.notes, "failed": failed}


def _funnel(figures: RootFigures) -> dict[str, Any]:
    rows = [
        (r.stage, _shards(r), r.items_in, r.items_out, r.rejected, f"{r.reject_fraction:.1%}", f"{r.seconds:.2f}")
        for r in figures.funnel
    ]
    return {"rows": rows}


def _rejects(figures: RootFigures) -> dict[str, Any]:
    examples: dict[tuple[str, str], list[str]] = {}
    for example in figures.reject_examples:
        examples.setdefault((example.stage, example.reason), []).append(
            f"{example.item_id}: {example.message}" if example.message else example.item_id)
    rows = []
    for row in figures.funnel:
        for reason, count in row.rejects.items():
            shown = examples.get((row.stage, reason), [])
            rows.append((row.stage, reason, count, " | ".join(m[:240] for m in shown) or "-"))
    return {"rows": rows}


def _cost(figures: RootFigures) -> dict[str, Any]:
    rows = [
        (c.stage, c.agent, c.backend, c.model, c.prompt_version or "-", c.calls, f"{c.latency_s:.3f}",
         f"{c.latency_s / c.calls:.4f}" if c.calls else "-", c.prompt_tokens, c.completion_tokens)
        for c in figures.costs
    ]
    return {"rows": rows}


def _card(item: GalleryItem) -> dict[str, Any]:
    return {
        "key": item.key, "error": item.error, "mode": item.mode, "task": item.task, "clip_id": item.clip_id,
        "video": item.video, "image": item.image, "turns": item.turns, "frames": item.frames,
        "objects": ", ".join(f"{category or '?'} ({frames} mask frames)" for _, category, frames in item.objects),
        "provenance": [(field, p.agent, p.backend, p.model, p.prompt_version or "-",
                        f"{p.prompt_tokens} / {p.completion_tokens}") for field, p in item.provenance],
    }


def _gallery(gallery: Gallery, per_kind: int, seed: int) -> dict[str, Any]:
    groups = [{"title": TASK_TITLES.get(task, task), "available": gallery.available.get(task, 0),
               "cards": [_card(item) for item in items]} for task, items in gallery.items.items()]
    return {"groups": groups, "per_kind": per_kind, "seed": seed, "tars": gallery.tars, "notes": gallery.notes}


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _segmentation(figures: RootFigures, worst: Sequence[tuple[str | None, Mapping[str, Any]]]) -> dict[str, Any]:
    audit = figures.audit
    if audit is None:
        return {"absent": True, "error": ""}
    if audit.error:
        return {"absent": False, "error": audit.error}
    head = f" ({audit.stage})" if audit.stage else ""
    tiles: list[tuple[Any, str]] = [
        (_score(audit.j_mean), f"J mean (region IoU){head}"), (_score(audit.f_mean), "F mean (boundary)"),
        (_score(audit.jf_mean), "J&F mean"), (len(audit.objects), "objects audited")]
    numbers = [(k, v) for k, v in audit.other.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    tiles += [(_fmt(v), k) for k, v in numbers[:8]]
    words = [(k, v) for k, v in audit.other.items() if isinstance(v, str | bool)]
    stage_keys: list[str] = []
    stage_rows: list[list[str]] = []
    if audit.stages:
        stage_keys = ["stage", *[k for k in _AUDIT_COLUMNS if k != "stage" and any(k in row for row in audit.stages)]]
        stage_rows = [[_fmt(row.get(k, "")) for k in stage_keys] for row in audit.stages]
    object_keys: list[str] = []
    object_rows: list[list[str]] = []
    if audit.objects:
        first = audit.objects[0]
        object_keys = [k for k in _OBJECT_COLUMNS if any(k in obj for obj in audit.objects)] or [
            k for k in first if isinstance(first[k], str | int | float)][:8]
        ordered = sorted(audit.objects, key=lambda o: o.get("JF") if isinstance(o.get("JF"), int | float) else 2.0)
        object_rows = [[_fmt(obj.get(k, "")) for k in object_keys] for obj in ordered[:MAX_AUDIT_ROWS]]
    cards = [
        (href, entry.get("image", ""), ", ".join(f"{k} {_fmt(v)}" for k, v in entry.items()
                                                 if k != "image" and isinstance(v, str | int | float)))
        for href, entry in worst
    ]
    return {
        "absent": False, "error": "", "tiles": tiles, "words": " · ".join(f"{k}: {v}" for k, v in words),
        "stage_keys": stage_keys, "stage_rows": stage_rows, "object_keys": object_keys, "object_rows": object_rows,
        "more_objects": len(audit.objects) > MAX_AUDIT_ROWS, "max_rows": MAX_AUDIT_ROWS, "worst": cards,
    }


def _runs(figures: RootFigures) -> dict[str, Any]:
    rows = [(r.run_id, r.created, f"{r.wall_seconds:.1f}", r.ran, r.skipped, r.rejected, r.failures,
             r.failed_because or "ok") for r in reversed(figures.runs)]
    return {"rows": rows}


def render_page(figures: RootFigures, gallery: Gallery, plots: Mapping[str, str | None], *,
                worst: Sequence[tuple[str | None, Mapping[str, Any]]] = (), generated: str = "", per_kind: int = 0,
                seed: int = 0) -> str:
    """The text of reports/index.html."""
    bodies = {
        "overview": _overview(figures),
        "funnel": _funnel(figures),
        "rejects": _rejects(figures),
        "cost": _cost(figures),
        "gallery": _gallery(gallery, per_kind, seed),
        "segmentation": _segmentation(figures, worst),
        "runs": _runs(figures),
    }
    return render_template(
        "flows.reporting", TEMPLATE, name=figures.name, url=figures.url, generated=generated, sections=SECTIONS,
        plots={name: plots.get(name) for name in PLOTS}, bodies=bodies,
    )
