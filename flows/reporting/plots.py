"""The report's plots: matplotlib figures drawn on the Agg canvas (no pyplot, no display), returned as PNG bytes.

Each function takes figures from `flows.reporting.collect` and returns the PNG, or None when there is nothing to
draw (the page then says what is missing instead). Figures are built with `matplotlib.figure.Figure` directly, so
no global pyplot state is touched and drawing is safe inside a flow's worker thread. The PNG metadata carries no
timestamp, so the same figures give the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from flows.reporting.collect import AREA_BINS, AuditSummary, CallCost, Distributions, RunSummary, StageFunnel

PALETTE = ("#3b6ea8", "#e07b39", "#59a14f", "#b07aa1", "#e15759", "#76b7b2", "#edc948", "#9c755f", "#bab0ac")
DPI = 100


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _style(axes: Any, title: str, xlabel: str = "", ylabel: str = "") -> None:
    axes.set_title(title, fontsize=11, loc="left")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="both", alpha=0.25)


def funnel(rows: Sequence[StageFunnel]) -> bytes | None:
    """Items in and out per stage (horizontal bars, pipeline order top to bottom)."""
    rows = [row for row in rows if row.items_in or row.items_out]
    if not rows:
        return None
    figure = _figure(8, 0.45 * len(rows) + 1.4)
    axes = figure.add_subplot()
    positions = list(range(len(rows)))[::-1]
    axes.barh([p + 0.2 for p in positions], [r.items_in for r in rows], height=0.4, label="in", color=PALETTE[0])
    axes.barh([p - 0.2 for p in positions], [r.items_out for r in rows], height=0.4, label="out", color=PALETTE[2])
    for p, row in zip(positions, rows, strict=True):
        axes.text(row.items_out, p - 0.2, f" {row.items_out}", va="center", fontsize=8)
        axes.text(row.items_in, p + 0.2, f" {row.items_in}", va="center", fontsize=8)
    axes.set_yticks(positions, [r.stage for r in rows])
    _style(axes, "Items in and out per stage", "items")
    axes.margins(x=0.12)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _png(figure)


def rejects(rows: Sequence[StageFunnel]) -> bytes | None:
    """Rejected items per stage, stacked by reason code."""
    rows = [row for row in rows if row.rejected]
    if not rows:
        return None
    reasons = sorted({reason for row in rows for reason in row.rejects})
    figure = _figure(8, 0.45 * len(rows) + 1.6)
    axes = figure.add_subplot()
    positions = list(range(len(rows)))[::-1]
    left = [0] * len(rows)
    for k, reason in enumerate(reasons):
        values = [row.rejects.get(reason, 0) for row in rows]
        axes.barh(positions, values, left=left, label=reason, color=PALETTE[k % len(PALETTE)], height=0.6)
        left = [a + b for a, b in zip(left, values, strict=True)]
    axes.set_yticks(positions, [r.stage for r in rows])
    _style(axes, "Rejects per stage and reason", "rejected items")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    return _png(figure)


def stage_seconds(rows: Sequence[StageFunnel]) -> bytes | None:
    """Seconds per stage, summed over its shards (the stored stage reports)."""
    rows = [row for row in rows if row.seconds > 0]
    if not rows:
        return None
    figure = _figure(8, 0.4 * len(rows) + 1.4)
    axes = figure.add_subplot()
    positions = list(range(len(rows)))[::-1]
    axes.barh(positions, [r.seconds for r in rows], color=PALETTE[1], height=0.6)
    for p, row in zip(positions, rows, strict=True):
        axes.text(row.seconds, p, f" {row.seconds:.2f} s", va="center", fontsize=8)
    axes.set_yticks(positions, [r.stage for r in rows])
    axes.margins(x=0.15)
    _style(axes, "Time per stage (task seconds, summed over shards)", "seconds")
    return _png(figure)


def _cost_label(cost: CallCost) -> str:
    return f"{cost.stage}: {cost.agent}\n{cost.backend} / {cost.model}"


def call_costs(costs: Sequence[CallCost]) -> bytes | None:
    """Tokens (prompt + completion, stacked) and model-call seconds per stage, agent and backend."""
    costs = [c for c in costs if c.calls]
    if not costs:
        return None
    figure = _figure(10, 0.55 * len(costs) + 1.6)
    tokens, seconds = figure.subplots(1, 2, sharey=True)
    positions = list(range(len(costs)))[::-1]
    prompt = [c.prompt_tokens for c in costs]
    tokens.barh(positions, prompt, color=PALETTE[0], height=0.6, label="prompt")
    tokens.barh(positions, [c.completion_tokens for c in costs], left=prompt, color=PALETTE[1], height=0.6,
                label="completion")
    tokens.set_yticks(positions, [_cost_label(c) for c in costs], fontsize=8)
    _style(tokens, "Tokens per stage and backend", "tokens")
    tokens.legend(loc="best", frameon=False, fontsize=8)
    seconds.barh(positions, [c.latency_s for c in costs], color=PALETTE[3], height=0.6)
    for p, cost in zip(positions, costs, strict=True):
        seconds.text(cost.latency_s, p, f" {cost.calls} calls", va="center", fontsize=7)
    _style(seconds, "Model-call seconds (latency summed)", "seconds")
    return _png(figure)


def _counter_bars(axes: Any, series: Mapping[str, Mapping[int, int]], *, max_groups: int = 60) -> None:
    values = sorted({value for counts in series.values() for value in counts})
    if len(values) > max_groups:  # wide ranges become a histogram of their weighted values
        bins = min(40, len(values))
        for k, (name, counts) in enumerate(series.items()):
            axes.hist(list(counts), weights=list(counts.values()), bins=bins, alpha=0.6, label=name,
                      color=PALETTE[k % len(PALETTE)])
        return
    width = 0.8 / max(1, len(series))
    for k, (name, counts) in enumerate(series.items()):
        offset = (k - (len(series) - 1) / 2) * width
        axes.bar([v + offset for v in values], [counts.get(v, 0) for v in values], width=width, label=name,
                 color=PALETTE[k % len(PALETTE)])


def _summary(counts: Mapping[int, int]) -> str:
    total = sum(counts.values())
    mean = sum(v * c for v, c in counts.items()) / total if total else 0.0
    return f"n={total}, mean {mean:.1f}"


def caption_lengths(dist: Distributions) -> bytes | None:
    if not dist.caption_words:
        return None
    figure = _figure(8, 3.2)
    axes = figure.add_subplot()
    series = {f"{name} ({_summary(counts)})": counts for name, counts in dist.caption_words.items()}
    _counter_bars(axes, series, max_groups=40)
    _style(axes, "Caption and answer lengths", "words", "texts")
    axes.legend(frameon=False, fontsize=8)
    return _png(figure)


def mask_area(dist: Distributions) -> bytes | None:
    if not dist.mask_area:
        return None
    figure = _figure(8, 3.2)
    axes = figure.add_subplot()
    edges = [k / AREA_BINS for k in range(AREA_BINS + 1)]
    for k, (name, counts) in enumerate(dist.mask_area.items()):
        axes.stairs(counts, edges, label=f"{name} (n={sum(counts)})", color=PALETTE[k % len(PALETTE)],
                    linewidth=1.8)
    used = max((k + 1 for counts in dist.mask_area.values() for k, c in enumerate(counts) if c), default=AREA_BINS)
    axes.set_xlim(0, min(1.0, (used + 1) / AREA_BINS))
    _style(axes, "Mask area as a fraction of the frame (every mask frame)", "area fraction", "masks")
    axes.legend(frameon=False, fontsize=8)
    return _png(figure)


def masklet_frames(dist: Distributions) -> bytes | None:
    if not dist.masklet_frames:
        return None
    figure = _figure(8, 3.2)
    axes = figure.add_subplot()
    series = {f"{name} ({_summary(counts)})": counts for name, counts in dist.masklet_frames.items()}
    _counter_bars(axes, series)
    _style(axes, "Masklet length (mask frames per object)", "frames with a mask", "objects")
    axes.legend(frameon=False, fontsize=8)
    return _png(figure)


def objects_per_clip(dist: Distributions) -> bytes | None:
    if not dist.objects_per_clip:
        return None
    figure = _figure(8, 3.2)
    axes = figure.add_subplot()
    series = {f"{name} ({_summary(counts)})": counts for name, counts in dist.objects_per_clip.items()}
    _counter_bars(axes, series)
    _style(axes, "Objects per clip", "objects", "clips")
    axes.legend(frameon=False, fontsize=8)
    return _png(figure)


def qa_types(dist: Distributions) -> bytes | None:
    if not dist.qa_types:
        return None
    figure = _figure(6, 3.0)
    axes = figure.add_subplot()
    names = list(dist.qa_types)
    axes.bar(names, [dist.qa_types[n] for n in names], color=[PALETTE[k % len(PALETTE)] for k in range(len(names))])
    for k, name in enumerate(names):
        axes.text(k, dist.qa_types[name], str(dist.qa_types[name]), ha="center", va="bottom", fontsize=8)
    _style(axes, "QA pairs per type", "", "questions")
    return _png(figure)


def runs(rows: Sequence[RunSummary]) -> bytes | None:
    if not rows:
        return None
    figure = _figure(8, 3.0)
    axes = figure.add_subplot()
    positions = list(range(len(rows)))
    colors = [PALETTE[4] if r.failures else PALETTE[0] for r in rows]
    axes.bar(positions, [r.wall_seconds for r in rows], color=colors, width=0.6)
    axes.set_xlim(-0.8, max(4, len(rows)) - 0.2)
    labels = [f"{r.run_id.split('-')[0]}\n{r.created[5:16].replace('T', ' ')}" for r in rows]
    axes.set_xticks(positions, labels, rotation=60 if len(rows) > 6 else 0, fontsize=7)
    _style(axes, "Wall time of the latest runs (red: a task failed)", "run (oldest first)", "seconds")
    return _png(figure)


def audit_scores(audit: AuditSummary) -> bytes | None:
    """Histogram of the per-object J, F and J&F of the mask audit, where its objects carry them."""
    series: dict[str, list[float]] = {}
    for key, label in (("J", "J (region IoU)"), ("F", "F (boundary)"), ("JF", "J&F")):
        values = []
        for obj in audit.objects:
            value = obj.get(key, obj.get(f"{key}_mean"))
            if isinstance(value, int | float) and not isinstance(value, bool):
                values.append(float(value))
        if values:
            series[label] = values
    if not series:
        return None
    figure = _figure(8, 3.2)
    axes = figure.add_subplot()
    edges = [k / 20 for k in range(21)]
    for k, (name, values) in enumerate(series.items()):
        axes.hist(values, bins=edges, histtype="step", linewidth=1.8, label=f"{name} (n={len(values)})",
                  color=PALETTE[k % len(PALETTE)])
    axes.set_xlim(0, 1)
    _style(axes, f"Segmentation quality per object{f' ({audit.stage})' if audit.stage else ''}", "score",
           "objects")
    axes.legend(frameon=False, fontsize=8)
    return _png(figure)
