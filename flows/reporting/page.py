"""The report's HTML: one static, self-contained page (inline CSS, no script, no external resource).

`render_page` turns the collected figures, the drawn gallery and the relative paths of the plots into the text of
`reports/index.html`. Every value that comes from the data (captions, messages, ids, paths) is HTML-escaped, and
every link is relative to the page (`assets/...`, `audit/...`), so the folder works when copied or served as is.
A section without data says what is missing instead of showing an empty plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from flows.reporting.collect import RootFigures, StageFunnel
from flows.reporting.gallery import Gallery, GalleryItem

TASK_TITLES = {"detailed": "Detailed captions", "short": "Short captions", "qa": "Question / answer"}
MAX_AUDIT_ROWS = 50
_AUDIT_COLUMNS = ("stage", "J_mean", "F_mean", "JF_mean", "JF_mean_all", "recall", "precision", "truth_objects",
                  "found", "masklets")
_OBJECT_COLUMNS = ("stage", "clip_id", "object_id", "truth_name", "noun", "frames", "J", "F", "JF", "found")

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #ffffff; --soft: #f6f8fa; --accent: #3b6ea8; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); }
header { background: #24324a; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c9d4e3; }
nav { position: sticky; top: 0; background: var(--soft); border-bottom: 1px solid var(--line); padding: 8px 32px;
      z-index: 1; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
main { max-width: 1240px; margin: 0 auto; padding: 8px 32px 48px; }
section { border-bottom: 1px solid var(--line); padding: 12px 0 20px; }
h2 { font-size: 18px; margin: 16px 0 8px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
.tiles { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.tile { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 130px;
        background: var(--soft); }
.tile b { display: block; font-size: 20px; }
.tile span { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 10px 0; }
figure img { max-width: 100%; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 12px; }
.missing { color: #8a4b00; background: #fff6e5; border: 1px solid #f0d49b; border-radius: 4px; padding: 6px 10px; }
.notes li { margin: 2px 0; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 8px 18px; }
.cards { display: grid; grid-template-columns: minmax(0, 1fr); gap: 10px; }
.cards.small { grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); }
.split { display: grid; grid-template-columns: minmax(0, 0.8fr) minmax(0, 1.5fr); gap: 14px; align-items: start; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; background: #fff; min-width: 0; }
.card img { max-width: 100%; display: block; margin: 6px 0; border-radius: 3px; }
.card .meta { color: var(--muted); font-size: 12px; }
.turn { margin: 4px 0; white-space: pre-wrap; }
.turn b { color: var(--accent); }
.prov td, .prov th { font-size: 12px; padding: 2px 6px; }
code { background: var(--soft); padding: 0 3px; border-radius: 3px; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; background: #e6eef8; color: #24324a;
         font-size: 12px; }
"""

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


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _figure(path: str | None, alt: str, caption: str, missing: str) -> str:
    if not path:
        return f'<p class="missing">{_e(missing)}</p>'
    return (f'<figure><img src="{_e(path)}" alt="{_e(alt)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = (),
           css: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{_e(v)}</td>' if k in numeric else f"<td>{_e(v)}</td>"
                         for k, v in enumerate(row)) + "</tr>"
        for row in rows
    )
    klass = f' class="{css}"' if css else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tile(value: Any, label: str) -> str:
    return f'<div class="tile"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def _shards(row: StageFunnel) -> str:
    text = f"{row.done}/{row.shards}"
    return text + (f" ({row.stale} stale)" if row.stale else "")


def _overview(figures: RootFigures) -> str:
    refine = figures.stage("refine")
    export = figures.export
    tiles = [_tile(figures.clips, "clips ingested"), _tile(figures.shards, "shards")]
    if refine is not None:
        tiles.append(_tile(refine.items_out, "objects with a detailed caption"))
    if export is not None:
        tiles.append(_tile(export.total, "training samples exported"))
        tiles += [_tile(n, f"{task} samples") for task, n in export.samples.items()]
    tiles.append(_tile(sum(row.rejected for row in figures.funnel), "rejects, all stages"))
    parts = [f'<div class="tiles">{"".join(tiles)}</div>']
    if export is not None:
        reasons = ", ".join(f"{k} {v}" for k, v in export.rejects.items()) or "none"
        parts.append(f"<p>Export: {export.tars} WebDataset tars ({export.bytes / 1e6:.1f} MB), "
                     f"{export.json_files} VideoRefer-700K-style JSON files; samples rejected at export: "
                     f"{_e(reasons)}.</p>")
    if figures.notes:
        items = "".join(f"<li>{_e(note)}</li>" for note in figures.notes)
        parts.append(f'<div class="missing"><b>What is missing</b><ul class="notes">{items}</ul></div>')
    else:
        parts.append("<p>Every stage is done on every shard for the current config.</p>")
    return "".join(parts)


