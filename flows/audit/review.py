"""`videorefer audit review|truth-labels|score`: the reviewer's decisions, a sample to label, labels, and the scores.

Candidates are the objects the reviewer judged: every `segment` record of a shard whose `review` stage has run,
decided "keep" when it is in the `review` table (with its `Review`: region caption, the judge's reason) and "drop"
when the review rejected it as `review_rejected` (its message keeps the judge's reason and the region caption).
Objects the reviewer could not judge (missing inputs, undecodable video, a backend error) are not candidates.
The sample is deterministic: candidates ordered by a hash of (seed, object id), the first `n` taken.

Labels files (`LABELS_KIND`, written by the labelling page's download link and by `truth_labels`) list, per
sampled object, the reviewer's decision and the label ("keep", "drop", or null for not labelled yet).

Scores, positive class = keep (the paper's audit reports how well the reviewer keeps what a human would keep):
TP = reviewer keep & label keep, FP = reviewer keep & label drop, FN = reviewer drop & label keep, TN = both drop.
precision = TP / (TP + FP): of the candidates the reviewer kept, the fraction the human keeps; recall = TP /
(TP + FN): of the candidates the human keeps, the fraction the reviewer kept; F1 = 2PR / (P + R); accuracy =
(TP + TN) / labelled items. Unlabelled items are left out (and counted). A ratio with a zero denominator is None.
The paper's human audit (200 items): precision 0.88, recall 0.71, F1 0.79, accuracy 0.76 (`PAPER_REVIEWER`).

`truth_labels` labels candidates from ground truth (synthetic sidecars, or any `storage.truth` source): a
candidate should be kept when its masklet matches a truth object the noun names (`noun_matches`) with mean J
>= `match_iou` over the masklet's frames; when the truth has no object names, any truth object counts. A clip
without truth leaves its candidates unlabelled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.errors import ConfigError, RejectReason
from engine.ids import stable_hash
from engine.types import ObjectRecord
from flows.audit.common import AUDIT_DIR, mean_j, noun_matches
from flows.pipeline import layout
from storage.truth import TruthSource

Decision = Literal["keep", "drop"]
LABELS_KIND = "videorefer-review-labels"
LABELS_VERSION = 1
REVIEW_PAGE = f"{AUDIT_DIR}/review.html"
TRUTH_LABELS = f"{AUDIT_DIR}/review-labels.truth.json"
DEFAULT_SAMPLE = 200
PAPER_REVIEWER: Mapping[str, float] = {"precision": 0.88, "recall": 0.71, "f1": 0.79, "accuracy": 0.76}
PAPER_ITEMS = 200
_CAPTION_MARK = " | region caption: "
_FROZEN = {"frozen": True, "slots": True, "kw_only": True}


@dataclass(**_FROZEN)
class ReviewCandidate:
    """One object the reviewer judged, with what it was shown and what it decided."""

    record: ObjectRecord  # the segment stage's record: clip, noun, descriptions, masklet
    shard_id: str
    decision: Decision
    region_caption: str
    reason: str

    @property
    def object_id(self) -> str:
        return self.record.object_id

    @property
    def clip_id(self) -> str:
        return self.record.clip_id


def review_candidates(root: layout.RootLike) -> list[ReviewCandidate]:
    """Every judged object of the root, shard by shard in the segment table's order (see the module docstring)."""
    droot = layout.open_root(root)
    found: list[ReviewCandidate] = []
    for shard in layout.shards(droot):
        if not (droot.exists(droot.stage_path("review", shard)) and droot.exists(droot.stage_path("segment", shard))):
            continue
        accepted = {r.object_id: r for r in layout.read_stage(droot, "review", shard) if isinstance(r, ObjectRecord)}
        rejected = {
            r.item_id: r for r in layout.read_stage_rejects(droot, "review", shard)
            if r.reason == RejectReason.REVIEW_REJECTED
        }
        for record in layout.read_stage(droot, "segment", shard):
            if not isinstance(record, ObjectRecord) or record.masklet is None or not record.masklet.masks:
                continue
            if record.object_id in accepted:
                review = accepted[record.object_id].review
                found.append(ReviewCandidate(
                    record=record, shard_id=shard, decision="keep",
                    region_caption=review.region_caption if review else "", reason=review.reason if review else "",
                ))
            elif record.object_id in rejected:
                reason, caption = parse_reject_message(rejected[record.object_id].message)
                found.append(ReviewCandidate(
                    record=record, shard_id=shard, decision="drop", region_caption=caption, reason=reason
                ))
    return found


def parse_reject_message(message: str) -> tuple[str, str]:
    """(judge's reason, region caption) of a `review_rejected` message ("judge: ... | region caption: ...")."""
    head, mark, caption = message.rpartition(_CAPTION_MARK)
    if not mark:
        return message.removeprefix("judge: "), ""
    return head.removeprefix("judge: "), caption


