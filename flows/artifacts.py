"""Prefect artifacts of training and evaluation runs: plain functions make their content, the flows publish it.

Training: `write_loss_curve` draws `<out>/log.jsonl` as `<out>/loss.png` (matplotlib's Agg canvas, no display;
`videorefer train` and the `train_stage` flow both write it) and `training_summary` is a markdown page of the run
(recipe, steps, last and lowest loss, throughput, bad samples, where the model is, the loss at up to 20 steps).
Evaluation: `scores_table` is a markdown table of every (checkpoint, benchmark, mode) the flow ran with its score
(Bench-Q overall accuracy in %, Bench-D judge average 0-5). `publish_training` / `publish_evaluation` hand these to
Prefect (`create_markdown_artifact`, `create_image_artifact`); everything else here runs and is tested without
Prefect. A Prefect image artifact is a URL the UI puts in an `<img>`: the PNG goes in as a `data:image/png;base64`
URL (a few tens of KB), since a file path on the training machine means nothing to a browser elsewhere; the
summary names `<out>/loss.png` too, and its table of losses reads where no image shows.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LOSS_CURVE = "loss.png"
TABLE_ROWS = 20


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes only) made of `parts`, at most 100 characters."""
    text = "-".join(str(part) for part in parts if str(part))
    key = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return key[:100].strip("-") or "run"


def read_log(out: str | Path) -> list[dict[str, Any]]:
    """The step records of `<out>/log.jsonl` in file order (unreadable lines skipped); [] when there is none."""
    path = Path(out) / "log.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record and "loss" in record:
            records.append(record)
    return records


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def loss_curve_png(records: Sequence[Mapping[str, Any]], *, title: str = "training loss") -> bytes | None:
    """The loss by step (and the learning rate on a second axis) as PNG bytes; None without a finite loss."""
    points = [(int(r["step"]), float(r["loss"])) for r in records if _finite(r.get("loss"))]
    if not points:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.6), dpi=90, layout="constrained")
    axes = figure.add_subplot()
    steps, losses = zip(*points, strict=True)
    axes.plot(steps, losses, color="#3b6ea8", marker="o" if len(points) <= 30 else None, markersize=3,
              linewidth=1.4, label="loss")
    axes.set_title(title, fontsize=11, loc="left")
    axes.set_xlabel("step")
    axes.set_ylabel("loss", color="#3b6ea8")
    axes.grid(alpha=0.25)
    rates = [(int(r["step"]), float(r["lr"])) for r in records if _finite(r.get("lr"))]
    if rates:
        twin = axes.twinx()
        twin.plot(*zip(*rates, strict=True), color="#e07b39", linewidth=1.0, alpha=0.8, label="lr")
        twin.set_ylabel("learning rate", color="#e07b39")
        twin.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})  # no timestamp: same log, same bytes
    return buffer.getvalue()


def write_loss_curve(out: str | Path, records: Sequence[Mapping[str, Any]] | None = None) -> Path | None:
    """Write `<out>/loss.png` (atomically) from the run's log; None when the log holds no loss yet."""
    out = Path(out)
    png = loss_curve_png(read_log(out) if records is None else records, title=f"training loss: {out.name}")
    if png is None:
        return None
    target = out / LOSS_CURVE
    staging = target.with_name(f".{target.name}.tmp")
    staging.write_bytes(png)
    os.replace(staging, target)
    return target