def _funnel(figures: RootFigures, plots: Mapping[str, str | None]) -> str:
    rows = [
        (r.stage, _shards(r), r.items_in, r.items_out, r.rejected, f"{r.reject_fraction:.1%}", f"{r.seconds:.2f}")
        for r in figures.funnel
    ]
    table = _table(("stage", "shards done", "in", "out", "rejected", "rejected %", "seconds"), rows,
                   numeric=(2, 3, 4, 5, 6))
    plot = _figure(plots.get("funnel"), "items in and out per stage",
                   "Each stage counts its own unit: ingest and analyze take clips, analyze to refine pass objects, "
                   "export writes samples.", "No stage has stored figures yet.")
    return table + plot


def _rejects(figures: RootFigures, plots: Mapping[str, str | None]) -> str:
    plot = _figure(plots.get("rejects"), "rejects per stage and reason", "Reason codes of engine.errors.RejectReason.",
                   "Nothing was rejected (or no stage has run yet).")
    examples: dict[tuple[str, str], list[str]] = {}
    for example in figures.reject_examples:
        examples.setdefault((example.stage, example.reason), []).append(
            f"{example.item_id}: {example.message}" if example.message else example.item_id)
    rows = []
    for row in figures.funnel:
        for reason, count in row.rejects.items():
            shown = examples.get((row.stage, reason), [])
            rows.append((row.stage, reason, count, " | ".join(m[:240] for m in shown) or "-"))
    table = _table(("stage", "reason", "count", "examples"), rows, numeric=(2,)) if rows else ""
    return plot + table


def _cost(figures: RootFigures, plots: Mapping[str, str | None]) -> str:
    parts = [_figure(plots.get("stage_seconds"), "seconds per stage",
                     "Task seconds from the stored stage reports (reports/stages/), summed over shards.",
                     "No stage has stored timings yet."),
             _figure(plots.get("call_costs"), "tokens and model seconds per stage and backend",
                     "From the provenance columns of the stage tables; each call counted once, under the stage that "
                     "made it. Calls of rejected items are not recorded.",
                     "No model call is recorded in the stage tables yet.")]
    if figures.costs:
        rows = [
            (c.stage, c.agent, c.backend, c.model, c.prompt_version or "-", c.calls, f"{c.latency_s:.3f}",
             f"{c.latency_s / c.calls:.4f}" if c.calls else "-", c.prompt_tokens, c.completion_tokens)
            for c in figures.costs
        ]
        parts.append(_table(("stage", "agent", "backend", "model", "prompt version", "calls", "seconds", "s/call",
                             "prompt tokens", "completion tokens"), rows, numeric=(5, 6, 7, 8, 9)))
    return "".join(parts)


def _distributions(figures: RootFigures, plots: Mapping[str, str | None]) -> str:
    specs = (
        ("caption_lengths", "caption lengths", "Words per detailed caption (refine), short caption "
         "(short_captions) and QA answer (generate_qa).", "No captions yet (refine / short_captions not done)."),
        ("mask_area", "mask area fraction", "Mask pixels over frame pixels, for every mask frame of the accepted "
         "objects.", "No masks yet (refine / short_captions / generate_qa not done)."),
        ("masklet_frames", "masklet length", "Frames with a mask per accepted object.",
         "No masklets yet (refine / short_captions / generate_qa not done)."),
        ("objects_per_clip", "objects per clip", "Nouns the analyzer found per clip, and objects that passed "
         "review and got a detailed caption.", "No objects yet (analyze not done)."),
        ("qa_types", "QA types", "Generated questions per type.",
         "No QA pairs yet (generate_qa not done, or no clip came with given objects)."),
    )
    cells = "".join(f"<div>{_figure(plots.get(name), alt, caption, missing)}</div>"
                    for name, alt, caption, missing in specs)
    return f'<div class="plots">{cells}</div>'


