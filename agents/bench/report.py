"""Benchmark reports: our Bench-D / Bench-Q figures in the paper's table layout, beside the published rows.

Each run writes `<stem>.md` (human) and `<stem>.json` (machine) atomically. Bench-D: SC / AD / TD / HD / Avg
(0-5, judge means). Bench-Q: accuracy (%) per type (basic, sequential, relationship, reasoning, future) and
overall. The published rows come from PAPER.md (overall figures) and the benchmark's release notes (per-type
and multi-frame figures); a cell the publication does not give is shown as "-".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agents.bench.files import Q_TYPES, write_json_atomic, write_text_atomic
from agents.bench.judge import ABBREVIATIONS, DScore
from agents.bench.q_scoring import QScore
from engine.types import Reject

D_COLUMNS = ("SC", "AD", "TD", "HD", "Avg")
Q_COLUMNS = (*Q_TYPES.values(), "overall")
Q_HEADERS = ("Basic", "Sequential", "Relationship", "Reasoning", "Future", "Overall")

# Published Bench-D scores (judge GPT-4o): PAPER.md single-frame rows; multi-frame rows from the release notes.
PAPER_D: tuple[dict[str, Any], ...] = (
    {"model": "GPT-4o", "mode": "single", "SC": 3.34, "AD": 2.96, "TD": 3.01, "HD": 2.50, "Avg": 2.95},
    {"model": "Osprey-7B", "mode": "single", "SC": 3.19, "AD": 2.16, "TD": 1.54, "HD": 2.45, "Avg": 2.34},
    {"model": "VideoRefer-7B", "mode": "single", "SC": 4.41, "AD": 3.27, "TD": 3.03, "HD": 2.97, "Avg": 3.42},
    {"model": "VideoRefer-VideoLLaMA3-7B", "mode": "single", "SC": 4.63, "AD": 3.59, "TD": 3.38, "HD": 3.29,
     "Avg": 3.72},
    {"model": "GPT-4o", "mode": "multi", "SC": 4.15, "AD": 3.31, "TD": 3.11, "HD": 2.43, "Avg": 3.25},
    {"model": "VideoRefer-7B", "mode": "multi", "SC": 4.44, "AD": 3.27, "TD": 3.10, "HD": 3.04, "Avg": 3.46},
)

# Published Bench-Q accuracies (%): overall from PAPER.md, per type from the release notes where given.
PAPER_Q: tuple[dict[str, Any], ...] = (
    {"model": "GPT-4o", "mode": "single", "basic": 62.3, "sequential": 74.5, "relationship": 66.0,
     "reasoning": 88.0, "future": 73.7, "overall": 71.3},
    {"model": "Osprey-7B", "mode": "single", "overall": 39.9},
    {"model": "VideoRefer-7B", "mode": "single", "basic": 75.4, "sequential": 68.6, "relationship": 59.3,
     "reasoning": 89.4, "future": 78.1, "overall": 71.9},
    {"model": "VideoRefer-7B", "mode": "multi", "overall": 72.1},
    {"model": "VideoRefer-VideoLLaMA3-7B", "mode": "single", "basic": 88.1, "sequential": 77.7,
     "relationship": 70.2, "reasoning": 88.8, "future": 79.8, "overall": 80.1},
)


def q_report(
    score: QScore, *, model: str, mode: str, items: int, rejects: Sequence[Reject], run: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """Markdown and JSON of a Bench-Q run (`items`: how many entries the file held that were runnable)."""
    ours = {key: 100.0 * acc.accuracy for key, acc in score.per_type.items()}
    ours["overall"] = 100.0 * score.overall.accuracy
    rows = [_q_row(f"{r['model']} (paper)", r["mode"], r) for r in PAPER_Q]
    rows.append(_q_row(f"**{model} (ours)**", mode, ours))
    lines = [
        f"# VideoRefer-Bench-Q: {model} ({mode}-frame)",
        "",
        f"Scored {score.overall.total} of {items} entries ({len(score.failed)} could not be run and count as "
        f"wrong); {score.overall.correct} correct. Accuracy in %, micro average over entries. Protocol: "
        f"{run.get('protocol', '?')}, {run.get('frames', '?')} frames.",
        "",
        "| Model | Mode | " + " | ".join(Q_HEADERS) + " |",
        "|---|---|" + "---:|" * len(Q_HEADERS),
        *rows,
        "",
        *_q_counts(score),
        "As the release's scorer prints it:",
        "",
        "```",
        score.release_text(),
        "```",
        "",
        *_unparseable(score),
        *_rejects(rejects, counted="scored wrong"),
        *_run_info(run),
    ]
    data = {
        "bench": "q", "model": model, "mode": mode, "items": items, "score": score.to_json(),
        "accuracy_percent": ours, "paper": list(PAPER_Q), "rejects": [_reject_json(r) for r in rejects],
        "run": dict(run),
    }
    return "\n".join(lines) + "\n", data


def d_report(
    score: DScore | None, *, model: str, mode: str, items: int, predicted: int, rejects: Sequence[Reject],
    run: Mapping[str, Any],
) -> tuple[str, dict[str, Any]]:
    """Markdown and JSON of a Bench-D run; `score` is None when no judge was given (predictions only)."""
    rows = [_d_row(f"{r['model']} (paper)", r["mode"], r) for r in PAPER_D]
    ours: dict[str, Any] = {}
    if score is not None:
        ours = {ABBREVIATIONS[dim]: value for dim, value in score.means.items()} | {"Avg": score.average}
    rows.append(_d_row(f"**{model} (ours)**", mode, ours))
    if score is None:
        summary = f"{predicted} of {items} descriptions predicted; not judged (no judge given)."
    else:
        counts = ", ".join(f"{ABBREVIATIONS[dim]} {n}" for dim, n in score.counts.items())
        summary = (f"{score.judged} of {items} descriptions judged (0-5 per dimension, each averaged over the items "
                   f"that have it: {counts}; Avg is the mean of the four). Protocol: {run.get('protocol', '?')}, "
                   f"{run.get('frames', '?')} frames; judge {run.get('judge', '?')} ({run.get('judge_sampling', '')}"
                   f", prompt sha256 {str(run.get('judge_prompt_sha256', '?'))[:12]}). Judge tokens: "
                   f"{score.prompt_tokens} prompt + {score.completion_tokens} completion.")
    lines = [
        f"# VideoRefer-Bench-D: {model} ({mode}-frame)",
        "",
        summary,
        "",
        "| Model | Mode | " + " | ".join(D_COLUMNS) + " |",
        "|---|---|" + "---:|" * len(D_COLUMNS),
        *rows,
        "",
    ]
    if score is not None:
        lines += ["As the release's `3.analyze_score.py` prints it:", "", "```", score.release_text(), "```", ""]
    if score is not None and score.malformed:
        lines += [f"## Judge replies still unparseable after re-asking ({len(score.malformed)})", "",
                  ", ".join(f"`{i}`" for i in score.malformed), ""]
    lines += [*_rejects(rejects), *_run_info(run)]
    data = {
        "bench": "d", "model": model, "mode": mode, "items": items, "predicted": predicted,
        "score": score.to_json() if score is not None else None, "paper": list(PAPER_D),
        "rejects": [_reject_json(r) for r in rejects], "run": dict(run),
    }
    return "\n".join(lines) + "\n", data


def write_report(out_dir: str | Path, stem: str, markdown: str, data: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write `<stem>.md` and `<stem>.json` into `out_dir` (each atomically)."""
    out = Path(out_dir)
    md_path, json_path = out / f"{stem}.md", out / f"{stem}.json"
    write_text_atomic(md_path, markdown)
    write_json_atomic(json_path, dict(data))
    return md_path, json_path


