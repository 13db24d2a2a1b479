"""The web page of `videorefer app` (gradio): open a video, click objects, watch their masklets, ask the model.

The one module that imports gradio, lazily (inside `build_page`). `AppService` holds what the server shares between
browser sessions (the segmenter the config built, the loaded model, the limits, the examples, a work folder); each
browser session has one frozen `PageState` (gradio's `gr.State`). Every decision is a plain function of
`flows.interactive`; this module lays out the components and turns events into those calls. Input errors (not a
video, too large, too long, a question naming no object, a prompt the segmenter refuses, ...) become the message
on the page, and the server keeps serving. `start` launches the page on a host and port without blocking and
returns the handle whose `close()` stops it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.backends.base import Segmenter
from engine.errors import VideoReferError
from engine.ids import stable_hash
from engine.types import Provenance
from flows.interactive import (
    Answered,
    AppLimits,
    OpenedVideo,
    PickedObject,
    Point,
    Prompt,
    add_object,
    box_from_corners,
    masks_json,
    model_masks,
    open_video,
    overlay,
    parse_question,
    remove_object,
    sampled_frames,
    segment,
    stream_answer,
    training_sample,
)

# Input errors shown on the page (the server keeps serving); anything else is a bug and propagates.
INPUT_ERRORS = (VideoReferError, ValueError, OSError)
DISPLAY_MIN_WIDTH = 640  # small frames are shown enlarged (clicks are mapped back to the video's pixels)
DISPLAY_MAX_WIDTH = 1280
PROMPT_MODES = ("point", "box")


@dataclass(frozen=True, slots=True, kw_only=True)
class PageState:
    """One browser session: the open video, its objects, the slider position, clicks not yet used, the last answer.

    `current` is the object that further point clicks refine (None: the next click starts a new object); `pending`
    holds the points of that object, or the first corner of a box being drawn.
    """

    video: OpenedVideo | None = None
    objects: tuple[PickedObject, ...] = ()
    position: int = 0
    pending: tuple[Point, ...] = ()
    labels: tuple[int, ...] = ()
    current: int | None = None
    answered: Answered | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Example:
    """A video offered on the page with one button."""

    title: str
    path: Path


class AppService:
    """What every browser session shares: the segmenter, the model pipeline, limits, examples and a work folder.

    `pipeline` is a `model.inference.VideoReferPipeline`; `notice` is the markdown shown at the top of the page
    (which model and segmenter run, and when they are random or fake, that they are).
    """

    def __init__(
        self,
        *,
        segmenter: Segmenter,
        pipeline: Any,
        notice: str,
        limits: AppLimits,
        examples: Sequence[Example],
        workdir: Path,
        max_new_tokens: int = 512,
        num_frames: int | None = None,
        model_name: str = "videorefer",
    ) -> None:
        self.segmenter = segmenter
        self.pipeline = pipeline
        self.notice = notice
        self.limits = limits
        self.examples = tuple(examples)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.max_new_tokens = max_new_tokens
        self.model_name = model_name
        self.num_frames = int(num_frames or pipeline.processor.num_frames)
        self._frames: OrderedDict[str, np.ndarray] = OrderedDict()
        self._frames_lock = threading.Lock()

    # ------------------------------------------------------------------ video and frames

    def open(self, path: str | Path, name: str | None = None) -> PageState:
        """A fresh page state for the video at `path` (typed errors for anything the limits refuse)."""
        video = open_video(path, self.limits, model_frames=self.num_frames, name=name)
        self.frames(video)  # decode the shown frames once, now, so a broken stream is reported on opening
        return PageState(video=video)

    def frames(self, video: OpenedVideo) -> np.ndarray:
        """The shown frames of `video`, decoded once and kept for the two most recent videos."""
        from engine.video import read_frames

        with self._frames_lock:
            if video.path in self._frames:
                self._frames.move_to_end(video.path)
                return self._frames[video.path]
        frames = read_frames(video.path, list(video.shown_frames))
        with self._frames_lock:
            self._frames[video.path] = frames
            while len(self._frames) > 2:
                self._frames.popitem(last=False)
        return frames

    def frame_index(self, state: PageState) -> int:
        assert state.video is not None
        return state.video.shown_frames[min(state.position, len(state.video.shown_frames) - 1)]

    def picture(self, state: PageState) -> np.ndarray | None:
        """The current frame with every object and the pending clicks drawn, at display size."""
        if state.video is None:
            return None
        frame = self.frames(state.video)[min(state.position, len(state.video.shown_frames) - 1)]
        drawn = overlay(frame, self.frame_index(state), state.objects, pending=state.pending)
        return _resized(drawn, display_scale(state.video.info.width))

    def animation(self, state: PageState) -> str | None:
        """An animated WebP of the shown frames with every masklet drawn (None without objects)."""
        if state.video is None or not state.objects:
            return None
        from PIL import Image

        key = stable_hash("overlay", state.video.path, json.dumps(masks_json(state.objects)))
        path = self.workdir / f"masklets-{key}.webp"
        if not path.exists():
            scale = min(1.0, 480 / state.video.info.width)
            pictures = [
                Image.fromarray(_resized(overlay(frame, index, state.objects), scale))
                for frame, index in zip(self.frames(state.video), state.video.shown_frames, strict=True)
            ]
            fps = state.video.info.fps or 12.0
            step = max(1, round(state.video.info.num_frames / len(pictures)))
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.webp")
            pictures[0].save(temporary, save_all=True, append_images=pictures[1:], duration=int(1000 * step / fps),
                             loop=0, quality=80)
            temporary.replace(path)
        return str(path)

    # ------------------------------------------------------------------ objects

    def click(self, state: PageState, x: float, y: float, *, mode: str, negative: bool = False) -> PageState:
        """A click at (x, y) in video pixels: in point mode it adds a point to the current object (a new object
        when there is none) and segments it again; in box mode the first click is a corner, the second makes the
        object."""
        if state.video is None:
            raise ValueError("open a video first (upload one or pick an example)")
        if mode not in PROMPT_MODES:
            raise ValueError(f"prompt mode must be one of {PROMPT_MODES}")
        key_frame = self.frame_index(state)
        point = (float(x), float(y))
        if mode == "box":
            if not state.pending or state.current is not None:
                return dataclasses.replace(state, pending=(point,), labels=(), current=None)
            prompt = Prompt(key_frame=key_frame, box=box_from_corners(state.pending[0], point))
            objects = add_object(state.objects, prompt, segment(self.segmenter, state.video, prompt))
            return dataclasses.replace(state, objects=objects, pending=(), labels=(), current=None)
        current = next((o for o in state.objects if o.number == state.current), None)
        refine = current is not None and current.prompt.key_frame == key_frame and bool(current.prompt.points)
        label = 0 if negative else 1
        if refine:
            points, labels = (*current.prompt.points, point), (*current.prompt.labels, label)
        else:
            points, labels = (point,), (label,)
        prompt = Prompt(key_frame=key_frame, points=points, labels=labels)
        masklet = segment(self.segmenter, state.video, prompt)
        if refine:  # the same object, same number and colour, segmented again with one more point
            refined = dataclasses.replace(current, prompt=prompt, masklet=masklet)
            objects = tuple(refined if o.number == current.number else o for o in state.objects)
            return dataclasses.replace(state, objects=objects, pending=points, labels=labels)
        objects = add_object(state.objects, prompt, masklet)
        return dataclasses.replace(state, objects=objects, pending=points, labels=labels, current=objects[-1].number)

    def masks_file(self, state: PageState) -> str | None:
        """The objects' masklets as a 700K `annotation` JSON file to download (None without objects)."""
        if not state.objects:
            return None
        document = masks_json(state.objects)
        return self._write(f"masks-{stable_hash('masks', json.dumps(document))}.json", document)

    # ------------------------------------------------------------------ asking

    def ask(self, state: PageState, question: str, mode: str) -> Iterator[tuple[str, PageState]]:
        """Yield the answer as it grows, then the finished answer with the state that remembers it."""
        if state.video is None:
            raise ValueError("open a video first (upload one or pick an example)")
        resolved = parse_question(question, state.objects, max_chars=self.limits.max_text_chars)
        sampled = sampled_frames(state.video)
        masks = tuple(model_masks(o.masklet, sampled, mode) for o in resolved.objects)
        video = state.video

        def run(callback: Any) -> str:
            return self.pipeline.ask(
                video=video.path, masks=list(masks), question=resolved.text, mode=mode,
                num_frames=video.model_frames, max_new_tokens=self.max_new_tokens, streamer_callback=callback,
            )

        answer = ""
        for answer in stream_answer(run):
            yield answer, state
        provenance = (
            Provenance(agent="app-segmenter", backend=self.segmenter.kind, model=self.segmenter.model),
            Provenance(agent="app-model", backend="videorefer", model=self.model_name),
        )
        answered = Answered(question=resolved, answer=answer, mode=mode, frame_indices=tuple(sampled), masks=masks,
                            provenance=provenance)
        yield answer, dataclasses.replace(state, answered=answered)

    def sample_file(self, state: PageState) -> tuple[str | None, str]:
        """The last question and answer as a training sample file, and what validation says about it."""
        from storage.samples import sample_to_json, validate_sample

        if state.video is None or state.answered is None:
            return None, ""
        sample = training_sample(state.video, state.answered)
        problems = validate_sample(sample, grid=self.pipeline.processor.grid)
        path = self._write(f"sample-{sample.key}.json", sample_to_json(sample))
        if problems:
            return path, "The sample would be rejected at training: " + "; ".join(text for _, text in problems)
        return path, ""

    def _write(self, name: str, document: Any) -> str:
        from agents.bench.files import write_json_atomic

        path = self.workdir / name
        if not path.exists():
            write_json_atomic(path, document)
        return str(path)