def sample_candidates(candidates: Sequence[ReviewCandidate], n: int, *, seed: int = 0) -> list[ReviewCandidate]:
    """A deterministic sample of `n` candidates (all when `n` <= 0 or larger than the pool), in hash order."""
    ordered = sorted(candidates, key=lambda c: (stable_hash("audit-review", seed, c.object_id), c.object_id))
    return ordered if n <= 0 else ordered[:n]


# ---------------------------------------------------------------- labels


def labels_document(
    candidates: Sequence[ReviewCandidate],
    labels: Mapping[str, Decision | None],
    *,
    labeller: str,
    root: str,
    seed: int,
    sample: int,
) -> dict[str, Any]:
    """A labels file: the sampled candidates with the reviewer's decisions and the labels (None: not labelled)."""
    return {
        "kind": LABELS_KIND,
        "version": LABELS_VERSION,
        "labeller": labeller,
        "root": root,
        "seed": seed,
        "sample": sample,
        "positive": "keep",
        "items": [
            {"object_id": c.object_id, "clip_id": c.clip_id, "noun": c.record.noun, "reviewer": c.decision,
             "label": labels.get(c.object_id)}
            for c in candidates
        ],
    }


def read_labels(path: str | Path) -> dict[str, Any]:
    """A labels file, checked: its kind, and items with an object id, a reviewer decision and a label."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable labels file ({exc})") from exc
    if not isinstance(data, Mapping) or data.get("kind") != LABELS_KIND or not isinstance(data.get("items"), list):
        raise ConfigError(f"{path}: not a {LABELS_KIND} file (download it from the labelling page)")
    for position, item in enumerate(data["items"]):
        if not isinstance(item, Mapping) or not isinstance(item.get("object_id"), str):
            raise ConfigError(f"{path}: item {position} has no object_id")
        if item.get("label") not in ("keep", "drop", None) or item.get("reviewer") not in ("keep", "drop", None):
            raise ConfigError(f"{path}: item {position} has a label or decision other than keep/drop/null")
    return dict(data)


def truth_labels(
    candidates: Sequence[ReviewCandidate], truth: TruthSource, *, match_iou: float = 0.5
) -> dict[str, Decision | None]:
    """Labels from ground truth: keep when the masklet matches a truth object of the noun (module docstring)."""
    labels: dict[str, Decision | None] = {}
    for candidate in candidates:
        record = candidate.record
        video = truth.find(record.clip.video_uri)
        if video is None:
            labels[record.object_id] = None
            continue
        named = [obj for obj in video.objects if noun_matches(record.noun, obj)]
        pool = named if any(obj.name or obj.category for obj in video.objects) else list(video.objects)
        best = 0.0
        for obj in pool:
            frames = sorted(set(record.masklet.masks) & set(obj.masks))
            if frames:
                best = max(best, mean_j(record.masklet.masks, obj, frames, video.height, video.width))
        labels[record.object_id] = "keep" if best >= match_iou else "drop"
    return labels


# ---------------------------------------------------------------- scores


@dataclass(**_FROZEN)
class ReviewerScore:
    """The reviewer against labels: the confusion counts and the four ratios (None when undefined)."""

    tp: int
    fp: int
    fn: int
    tn: int
    unlabelled: int
    missing: int  # labelled items whose object the root no longer has (only when scored against a root)

    @property
    def labelled(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def accuracy(self) -> float | None:
        return _ratio(self.tp + self.tn, self.labelled)

    def to_json(self) -> dict[str, Any]:
        return {
            "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn, "labelled": self.labelled,
            "unlabelled": self.unlabelled, "missing": self.missing, "precision": self.precision,
            "recall": self.recall, "f1": self.f1, "accuracy": self.accuracy,
            "paper": {**PAPER_REVIEWER, "items": PAPER_ITEMS},
        }


def score_labels(labels: Mapping[str, Any], *, root: layout.RootLike | None = None) -> ReviewerScore:
    """Score the reviewer's decisions against a labels document; with `root`, the decisions are read from it."""
    decisions: dict[str, str] | None = None
    if root is not None:
        decisions = {c.object_id: c.decision for c in review_candidates(root)}
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    unlabelled = missing = 0
    for item in labels["items"]:
        label = item.get("label")
        if label is None:
            unlabelled += 1
            continue
        decision = item.get("reviewer") if decisions is None else decisions.get(item["object_id"])
        if decision is None:
            missing += 1
            continue
        kept, keep = decision == "keep", label == "keep"
        counts["tp" if kept and keep else "fp" if kept else "fn" if keep else "tn"] += 1
    return ReviewerScore(**counts, unlabelled=unlabelled, missing=missing)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None