def _cell(value: Any, digits: int) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _q_row(name: str, mode: str, values: Mapping[str, Any]) -> str:
    return f"| {name} | {mode} | " + " | ".join(_cell(values.get(c), 1) for c in Q_COLUMNS) + " |"


def _d_row(name: str, mode: str, values: Mapping[str, Any]) -> str:
    return f"| {name} | {mode} | " + " | ".join(_cell(values.get(c), 2) for c in D_COLUMNS) + " |"


def _q_counts(score: QScore) -> list[str]:
    lines = ["| Type | Correct | Total | Accuracy (%) |", "|---|---:|---:|---:|"]
    for key, acc in score.per_type.items():
        lines.append(f"| {key} | {acc.correct} | {acc.total} | {100 * acc.accuracy:.1f} |")
    return [*lines, ""]


def _unparseable(score: QScore) -> list[str]:
    if not score.unparseable:
        return []
    lines = [f"## Replies without an option letter ({len(score.unparseable)}, counted wrong)", ""]
    for item in score.unparseable[:50]:
        reply = item.reply.replace("\n", " ").replace("|", "\\|")[:120]
        lines.append(f"- `{item.item_id}`: {reply!r}")
    if len(score.unparseable) > 50:
        lines.append(f"- ... {len(score.unparseable) - 50} more in the JSON report")
    return [*lines, ""]


def _rejects(rejects: Sequence[Reject], counted: str = "not evaluated") -> list[str]:
    if not rejects:
        return []
    lines = [f"## Entries that could not be run ({len(rejects)}, {counted})", "", "| Id | Reason | Message |",
             "|---|---|---|"]
    for reject in rejects[:50]:
        lines.append(f"| {reject.item_id} | {reject.reason} | {reject.message.replace('|', '/')[:160]} |")
    return [*lines, ""]


def _run_info(run: Mapping[str, Any]) -> list[str]:
    if not run:
        return []
    return ["## Run", "", *(f"- {key}: {value}" for key, value in run.items()), ""]


def _reject_json(reject: Reject) -> dict[str, str]:
    return {"stage": reject.stage, "id": reject.item_id, "video": reject.clip_id, "reason": str(reject.reason),
            "message": reject.message}