def _provenance_table(item: GalleryItem) -> str:
    rows = [(field, p.agent, p.backend, p.model, p.prompt_version or "-", f"{p.prompt_tokens} / {p.completion_tokens}")
            for field, p in item.provenance]
    if not rows:
        return '<p class="meta">no provenance recorded</p>'
    return _table(("field", "agent", "backend", "model", "prompt version", "tokens in / out"), rows, numeric=(5,),
                  css="prov")


_SOURCE_NOTE = {
    "short": '<p class="meta">The short caption is the clip\'s own caption (from the source); the agents picked its '
             "subject and segmented it.</p>",
    "qa": '<p class="meta">The masks and referring expressions of QA objects come with the source clip (given '
          "objects); the agents wrote the question, options and answer.</p>",
}


def _card(item: GalleryItem) -> str:
    if item.error:
        return f'<div class="card"><b>{_e(item.key)}</b><p class="missing">cannot be drawn: {_e(item.error)}</p></div>'
    objects = ", ".join(f"{category or '?'} ({frames} mask frames)" for _, category, frames in item.objects)
    turns = "".join(
        f'<div class="turn"><b>{"user" if role == "human" else "answer"}:</b> {_e(text)}</div>'
        for role, text in item.turns
    )
    mode = f' <span class="badge">{_e(item.mode)}-frame</span>' if item.mode else ""
    return (
        f'<div class="card"><b>{_e(item.key)}</b>{mode}'
        f'<div class="meta">clip {_e(item.clip_id)} · video {_e(item.video)} · frames '
        f'{_e(", ".join(str(f) for f in item.frames))} · objects: {_e(objects)}</div>'
        f'<img src="{_e(item.image)}" alt="frames of {_e(item.key)} with masks">'
        f'<div class="split"><div>{turns}{_SOURCE_NOTE.get(item.task, "")}</div>'
        f"<div>{_provenance_table(item)}</div></div></div>"
    )


