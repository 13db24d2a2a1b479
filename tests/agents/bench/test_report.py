"""Reports put our figures in the paper's table layout beside the published rows, as Markdown and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from agents.bench.judge import score_d
from agents.bench.q_scoring import score_q
from agents.bench.report import d_report, q_report, write_report
from engine.errors import RejectReason
from engine.types import Reject


def test_q_report_table_has_paper_rows_and_ours(tmp_path: Path) -> None:
    score = score_q([
        {"id": "0", "type": "Basic Questions", "pred": "(A)", "answer_letter": "A", "option_letters": ["A", "B"]},
        {"id": "1", "type": "Future Predictions", "pred": "zzz", "answer_letter": "B", "option_letters": ["A", "B"]},
    ])
    reject = Reject(stage="bench_q_read", item_id="9", clip_id="v", reason=RejectReason.VIDEO_NOT_FOUND,
                    message="video not found: v")
    markdown, data = q_report(score, model="tiny", mode="single", items=2, rejects=[reject], run={"frames": 16})
    header = next(line for line in markdown.splitlines() if line.startswith("| Model"))
    assert header == "| Model | Mode | Basic | Sequential | Relationship | Reasoning | Future | Overall |"
    assert "| VideoRefer-7B (paper) | single | 75.4 | 68.6 | 59.3 | 89.4 | 78.1 | 71.9 |" in markdown
    assert "| Osprey-7B (paper) | single | - | - | - | - | - | 39.9 |" in markdown
    assert "| **tiny (ours)** | single | 100.0 | - | - | - | 0.0 | 50.0 |" in markdown
    assert "`1`" in markdown and "video_not_found" in markdown
    md_path, json_path = write_report(tmp_path, "q-single", markdown, data)
    assert md_path.read_text() == markdown
    loaded = json.loads(json_path.read_text())
    assert loaded["accuracy_percent"]["overall"] == 50.0 and loaded["rejects"][0]["reason"] == "video_not_found"


def test_d_report_with_and_without_judge() -> None:
    records = [
        {"id": "0", "scores": {"subject_correspondence": 4, "appearance_description": 3, "temporal_description": 2,
                               "hallucination_detection": 1}, "prompt_tokens": 100, "completion_tokens": 20},
        {"id": "1", "scores": None, "prompt_tokens": 50, "completion_tokens": 10},
    ]
    markdown, data = d_report(score_d(records), model="tiny", mode="multi", items=2, predicted=2, rejects=[],
                              run={})
    assert "| Model | Mode | SC | AD | TD | HD | Avg |" in markdown
    assert "| VideoRefer-7B (paper) | single | 4.41 | 3.27 | 3.03 | 2.97 | 3.42 |" in markdown
    assert "| **tiny (ours)** | multi | 4.00 | 3.00 | 2.00 | 1.00 | 2.50 |" in markdown
    assert "150 prompt + 30 completion" in markdown and "unparseable" in markdown
    assert "all....\n2.5" in markdown  # the release's printout
    assert data["score"]["means"]["SC"] == 4.0
    unjudged, data = d_report(None, model="tiny", mode="single", items=3, predicted=3, rejects=[], run={})
    assert "not judged" in unjudged and data["score"] is None
    assert "| **tiny (ours)** | single | - | - | - | - | - |" in unjudged
