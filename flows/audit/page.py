"""The reviewer's labelling page: one self-contained HTML file (inline CSS and vanilla JS, images as data URIs).

Each sampled candidate shows its key frame with the mask outlined in red (as the reviewer's captioner saw it),
the annotator's appearance and motion texts, the region caption, the reviewer's decision and the judge's reason,
and Keep / Drop buttons (click again to clear). A checkbox hides the reviewer's decisions while labelling, to
label without anchoring on them. Labels live in the page's state (and in the browser's localStorage, so a
reload keeps them); the "Download labels" link is rebuilt from that state on every change as a `data:` URL of a
labels JSON file (`flows.audit.review.LABELS_KIND`), which `videorefer audit score --labels FILE` reads. No
network access: nothing is loaded from anywhere. The markup, style and script are the jinja2 templates
`templates/review.{html,css,js}.j2`, rendered by `engine.pages` with autoescaping on: every value from the data
(nouns, texts, ids) is HTML-escaped and the page's metadata reaches its JSON script through `tojson`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.ids import stable_hash
from engine.pages import render_template
from flows.audit.common import RED, fit, jpeg_data_uri
from flows.audit.review import (
    DEFAULT_SAMPLE,
    LABELS_KIND,
    LABELS_VERSION,
    REVIEW_PAGE,
    ReviewCandidate,
    review_candidates,
    sample_candidates,
)
from flows.pipeline import layout

IMAGE_SIDE = 480
TEMPLATE = "review.html.j2"
_FROZEN = {"frozen": True, "slots": True, "kw_only": True}


@dataclass(**_FROZEN)
class ReviewPage:
    """A written labelling page: where, and how many candidates it shows of how many."""

    path: str
    url: str
    items: int
    candidates: int
    kept: int


def write_review_page(
    root: layout.RootLike, *, sample: int = DEFAULT_SAMPLE, seed: int = 0, out: str | None = None
) -> ReviewPage:
    """Sample the root's reviewed candidates and write the labelling page (default `reports/audit/review.html`)."""
    droot = layout.open_root(root)
    candidates = review_candidates(droot)
    picked = sample_candidates(candidates, sample, seed=seed)
    meta = {
        "kind": LABELS_KIND,
        "version": LABELS_VERSION,
        "root": droot.url,
        "seed": seed,
        "sample": sample,
        "page_id": stable_hash("review-page", droot.url, seed, [c.object_id for c in picked]),
    }
    text = render_page(picked, overlays(picked), meta=meta)
    relative = out or REVIEW_PAGE
    droot.write_bytes(relative, text.encode("utf-8"))
    return ReviewPage(
        path=relative, url=droot.url_of(relative), items=len(picked), candidates=len(candidates),
        kept=sum(c.decision == "keep" for c in picked),
    )


def overlays(candidates: Sequence[ReviewCandidate], *, max_side: int = IMAGE_SIDE) -> dict[str, str]:
    """Per object id, its key frame with the mask outlined, as a JPEG data URI (videos read once each)."""
    from engine.masks import decode_rle
    from engine.render import draw_contour
    from engine.video import read_frames

    by_video: dict[str, list[ReviewCandidate]] = {}
    for candidate in candidates:
        by_video.setdefault(candidate.record.clip.video_uri, []).append(candidate)
    images: dict[str, str] = {}
    for video, group in by_video.items():
        keys = [key_frame(c) for c in group]
        try:
            frames = read_frames(video, sorted(set(keys)))
        except Exception:  # an unreadable video: its cards say so instead of showing a picture
            continue
        frame_at = dict(zip(sorted(set(keys)), frames, strict=True))
        for candidate, key in zip(group, keys, strict=True):
            mask = decode_rle(candidate.record.masklet.masks[key])
            frame = frame_at[key]
            if mask.shape != frame.shape[:2]:
                continue
            images[candidate.object_id] = jpeg_data_uri(fit(draw_contour(frame, mask, RED, 2), max_side))
    return images


def key_frame(candidate: ReviewCandidate) -> int:
    """The frame the reviewer was shown: the masklet's key frame when it has a mask there, else its first."""
    masklet = candidate.record.masklet
    return masklet.key_frame if masklet.key_frame in masklet.masks else masklet.frame_indices[0]


def render_page(candidates: Sequence[ReviewCandidate], images: Mapping[str, str], *, meta: Mapping[str, Any]) -> str:
    """The page's HTML (see the module docstring), from the template `templates/review.html.j2`."""
    kept = sum(c.decision == "keep" for c in candidates)
    summary = (f"{len(candidates)} candidates sampled (seed {meta.get('seed', 0)}); the reviewer kept {kept} "
               f"and dropped {len(candidates) - kept}.")
    cards = [_card(position, c, images.get(c.object_id, "")) for position, c in enumerate(candidates, 1)]
    return render_template("flows.audit", TEMPLATE, title="Reviewer audit: label the candidates", summary=summary,
                           root=str(meta.get("root", "")), cards=cards, meta=dict(meta))


def _card(position: int, candidate: ReviewCandidate, image: str) -> dict[str, Any]:
    """What one candidate's card shows (the template escapes every value)."""
    record = candidate.record
    descriptions = record.descriptions
    return {
        "position": position, "object_id": record.object_id, "clip_id": record.clip_id, "noun": record.noun,
        "decision": candidate.decision, "image": image, "frame": key_frame(candidate),
        "video": _video_name(record.clip.video_uri),
        "rows": [  # (the judge's, name, value): the judge's rows hide with the reviewer's decisions
            (False, "Appearance (annotator)", descriptions.appearance if descriptions else ""),
            (False, "Motion (annotator)", descriptions.motion if descriptions else ""),
            (False, "Region caption (reviewer's captioner)", candidate.region_caption),
            (True, "Judge's reason", candidate.reason),
        ],
    }


def _video_name(uri: str) -> str:
    return uri.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
