"""Every HTML page (the data report, the reviewer's labelling page) escapes hostile data and stays self-contained.

Hostile values (a `<script>` element, an attribute breaker with quotes, `&`, an `onerror` image) are put into every
field a page prints: captions, messages, ids, paths, nouns, the page's metadata. The page must show each of them
as text (an HTML parser reads the very value back), add no element or attribute of its own making, and load
nothing from anywhere.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

from engine.types import Clip, Descriptions, Masklet, ObjectRecord, Provenance, RleMask
from flows.audit.page import render_page as render_review_page
from flows.audit.review import ReviewCandidate
from flows.reporting.collect import (
    AuditSummary,
    CallCost,
    Distributions,
    ExportSummary,
    RejectExample,
    RootFigures,
    RunSummary,
    StageFunnel,
)
from flows.reporting.gallery import Gallery, GalleryItem
from flows.reporting.page import PLOTS
from flows.reporting.page import render_page as render_report_page

HOSTILE = """<script>alert("x")</script> & 'q' "><img src=x onerror=alert(1)> &amp; </textarea>"""
ATTRIBUTE_BREAKER = 'x" onerror="alert(1)'
VIDEO_NAME = """v <b class='bold'> & 'q' "x".mp4"""  # a file name: no slash


def hostile(label: str) -> str:
    return f"{label} {HOSTILE}"