def display_scale(width: int) -> float:
    """How much the page enlarges (small videos) or shrinks (large ones) a frame for display."""
    if width < DISPLAY_MIN_WIDTH:
        return DISPLAY_MIN_WIDTH / width
    if width > DISPLAY_MAX_WIDTH:
        return DISPLAY_MAX_WIDTH / width
    return 1.0


def _resized(frame: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return frame
    import cv2

    height, width = frame.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_NEAREST if scale > 1 else cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------- the page


def build_page(service: AppService) -> Any:
    """The gradio Blocks of the page, wired to `service`."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    def message(text: str, kind: str = "error") -> str:
        return f"**{kind}:** {text}" if text else ""

    def slider_for(state: PageState) -> Any:
        if state.video is None:
            return gr.Slider(minimum=0, maximum=1, value=0, step=1, interactive=False)
        shown = state.video.shown_frames
        return gr.Slider(minimum=0, maximum=max(1, len(shown) - 1), value=state.position, step=1, interactive=True,
                         label=f"Frame {shown[state.position]} of {state.video.info.num_frames}")

    def objects_for(state: PageState) -> Any:
        choices = [(f"object {o.number}", o.number) for o in state.objects]
        return gr.Dropdown(choices=choices, value=choices[-1][1] if choices else None)

    def objects_text(state: PageState) -> str:
        if not state.objects:
            return "No object yet: click on one in the frame."
        rows = [
            f"**object {o.number}** (`<region{o.number}>`, colour `#{bytes(o.color).hex()}`): "
            f"{'box' if o.prompt.box else f'{len(o.prompt.points)} point(s)'} on frame {o.prompt.key_frame}, "
            f"masks on {sum(1 for m in o.masklet.masks.values() if m.counts)} frames"
            for o in state.objects
        ]
        return "\n\n".join(rows)

    def refreshed(state: PageState, text: str = "", *, with_player: bool = False) -> tuple[Any, ...]:
        outputs = (state, service.picture(state), slider_for(state), objects_for(state), objects_text(state),
                   service.animation(state), service.masks_file(state), text)
        if with_player:
            return (*outputs, None if state.video is None else state.video.path, "", None)
        return outputs

    def open_path(state: PageState, path: str | None, name: str | None = None) -> tuple[Any, ...]:
        if not path:
            return refreshed(state, message("no file was uploaded"), with_player=True)
        try:
            opened = service.open(path, name=name)
        except INPUT_ERRORS as exc:
            return refreshed(state, message(f"{name or Path(path).name} cannot be opened: {exc}"), with_player=True)
        info = opened.video.info  # type: ignore[union-attr]
        text = (f"Opened **{opened.video.name}**: {info.width}x{info.height}, {info.num_frames} frames, "  # type: ignore[union-attr]
                f"{info.duration_s:.1f} s. Click on an object in the frame.")
        return refreshed(opened, text, with_player=True)

    def open_example(state: PageState, *, example: Example) -> tuple[Any, ...]:
        return open_path(state, str(example.path), example.path.name)

    def on_upload(state: PageState, file: Any) -> tuple[Any, ...]:
        path = file if isinstance(file, str) or file is None else getattr(file, "name", None)
        return open_path(state, path, name=None if path is None else Path(path).name)

    def on_slider(state: PageState, position: float) -> tuple[Any, ...]:
        if state.video is None:
            return state, None, slider_for(state), ""
        position = int(min(max(0, position), len(state.video.shown_frames) - 1))
        # Another frame: the clicks so far belong to the frame they were made on; the next click starts an object.
        moved = dataclasses.replace(state, position=position, pending=(), labels=(), current=None)
        return moved, service.picture(moved), slider_for(moved), ""

    def on_click(state: PageState, mode: str, negative: bool, event: Any) -> tuple[Any, ...]:
        if state.video is None:
            return refreshed(state, message("open a video first (upload one or pick an example)"))
        scale = display_scale(state.video.info.width)
        x, y = (float(v) / scale for v in event.index[:2])
        try:
            clicked = service.click(state, x, y, mode=mode, negative=negative)
        except INPUT_ERRORS as exc:
            return refreshed(state, message(str(exc)))
        if clicked.objects == state.objects:
            return refreshed(clicked, "First corner set: click the opposite corner of the box.")
        number = clicked.current or clicked.objects[-1].number
        return refreshed(clicked, f"Object {number} segmented over {len(state.video.segment_frames)} frames.")

    on_click.__annotations__["event"] = gr.SelectData  # gradio passes the click's coordinates by this annotation

    def on_new_object(state: PageState) -> tuple[Any, ...]:
        return refreshed(dataclasses.replace(state, current=None, pending=(), labels=()),
                         "The next click starts a new object.")

    def on_remove(state: PageState, number: Any) -> tuple[Any, ...]:
        if number is None:
            return refreshed(state, message("choose the object to remove"))
        left = remove_object(state.objects, int(number))
        current = None if state.current == int(number) else state.current
        return refreshed(dataclasses.replace(state, objects=left, current=current,
                                             pending=() if current is None else state.pending),
                         f"Object {int(number)} removed.")

    def on_clear(state: PageState) -> tuple[Any, ...]:
        return refreshed(dataclasses.replace(state, objects=(), current=None, pending=(), labels=()),
                         "Every object removed.")

    def on_ask(state: PageState, question: str, mode: str) -> Iterator[tuple[Any, ...]]:
        answer, latest = "", state
        try:
            for answer, latest in service.ask(state, question, mode):
                yield latest, answer, "", None
        except INPUT_ERRORS as exc:
            yield state, answer, message(str(exc)), None
            return
        try:
            path, warning = service.sample_file(latest)
        except INPUT_ERRORS as exc:
            path, warning = None, f"no training sample: {exc}"
        yield latest, answer, message(warning, "note"), path

    with gr.Blocks(title="VideoRefer", analytics_enabled=False) as page:
        state = gr.State(PageState())
        gr.Markdown("# VideoRefer: point at objects in a video and ask about them")
        gr.Markdown(service.notice, elem_id="notice")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Upload a video", type="filepath", elem_id="upload")
                example_buttons = []
                for example in service.examples:
                    example_buttons.append((gr.Button(f"Example: {example.title}", size="sm",
                                                      elem_classes=["example"]), example))
                player = gr.Video(label="The video (play and scrub)", interactive=False, elem_id="player")
            with gr.Column(scale=2):
                status = gr.Markdown("Open a video: upload one or pick an example.", elem_id="message")
                with gr.Row():
                    prompt_mode = gr.Radio(list(PROMPT_MODES), value="point", label="Click to add",
                                           info="point: click on the object; box: click two opposite corners",
                                           elem_id="prompt-mode")
                    negative = gr.Checkbox(label="negative point (not the object)", value=False)
                frame = gr.Image(label="Frame: click on an object", interactive=False, type="numpy",
                                 elem_id="frame", format="png")
                slider = gr.Slider(minimum=0, maximum=1, value=0, step=1, label="Frame", interactive=False,
                                   elem_id="frame-slider")
                with gr.Row():
                    new_object = gr.Button("New object", size="sm", elem_id="new-object")
                    choose = gr.Dropdown(choices=[], label="Object", elem_id="object-choice")
                    remove = gr.Button("Remove object", size="sm", elem_id="remove-object")
                    clear = gr.Button("Remove all", size="sm", elem_id="clear-objects")
                listing = gr.Markdown("No object yet: click on one in the frame.", elem_id="objects")
                animation = gr.Image(label="Masklets over the clip", interactive=False, type="filepath",
                                     elem_id="masklets")
        with gr.Row():
            with gr.Column(scale=2):
                question = gr.Textbox(label="Question", elem_id="question",
                                      placeholder="What is <region> doing?  (<region1>, <region2>: objects by number)")
                ask_mode = gr.Radio(["single", "multi"], value="single", label="Mode", elem_id="ask-mode",
                                    info="single: the mask of the clicked frame; multi: masks of every sampled frame")
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
                answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer", lines=4)
            with gr.Column(scale=1):
                masks_download = gr.File(label="Masks (VideoRefer-700K RLE JSON)", interactive=False,
                                         elem_id="masks-file")
                sample_download = gr.File(label="Question and answer as a training sample", interactive=False,
                                          elem_id="sample-file")

        common = [state, frame, slider, choose, listing, animation, masks_download, status]
        opened = [*common, player, answer, sample_download]
        upload.upload(on_upload, [state, upload], opened)
        for button, example in example_buttons:
            button.click(functools.partial(open_example, example=example), [state], opened)
        slider.input(on_slider, [state, slider], [state, frame, slider, status])
        frame.select(on_click, [state, prompt_mode, negative], common)
        new_object.click(on_new_object, [state], common)
        remove.click(on_remove, [state, choose], common)
        clear.click(on_clear, [state], common)
        ask.click(on_ask, [state, question, ask_mode], [state, answer, status, sample_download])
        question.submit(on_ask, [state, question, ask_mode], [state, answer, status, sample_download])
    return page


def start(service: AppService, *, host: str = "127.0.0.1", port: int | None = None, block: bool = False) -> Any:
    """Launch the page on `host:port` (a free port when None) and return the gradio handle (`close()` stops it).

    With `block` the call serves until interrupted (the CLI); otherwise it returns once the server listens.
    """
    page = build_page(service)
    page.queue(default_concurrency_limit=1)
    page.launch(
        server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block, show_error=True,
        allowed_paths=[str(service.workdir), *{str(e.path.parent) for e in service.examples}], share=False,
    )
    return page