def png_data_uri(png: bytes) -> str:
    """`data:image/png;base64,...`: an image URL that needs no server."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _sampled(records: Sequence[Mapping[str, Any]], rows: int) -> list[Mapping[str, Any]]:
    """Up to `rows` records evenly spread over the run, first and last included."""
    if len(records) <= rows:
        return list(records)
    picks = sorted({round(i * (len(records) - 1) / (rows - 1)) for i in range(rows)})
    return [records[i] for i in picks]


def _number(value: Any, spec: str) -> str:
    return format(float(value), spec) if _finite(value) else "n/a"


def training_summary(out: str | Path, records: Sequence[Mapping[str, Any]] | None = None,
                     recipe: Mapping[str, Any] | None = None) -> str:
    """A markdown page of a training run in `out` (its log and `recipe.json` unless given)."""
    out = Path(out)
    records = read_log(out) if records is None else list(records)
    if recipe is None:
        try:
            recipe = json.loads((out / "recipe.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            recipe = {}
    name = recipe.get("name", "?")
    lines = [f"# Training run `{out}`", ""]
    if not records:
        return "\n".join([*lines, f"Recipe {name}: no step logged (`{out / 'log.jsonl'}` is empty or missing).", ""])
    last = records[-1]
    finite = [r for r in records if _finite(r.get("loss"))]
    lowest = min(finite, key=lambda r: float(r["loss"])) if finite else None
    speeds = [float(r["tokens_per_s"]) for r in records if _finite(r.get("tokens_per_s"))]
    planned = recipe.get("max_steps")
    rows = [
        ("recipe", f"{name} (trains {', '.join(sorted(recipe.get('trainable', []))) or '?'})"),
        ("steps", f"{last['step']}" + (f" of {planned}" if planned else "")),
        ("last loss", _number(last.get("loss"), ".4f")),
        ("lowest loss", f"{_number(lowest['loss'], '.4f')} at step {lowest['step']}" if lowest else "n/a"),
        ("first loss", _number(records[0].get("loss"), ".4f")),
        ("learning rate at the end", _number(last.get("lr"), ".3e")),
        ("tokens/s (mean over logged steps)", _number(sum(speeds) / len(speeds), ".1f") if speeds else "n/a"),
        ("bad samples", str(last.get("bad_samples", 0))),
        ("model", f"`{out / 'model'}`"),
        ("loss curve", f"`{out / LOSS_CURVE}`"),
    ]
    lines += ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows), ""]
    lines += ["## Loss by step", "", "| step | loss | lr | grad norm |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['step']} | {_number(r.get('loss'), '.4f')} | {_number(r.get('lr'), '.2e')} | "
              f"{_number(r.get('grad_norm'), '.3f')} |" for r in _sampled(records, TABLE_ROWS)]
    return "\n".join(lines) + "\n"


def report_score(report_json: str | Path) -> float | None:
    """The headline number of a bench report JSON: Bench-Q overall accuracy (%), Bench-D judge average (0-5)."""
    try:
        data = json.loads(Path(report_json).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("bench") == "q":
        value = (data.get("accuracy_percent") or {}).get("overall")
    else:
        value = (data.get("score") or {}).get("average")
    return float(value) if _finite(value) else None


def scores_table(results: Sequence[Mapping[str, Any]], *, title: str = "Evaluation") -> str:
    """Markdown: one row per (checkpoint, benchmark, mode) result of `evaluate_checkpoint`, in run order."""
    lines = [f"# {title}", ""]
    if not results:
        return "\n".join([*lines, "Nothing was evaluated.", ""])
    lines += ["| checkpoint | benchmark | mode | score | predicted | resumed | rejected | report |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    for result in results:
        bench = {"q": "Bench-Q", "d": "Bench-D"}.get(str(result.get("bench")), str(result.get("bench")))
        score = result.get("score")
        unit = " %" if result.get("bench") == "q" else ""
        shown = f"{float(score):.2f}{unit}" if _finite(score) else "n/a"
        lines.append(f"| {result.get('checkpoint')} | {bench} | {result.get('mode')} | {shown} | "
                     f"{result.get('predicted', 0)} | {result.get('resumed', 0)} | {result.get('rejected', 0)} | "
                     f"`{result.get('report', '')}` |")
    lines += ["", "Bench-Q: overall accuracy in %; Bench-D: judge average (0-5; n/a when no judge was given)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- publishing (the only Prefect part)


def publish_training(out: str | Path, *, key: str) -> dict[str, str]:
    """Write `<out>/loss.png` and publish the summary (markdown) and the loss curve (image) under `key`."""
    from prefect.artifacts import create_image_artifact, create_markdown_artifact

    out = Path(out)
    records = read_log(out)
    published = {"summary": str(create_markdown_artifact(
        markdown=training_summary(out, records), key=artifact_key(key, "summary"),
        description=f"training run {out}"))}
    png_path = write_loss_curve(out, records)
    if png_path is not None:
        published["loss_curve"] = str(create_image_artifact(
            image_url=png_data_uri(png_path.read_bytes()), key=artifact_key(key, "loss"),
            description=f"loss by step of {out} (also {png_path})"))
    return published


def publish_evaluation(results: Sequence[Mapping[str, Any]], *, key: str, title: str) -> str:
    """Publish the scores table (markdown) under `key`."""
    from prefect.artifacts import create_markdown_artifact

    return str(create_markdown_artifact(markdown=scores_table(results, title=title), key=artifact_key(key, "scores"),
                                        description=title))