class _Page(HTMLParser):
    """The tags of a page with their attributes, its text, and the text of its script elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        (self.scripts if self._in_script else self.text).append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _assert_nothing_injected(text: str, page: _Page) -> None:
    assert "<script>alert" not in text and "<img src=x" not in text and "</textarea>" not in text
    assert not any("onerror" in attrs for _, attrs in page.elements)
    assert not any(tag == "img" and attrs.get("src") == "x" for tag, attrs in page.elements)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing loaded from anywhere
    assert not any(tag in ("link", "iframe", "object", "embed") for tag, _ in page.elements)


# ---------------------------------------------------------------- the data report


def _figures() -> RootFigures:
    funnel = (
        StageFunnel(stage=hostile("stage"), shards=2, done=1, stale=1, reported=1, items_in=5, items_out=3,
                    rejects={hostile("reason"): 2}, seconds=1.5),
        StageFunnel(stage="refine", shards=2, done=2, stale=0, reported=2, items_in=3, items_out=3, rejects={},
                    seconds=0.5),
    )
    return RootFigures(
        url=hostile("url"), name=hostile("name"), shards=2, clips=5, funnel=funnel,
        reject_examples=(RejectExample(stage=funnel[0].stage, reason=hostile("reason"), item_id=hostile("item"),
                                       clip_id="c", message=hostile("message")),),
        costs=(CallCost(stage="refine", agent=hostile("agent"), backend=hostile("backend"), model=hostile("model"),
                        prompt_version=hostile("prompt"), calls=2, latency_s=0.5, prompt_tokens=10,
                        completion_tokens=5),),
        distributions=Distributions(caption_words={}, mask_area={}, masklet_frames={}, objects_per_clip={},
                                    qa_types={}),
        runs=(RunSummary(run_id=hostile("run"), created=hostile("created"), wall_seconds=2.0, ran=1, skipped=0,
                         failures=0, rejected=2),),
        export=ExportSummary(samples={hostile("task"): 3}, rejects={hostile("export-reason"): 1}, tars=1,
                             bytes=1000, json_files=1),
        audit=AuditSummary(j_mean=0.5, f_mean=0.5, jf_mean=0.5, stage=hostile("audit-stage"),
                           objects=({"stage": "segment", "object_id": hostile("audit-object"), "JF": 0.4},),
                           stages=({"stage": hostile("audit-stages"), "J_mean": 0.5},),
                           other={hostile("figure"): 3, "truth": hostile("truth")}),
        notes=(hostile("note"),),
    )


def _gallery() -> Gallery:
    provenance = Provenance(agent=hostile("p-agent"), backend="fake", model=hostile("p-model"),
                            prompt_version="v1")
    items = (
        GalleryItem(task="short", key=hostile("key"), clip_id=hostile("clip"), video=hostile("video"),
                    image=f"assets/gallery/{ATTRIBUTE_BREAKER}.webp",
                    turns=(("human", hostile("question")), ("gpt", hostile("answer"))),
                    objects=(("o", hostile("category"), 2),), frames=(0, 4),
                    provenance=((hostile("field"), provenance),), mode=hostile("mode")),
        GalleryItem(task=hostile("task"), key=hostile("broken"), error=hostile("error")),
    )
    return Gallery(items={"short": items[:1], hostile("task"): items[1:]}, available={"short": 4}, tars=1,
                   notes=(hostile("gallery-note"),))


def test_the_data_report_escapes_every_value_from_the_data() -> None:
    plots = {name: f"assets/{name}.png" for name in PLOTS}
    plots["runs"] = f"assets/{ATTRIBUTE_BREAKER}.png"
    worst = [(f"audit/{ATTRIBUTE_BREAKER}.png", {"object_id": hostile("worst"), "JF": 0.1}),
             (None, {"image": hostile("missing-image")})]
    text = render_report_page(_figures(), _gallery(), plots, worst=worst, generated=hostile("generated"),
                              per_kind=2, seed=1)
    page = _parse(text)
    _assert_nothing_injected(text, page)
    assert not any(tag == "script" for tag, _ in page.elements)  # the report has no script at all
    shown = "".join(page.text)
    labels = ("name", "url", "generated", "stage", "reason", "item", "message", "agent", "backend", "model",
              "prompt", "run", "created", "task", "export-reason", "note", "key", "clip", "video", "question",
              "answer", "category", "field", "p-agent", "p-model", "mode", "broken", "error", "gallery-note",
              "audit-stage", "audit-object", "audit-stages", "figure", "truth", "worst", "missing-image")
    for label in labels:
        assert hostile(label) in shown, f"{label} is not shown as text"
    sources = {attrs.get("src") for tag, attrs in page.elements if tag == "img"}
    assert f"assets/gallery/{ATTRIBUTE_BREAKER}.webp" in sources  # the quote stayed inside its attribute
    assert {f"assets/{ATTRIBUTE_BREAKER}.png", f"audit/{ATTRIBUTE_BREAKER}.png"} <= sources
    alts = {attrs.get("alt") for tag, attrs in page.elements if tag == "img"}
    assert f"frames of {hostile('key')} with masks" in alts
    assert "&amp;amp;" in text  # "&amp;" in the data is printed as the five characters, not as "&"


# ---------------------------------------------------------------- the reviewer's labelling page


def _candidate(decision: str) -> ReviewCandidate:
    clip = Clip(clip_id=hostile("clip-id"), video_uri=f"/data/{VIDEO_NAME}", caption=hostile("caption"))
    masklet = Masklet(masks={3: RleMask(height=4, width=4, counts="0")}, key_frame=3)
    record = ObjectRecord(object_id=hostile(f"object-{decision}"), clip=clip, noun=hostile("noun"),
                          descriptions=Descriptions(appearance=hostile("appearance"), motion=hostile("motion")),
                          masklet=masklet)
    return ReviewCandidate(record=record, shard_id="s", decision=decision, region_caption=hostile("region"),
                           reason=hostile("judge"))


def test_the_labelling_page_escapes_every_value_and_keeps_its_metadata_json() -> None:
    candidates = [_candidate("keep"), _candidate("drop")]
    images = {candidates[0].object_id: "data:image/jpeg;base64,AAAA+/=="}
    meta = {"kind": "videorefer-review-labels", "root": hostile("root"), "seed": 3, "page_id": hostile("page")}
    text = render_review_page(candidates, images, meta=meta)
    page = _parse(text)
    _assert_nothing_injected(text, page)
    scripts = [attrs for tag, attrs in page.elements if tag == "script"]
    assert scripts == [{"id": "audit-meta", "type": "application/json"}, {}]  # its metadata and its own code
    assert json.loads(page.scripts[0]) == meta  # the hostile metadata survives as data, inside its script
    assert "</script> &" not in page.scripts[0]
    shown = "".join(page.text)
    for label in ("root", "noun", "appearance", "motion", "region", "judge"):
        assert hostile(label) in shown, f"{label} is not shown as text"
    assert VIDEO_NAME in shown and f"clip {hostile('clip-id')[:16]} · object {hostile('object-keep')[:16]}" in shown
    assert not any(tag == "b" and "bold" in str(attrs) for tag, attrs in page.elements)
    cards = [attrs for tag, attrs in page.elements if tag == "article"]
    assert [card["data-object-id"] for card in cards] == [c.object_id for c in candidates]
    assert all(card["data-noun"] == hostile("noun") and card["data-clip-id"] == hostile("clip-id") for card in cards)
    assert [attrs["src"] for tag, attrs in page.elements if tag == "img"] == [images[candidates[0].object_id]]
    assert text.count('<button type="button" data-label="keep"') == 2


def test_an_empty_labelling_page_says_so() -> None:
    text = render_review_page([], {}, meta={"seed": 0})
    assert "No reviewed candidates in this root" in text and 'class="card"' not in text
