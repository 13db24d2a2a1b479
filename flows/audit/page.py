"""The reviewer's labelling page: one self-contained HTML file (inline CSS and vanilla JS, images as data URIs).

Each sampled candidate shows its key frame with the mask outlined in red (as the reviewer's captioner saw it),
the annotator's appearance and motion texts, the region caption, the reviewer's decision and the judge's reason,
and Keep / Drop buttons (click again to clear). A checkbox hides the reviewer's decisions while labelling, to
label without anchoring on them. Labels live in the page's state (and in the browser's localStorage, so a
reload keeps them); the "Download labels" link is rebuilt from that state on every change as a `data:` URL of a
labels JSON file (`flows.audit.review.LABELS_KIND`), which `videorefer audit score --labels FILE` reads. No
network access: nothing is loaded from anywhere.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.ids import stable_hash
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
    """The page's HTML (see the module docstring)."""
    cards = "\n".join(_card(position, c, images.get(c.object_id, "")) for position, c in enumerate(candidates, 1))
    if not candidates:
        cards = '<p class="empty">No reviewed candidates in this root (run the review stage first).</p>'
    kept = sum(c.decision == "keep" for c in candidates)
    summary = (f"{len(candidates)} candidates sampled (seed {meta.get('seed', 0)}); the reviewer kept {kept} "
               f"and dropped {len(candidates) - kept}.")
    meta_json = json.dumps(dict(meta), sort_keys=True).replace("</", "<\\/")
    return _PAGE.format(
        title="Reviewer audit: label the candidates",
        summary=html.escape(summary),
        root=html.escape(str(meta.get("root", ""))),
        cards=cards,
        meta=meta_json,
        style=_STYLE,
        script=_SCRIPT,
    )


def _card(position: int, candidate: ReviewCandidate, image: str) -> str:
    record = candidate.record
    descriptions = record.descriptions
    esc = html.escape
    picture = (
        f'<img src="{image}" alt="frame {key_frame(candidate)} with the object outlined in red">'
        if image else '<div class="noimage">frame not readable</div>'
    )
    rows = [
        ("", "Appearance (annotator)", descriptions.appearance if descriptions else ""),
        ("", "Motion (annotator)", descriptions.motion if descriptions else ""),
        ("", "Region caption (reviewer's captioner)", candidate.region_caption),
        (' class="judge"', "Judge's reason", candidate.reason),
    ]
    details = "".join(
        f"<dt{css}>{esc(name)}</dt><dd{css}>{esc(value) or '&mdash;'}</dd>" for css, name, value in rows
    )
    return (
        f'<article class="card" id="item-{position}" data-object-id="{esc(record.object_id)}" '
        f'data-clip-id="{esc(record.clip_id)}" data-noun="{esc(record.noun)}" data-reviewer="{candidate.decision}">'
        f"{picture}"
        f'<div class="body"><h2><span class="n">#{position}</span> <span class="noun">{esc(record.noun)}</span> '
        f'<span class="decision {candidate.decision}">reviewer: {candidate.decision}</span></h2>'
        f"<dl>{details}</dl>"
        f'<p class="ids">clip {esc(record.clip_id[:16])} &middot; object {esc(record.object_id[:16])} &middot; '
        f"frame {key_frame(candidate)} &middot; {esc(_video_name(record.clip.video_uri))}</p>"
        '<div class="buttons"><button type="button" data-label="keep" aria-pressed="false">Keep</button>'
        '<button type="button" data-label="drop" aria-pressed="false">Drop</button></div>'
        "</div></article>"
    )


def _video_name(uri: str) -> str:
    return uri.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