def _gallery(gallery: Gallery, per_kind: int, seed: int) -> str:
    if not gallery.items:
        return ('<p class="missing">No exported samples to show: the gallery draws samples of '
                "export/wds/*.tar once the export stage has run.</p>")
    parts = [f"<p>Up to {per_kind} samples per task, picked by a seeded hash of their key (seed {seed}) from the "
             f"indexes of {gallery.tars} exported tars; each object is tinted in its own colour on the frames "
             "that hold its mask; #N is the frame index in the source video.</p>"]
    for note in gallery.notes:
        parts.append(f'<p class="missing">{_e(note)}</p>')
    for task, items in gallery.items.items():
        title = TASK_TITLES.get(task, task)
        parts.append(f"<h3>{_e(title)} ({len(items)} of {gallery.available.get(task, 0)})</h3>")
        if items:
            parts.append(f'<div class="cards">{"".join(_card(item) for item in items)}</div>')
        else:
            parts.append('<p class="missing">none drawn</p>')
    return "".join(parts)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _segmentation(figures: RootFigures, plots: Mapping[str, str | None],
                  worst: Sequence[tuple[str | None, Mapping[str, Any]]]) -> str:
    audit = figures.audit
    if audit is None:
        return ('<p class="missing">No mask audit yet: <code>videorefer audit masks</code> writes '
                "reports/audit/masks.json (J, F and J&amp;F of the masks against references).</p>")
    if audit.error:
        return f'<p class="missing">{_e(audit.error)}</p>'
    head = f" ({audit.stage})" if audit.stage else ""
    tiles = [_tile(_score(audit.j_mean), f"J mean (region IoU){head}"),
             _tile(_score(audit.f_mean), "F mean (boundary)"), _tile(_score(audit.jf_mean), "J&F mean"),
             _tile(len(audit.objects), "objects audited")]
    numbers = [(k, v) for k, v in audit.other.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    tiles += [_tile(_fmt(v), k) for k, v in numbers[:8]]
    parts = [f'<div class="tiles">{"".join(tiles)}</div>']
    words = [(k, v) for k, v in audit.other.items() if isinstance(v, str | bool)]
    if words:
        parts.append(f'<p class="meta">{_e(" · ".join(f"{k}: {v}" for k, v in words))}</p>')
    parts.append(_figure(plots.get("audit"), "segmentation quality per object", "Per-object scores of the mask "
                         "audit (reports/audit/masks.json).", "The audit lists no per-object scores."))
    if audit.stages:
        keys = ["stage", *[k for k in _AUDIT_COLUMNS if k != "stage" and any(k in row for row in audit.stages)]]
        parts.append(_table(keys, [[_fmt(row.get(k, "")) for k in keys] for row in audit.stages]))
    if audit.objects:
        first = audit.objects[0]
        keys = [k for k in _OBJECT_COLUMNS if any(k in obj for obj in audit.objects)] or [
            k for k in first if isinstance(first[k], str | int | float)][:8]
        ordered = sorted(audit.objects, key=lambda o: o.get("JF") if isinstance(o.get("JF"), int | float) else 2.0)
        rows = [[_fmt(obj.get(k, "")) for k in keys] for obj in ordered[:MAX_AUDIT_ROWS]]
        more = len(audit.objects) - MAX_AUDIT_ROWS
        parts.append(f"<h3>Objects, lowest J&amp;F first{' (first ' + str(MAX_AUDIT_ROWS) + ')' if more > 0 else ''}"
                     f"</h3>{_table(keys, rows)}")
    if worst:
        parts.append("<h3>Worst objects</h3>")
        cards = []
        for href, entry in worst:
            text = ", ".join(f"{k} {_fmt(v)}" for k, v in entry.items() if k != "image" and
                             isinstance(v, str | int | float))
            image = (f'<img src="{_e(href)}" alt="audit image">' if href else
                     f'<p class="missing">image {_e(entry.get("image", ""))} not found</p>')
            cards.append(f'<div class="card">{image}<div class="meta">{_e(text)}</div></div>')
        parts.append(f'<div class="cards small">{"".join(cards)}</div>')
    return "".join(parts)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _runs(figures: RootFigures, plots: Mapping[str, str | None]) -> str:
    if not figures.runs:
        return ('<p class="missing">No run reports yet: flows (`videorefer build`, `videorefer stage`) write '
                "reports/runs/&lt;id&gt;.json.</p>")
    plot = _figure(plots.get("runs"), "wall time of the latest runs", "The latest runs, oldest first.",
                   "No run timings.")
    rows = [(r.run_id, r.created, f"{r.wall_seconds:.1f}", r.ran, r.skipped, r.rejected, r.failures)
            for r in reversed(figures.runs)]
    table = _table(("run", "created", "wall s", "tasks run", "skipped", "rejected", "failed tasks"), rows,
                   numeric=(2, 3, 4, 5, 6))
    return plot + table


def render_page(figures: RootFigures, gallery: Gallery, plots: Mapping[str, str | None], *,
                worst: Sequence[tuple[str | None, Mapping[str, Any]]] = (), generated: str = "", per_kind: int = 0,
                seed: int = 0) -> str:
    """The text of reports/index.html."""
    nav = "".join(f'<a href="#{key}">{_e(title)}</a>' for key, title in SECTIONS)
    bodies = {
        "overview": _overview(figures),
        "funnel": _funnel(figures, plots),
        "rejects": _rejects(figures, plots),
        "cost": _cost(figures, plots),
        "distributions": _distributions(figures, plots),
        "gallery": _gallery(gallery, per_kind, seed),
        "segmentation": _segmentation(figures, plots, worst),
        "runs": _runs(figures, plots),
    }
    sections = "".join(f'<section id="{key}"><h2>{_e(title)}</h2>{bodies[key]}</section>' for key, title in SECTIONS)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Data report: {_e(figures.name)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>Data report: {_e(figures.name)}</h1>"
        f"<p>{_e(figures.url)} · generated {_e(generated)} · VideoRefer data engine</p></header>"
        f"<nav>{nav}</nav><main>{sections}</main></body></html>\n"
    )
