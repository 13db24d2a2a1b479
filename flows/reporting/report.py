"""`write_report`: the data report of a dataset root, `<root>/reports/index.html` with its plots and gallery.

The page and everything it shows live under `<root>/reports/`: `index.html`, `report.json` (the same figures as
JSON), `assets/*.png` (plots) and `assets/gallery/*.webp` (frame strips). Assets are written first and the page
last, each atomically (`DatasetRoot.write_bytes`), and assets of an earlier report that the new page no longer
shows are removed at the end, so a reader never sees a page whose images are missing. Works on any root
`DatasetRoot` opens (a folder or an fsspec URL). `write_report_safely` is what build runs call: a report that
cannot be written is logged (to the Prefect run logger inside a flow) and never fails the run.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flows.pipeline import layout
from storage.root import REPORTS_DIR, DatasetRoot

REPORT_INDEX = f"{REPORTS_DIR}/index.html"
REPORT_JSON = f"{REPORTS_DIR}/report.json"
REPORT_ASSETS_DIR = f"{REPORTS_DIR}/assets"
MAX_WORST_IMAGES = 12

_log = logging.getLogger(__name__)


def write_report(
    root: layout.RootLike,
    *,
    per_kind: int | None = None,
    seed: int = 0,
    max_frames: int | None = None,
) -> str:
    """Write the report of `root` and return the path (or URL) of its index.html.

    `per_kind`: gallery samples per task (default `gallery.DEFAULT_PER_KIND`); `seed`: the gallery's sampling
    seed; `max_frames`: frames per gallery strip (default `gallery.MAX_FRAMES`).
    """
    from flows.reporting import plots
    from flows.reporting.collect import collect, summary_json
    from flows.reporting.gallery import DEFAULT_PER_KIND, MAX_FRAMES, build_gallery
    from flows.reporting.page import render_page

    per_kind = DEFAULT_PER_KIND if per_kind is None else max(0, int(per_kind))
    max_frames = MAX_FRAMES if max_frames is None else max(1, int(max_frames))
    droot = layout.open_root(root)
    figures = collect(droot)
    written: set[str] = set()  # paths relative to reports/

    def write(relative: str, data: bytes) -> None:
        droot.write_bytes(f"{REPORTS_DIR}/{relative}", data)
        written.add(relative)

    drawings = {
        "funnel": lambda: plots.funnel(figures.funnel),
        "rejects": lambda: plots.rejects(figures.funnel),
        "stage_seconds": lambda: plots.stage_seconds(figures.funnel),
        "call_costs": lambda: plots.call_costs(figures.costs),
        "caption_lengths": lambda: plots.caption_lengths(figures.distributions),
        "mask_area": lambda: plots.mask_area(figures.distributions),
        "masklet_frames": lambda: plots.masklet_frames(figures.distributions),
        "objects_per_clip": lambda: plots.objects_per_clip(figures.distributions),
        "qa_types": lambda: plots.qa_types(figures.distributions),
        "runs": lambda: plots.runs(figures.runs),
        "audit": lambda: plots.audit_scores(figures.audit) if figures.audit is not None else None,
    }
    plot_paths: dict[str, str | None] = {}
    for name, draw in drawings.items():
        png = draw()
        plot_paths[name] = None
        if png:
            plot_paths[name] = f"assets/{name}.png"
            write(plot_paths[name], png)
    gallery = build_gallery(droot, write, per_kind=per_kind, seed=seed, max_frames=max_frames,
                            directory="assets/gallery")
    worst = audit_images(droot, figures.audit.worst if figures.audit is not None else ())
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    html = render_page(figures, gallery, plot_paths, worst=worst, generated=generated, per_kind=per_kind, seed=seed)
    data = summary_json(figures)
    data["generated"] = generated
    data["gallery"] = {
        "seed": seed,
        "per_kind": per_kind,
        "available": dict(gallery.available),
        "shown": {task: [item.key for item in items] for task, items in gallery.items.items()},
        "images": sorted(item.image for items in gallery.items.values() for item in items if item.image),
    }
    data["plots"] = plot_paths
    droot.write_json(REPORT_JSON, data)
    droot.write_bytes(REPORT_INDEX, html.encode("utf-8"))
    _remove_stale_assets(droot, written)
    return droot.url_of(REPORT_INDEX)


def write_report_safely(root: layout.RootLike, **options: Any) -> str | None:
    """`write_report`, logging instead of raising: a build run must never fail because of its report."""
    try:
        return write_report(root, **options)
    except Exception as exc:  # noqa: BLE001 - the report is a by-product; the data and figures are on disk
        _warn(f"the data report of {root} could not be written: {type(exc).__name__}: {exc}")
        return None


def _warn(message: str) -> None:
    try:
        from prefect.logging import get_run_logger

        get_run_logger().warning(message)
        return
    except Exception:  # noqa: BLE001 - outside a flow or task run there is no run logger
        pass
    _log.warning(message)


def audit_images(root: DatasetRoot, worst: Sequence[Mapping[str, Any]]) -> list[tuple[str | None, Mapping[str, Any]]]:
    """The audit's worst objects with a link to each one's image (relative to reports/; None when not found).

    An entry's `image` is looked up relative to reports/ (what `videorefer audit masks` writes), then
    reports/audit/, then the root; absolute paths and paths that climb out with `..` are not linked (the page
    keeps only relative links inside the root).
    """
    out: list[tuple[str | None, Mapping[str, Any]]] = []
    for entry in list(worst)[:MAX_WORST_IMAGES]:
        image = entry.get("image")
        href = None
        if isinstance(image, str) and image and not posixpath.isabs(image) and "://" not in image:
            clean = posixpath.normpath(image)
            if not clean.startswith(".."):
                for relative, link in ((f"{REPORTS_DIR}/{clean}", clean),
                                       (f"{REPORTS_DIR}/audit/{clean}", f"audit/{clean}"), (clean, f"../{clean}")):
                    if root.exists(relative):
                        href = link
                        break
        out.append((href, entry))
    return out


def _remove_stale_assets(root: DatasetRoot, written: set[str]) -> None:
    """Delete files under reports/assets/ that the new page does not reference."""
    base = root.full_path(REPORT_ASSETS_DIR)
    try:
        found = root.fs.find(base)
    except FileNotFoundError:
        return
    prefix = root.full_path(REPORTS_DIR).rstrip("/") + "/"
    for path in found:
        relative = str(path)[len(prefix):] if str(path).startswith(prefix) else None
        if relative is not None and relative not in written and not posixpath.basename(relative).startswith("."):
            root.delete(f"{REPORTS_DIR}/{relative}")