_STYLE = """
:root { --keep: #1a7f37; --drop: #b42318; --line: #d0d7de; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
  background: #f6f8fa; }
header { position: sticky; top: 0; z-index: 1; background: #fff; border-bottom: 1px solid var(--line);
  padding: 10px 16px; display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: center; }
header h1 { font-size: 17px; margin: 0; }
header .help { flex-basis: 100%; margin: 0; color: #57606a; }
#progress { font-weight: 600; }
#download { font-weight: 600; color: #0969da; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 14px; padding: 16px; }
.card { background: #fff; border: 2px solid var(--line); border-radius: 8px; overflow: hidden; }
.card[data-label="keep"] { border-color: var(--keep); }
.card[data-label="drop"] { border-color: var(--drop); }
.card img { display: block; width: 100%; height: auto; background: #000; }
.noimage { padding: 40px; text-align: center; color: #57606a; background: #eaeef2; }
.body { padding: 8px 12px 12px; }
h2 { font-size: 15px; margin: 0 0 6px; }
.n { color: #57606a; font-weight: 400; }
.decision { float: right; font-size: 12px; padding: 1px 8px; border-radius: 10px; color: #fff; }
.decision.keep { background: var(--keep); }
.decision.drop { background: var(--drop); }
body.hide-reviewer .decision, body.hide-reviewer .judge { visibility: hidden; }
dl { margin: 0; } dt { font-size: 12px; color: #57606a; margin-top: 4px; } dd { margin: 0; }
.ids { font-size: 11px; color: #8c959f; margin: 6px 0; word-break: break-all; }
.buttons { display: flex; gap: 8px; }
.buttons button { flex: 1; padding: 6px; font-size: 14px; border-radius: 6px; border: 1px solid var(--line);
  background: #f6f8fa; cursor: pointer; }
.buttons button[data-label="keep"][aria-pressed="true"] { background: var(--keep); color: #fff; }
.buttons button[data-label="drop"][aria-pressed="true"] { background: var(--drop); color: #fff; }
.empty { padding: 24px; }
"""

_SCRIPT = """
(function () {
  "use strict";
  var meta = JSON.parse(document.getElementById("audit-meta").textContent);
  var storeKey = "videorefer-review-labels:" + meta.page_id;
  var labels = {};
  try { labels = JSON.parse(window.localStorage.getItem(storeKey) || "{}") || {}; } catch (e) { labels = {}; }
  var cards = Array.prototype.slice.call(document.querySelectorAll(".card"));

  function labelsDocument() {
    return {
      kind: meta.kind, version: meta.version, labeller: "human", root: meta.root, seed: meta.seed,
      sample: meta.sample, positive: "keep",
      items: cards.map(function (card) {
        var id = card.getAttribute("data-object-id");
        return {object_id: id, clip_id: card.getAttribute("data-clip-id"), noun: card.getAttribute("data-noun"),
                reviewer: card.getAttribute("data-reviewer"), label: labels[id] || null};
      })
    };
  }

  function render() {
    var done = 0;
    cards.forEach(function (card) {
      var label = labels[card.getAttribute("data-object-id")] || "";
      card.setAttribute("data-label", label);
      card.querySelectorAll("button[data-label]").forEach(function (button) {
        button.setAttribute("aria-pressed", String(button.getAttribute("data-label") === label));
      });
      if (label) { done += 1; }
    });
    document.getElementById("progress").textContent = done + " / " + cards.length + " labelled";
    var text = JSON.stringify(labelsDocument(), null, 2);
    document.getElementById("download").setAttribute(
      "href", "data:application/json;charset=utf-8," + encodeURIComponent(text));
  }

  function save() {
    try { window.localStorage.setItem(storeKey, JSON.stringify(labels)); } catch (e) { /* private mode */ }
    render();
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-label]");
    if (!button) { return; }
    var id = button.closest(".card").getAttribute("data-object-id");
    var label = button.getAttribute("data-label");
    if (labels[id] === label) { delete labels[id]; } else { labels[id] = label; }
    save();
  });
  document.getElementById("clear").addEventListener("click", function () {
    if (window.confirm("Clear every label on this page?")) { labels = {}; save(); }
  });
  document.getElementById("hide-reviewer").addEventListener("change", function (event) {
    document.body.classList.toggle("hide-reviewer", event.target.checked);
  });
  render();
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<span id="progress">0 labelled</span>
<a id="download" href="#" download="review-labels.json">Download labels (JSON)</a>
<label><input type="checkbox" id="hide-reviewer"> hide the reviewer's decisions</label>
<button type="button" id="clear">Clear labels</button>
<p class="help">{summary} <b>Keep</b> when the red outline is the object the annotator's texts describe (right
object, mask on it); <b>Drop</b> otherwise. Then download the labels and run
<code>videorefer audit score --labels review-labels.json</code>. Root: {root}</p>
</header>
<main>
{cards}
</main>
<script id="audit-meta" type="application/json">{meta}</script>
<script>{script}</script>
</body>
</html>
"""
