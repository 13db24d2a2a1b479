"""`videorefer infer` (ask about masked objects, streaming the answer), `videorefer model info` and `model convert`.

Model code, torch and the segmenters are imported inside the commands so that `videorefer --help` stays fast.
Masks come from a JSON file (the VideoRefer-700K "annotation" list: one `{frame_index: {"segmentation": RLE}}` per
object, or one object's `{frame_index: RLE}`) or are made from `--box` on `--frame` (several boxes: several objects,
in order) by the segmenter that `--segmenter-config` names (`agents.backends.factory`, through
`flows.interactive`, as the web app does); `--save-masklet` writes those masklets and a preview image.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer


def load_masks_file(path: Path) -> list[dict[int, Any]]:
    """Objects' masks from a JSON file, as a list of `{frame_index: mask}` (mask = RLE or {"segmentation": RLE})."""
    from engine.parsing import ParseError, loads_json, structure_problem

    try:
        data = loads_json(path.read_bytes(), f"masks file {path}")
    except (ParseError, OSError) as exc:
        raise typer.BadParameter(str(exc)) from None
    if (problem := structure_problem(data)) is not None:
        raise typer.BadParameter(f"masks file {path} {problem}")
    if isinstance(data, dict) and "annotation" in data:
        data = data["annotation"]
    objects = data if isinstance(data, list) else [data]
    out = []
    for number, obj in enumerate(objects):
        if not isinstance(obj, dict) or not obj:
            raise typer.BadParameter(f"object {number} of {path} is not a non-empty {{frame: mask}} mapping")
        try:
            masks = {int(frame): mask for frame, mask in obj.items()}
        except ValueError as exc:
            raise typer.BadParameter(f"object {number} of {path}: frame keys must be integers ({exc})") from exc
        out.append({frame: _checked_mask(path, number, frame, mask) for frame, mask in masks.items()})
    return out


def _checked_mask(path: Path, number: int, frame: int, mask: Any) -> Any:
    """A mask of the file, checked before anything decodes it (RLE counts covering height x width, frames >= 0);
    its size against the video's frames is checked once the video is read (`model.inference.check_mask_sizes`)."""
    from engine.errors import InvalidMaskError
    from engine.masks import validated_mask

    if frame < 0:
        raise typer.BadParameter(f"object {number} of {path}: mask on frame {frame}; frames are 0, 1, 2, ...")
    try:
        validated_mask(mask)
    except InvalidMaskError as exc:
        raise typer.BadParameter(f"object {number} of {path}, frame {frame}: {exc}") from exc
    return mask


def _parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise typer.BadParameter(f"--box must be x0,y0,x1,y1 numbers, got {text!r}") from exc
    if len(values) != 4 or values[2] <= values[0] or values[3] <= values[1]:
        raise typer.BadParameter(f"--box must be x0,y0,x1,y1 with x1 > x0 and y1 > y0, got {text!r}")
    return values  # type: ignore[return-value]


def _box_prompts(boxes: list[str], frames: list[int]) -> list[Any]:
    """One `flows.interactive.Prompt` per `--box`; `--frame` once for every box, or once per box in order."""
    from flows.interactive import Prompt

    if len(frames) not in (1, len(boxes)):
        raise typer.BadParameter(f"give --frame once, or once per --box ({len(boxes)} boxes, {len(frames)} frames)")
    if any(frame < 0 for frame in frames):
        raise typer.BadParameter("--frame must be 0 or more")
    keys = frames * len(boxes) if len(frames) == 1 else frames
    return [Prompt(key_frame=key, box=_parse_box(box)) for box, key in zip(boxes, keys, strict=True)]


def masklets_from_boxes(
    video: Path,
    prompts: list[Any],
    *,
    segmenter_config: Path,
    num_frames: int,
    start_s: float | None = None,
    end_s: float | None = None,
) -> tuple[Any, list[Any], list[int]]:
    """The opened video, one object per prompt and the frames the model samples (over the span, if any): each
    masklet is made by the segmenter of `segmenter_config` (an engine config file: its `agents.segmenter`, built by
    `agents.backends.factory`) within the config's limits, on the prompted frames and the sampled ones."""
    import dataclasses

    from agents.backends.factory import build_segmenter
    from engine.config import load_config
    from engine.errors import ConfigError
    from engine.video import span_frame_range, uniform_indices
    from flows.interactive import AppLimits, add_object, open_video, segment

    try:
        config = load_config(segmenter_config)
        segmenter = build_segmenter(config.agents.segmenter)  # a bad segmenter config fails before any decoding
    except ConfigError as exc:
        raise ConfigError(f"--segmenter-config {segmenter_config}: {exc}") from exc
    limits = AppLimits(max_video_bytes=config.limits.max_video_bytes,
                       max_decoded_pixels=config.limits.max_decoded_pixels, max_seconds=0)
    opened = open_video(video, limits, model_frames=num_frames)
    total = opened.info.num_frames
    span = list(range(total)) if start_s is None and end_s is None else span_frame_range(
        total, opened.info.fps, start_s, end_s)
    sampled = [span[i] for i in uniform_indices(len(span), num_frames)]
    opened = dataclasses.replace(opened, segment_frames=tuple(sorted({*opened.segment_frames, *sampled})))
    outside = [p.key_frame for p in prompts if p.key_frame >= opened.info.num_frames]
    if outside:
        raise typer.BadParameter(f"--frame {outside[0]} is past the video's {opened.info.num_frames} frames")
    objects: tuple[Any, ...] = ()
    for prompt in prompts:
        objects = add_object(objects, prompt, segment(segmenter, opened, prompt))
    return opened, list(objects), sampled


def save_masklets(path: Path, opened: Any, objects: list[Any]) -> Path:
    """Write the masklets as the 700K `annotation` list (JSON, what `--masks` reads) at `path`, and a preview
    (the prompted frame and three more of the clip, every object drawn in its colour) beside it as `.png`."""
    import numpy as np
    from PIL import Image

    from agents.bench.files import write_json_atomic
    from engine.video import n_uniform_frames, read_frames
    from flows.interactive import masks_json, overlay

    write_json_atomic(path, masks_json(objects))
    shown = sorted(set(n_uniform_frames(len(opened.shown_frames), 4)))
    frames = sorted({objects[0].prompt.key_frame, *(opened.shown_frames[i] for i in shown)})[:5]
    pictures = [overlay(frame, index, objects) for frame, index in zip(read_frames(opened.path, frames), frames,
                                                                       strict=True)]
    preview = path.with_suffix(".png")
    temporary = preview.with_name(f".{preview.name}.tmp.png")
    Image.fromarray(np.concatenate(pictures, axis=1)).save(temporary)
    temporary.replace(preview)
    return preview


RELEASE_EVAL_FRAMES = 8  # the release's NUM_FRAMES in its notebook and Bench scripts (agents.bench.protocol)


def frame_count(num_frames: int | None, protocol: str | None, model_frames: int) -> tuple[int, str]:
    """The frames `infer` shows the model, and why: `--num-frames`, else the protocol's, else the model's config.

    The release's demo notebook and its Bench scripts pass 8 frames (`NUM_FRAMES`), never the model's 16; the line
    says so, because the two give different answers on the same clip.
    """
    if protocol is not None:
        from agents.bench.protocol import get_protocol

        chosen = get_protocol(protocol)
        if num_frames is None:
            return chosen.num_frames, (f"--protocol {protocol}: the release's notebook and Bench scripts use 8"
                                       if protocol == "release" else f"--protocol {protocol}: the paper's 16")
    if num_frames is not None:
        return num_frames, "--num-frames"
    if model_frames == RELEASE_EVAL_FRAMES:
        return model_frames, "the model's config (num_frames), as the release's notebook and Bench scripts"
    return model_frames, ("the model's config (num_frames); the release's notebook and Bench scripts use 8: "
                          "--protocol release")


def register(app: typer.Typer) -> None:
    """Add `infer` and the `model` sub-app (`model info`) to the main app."""

    @app.command()
    def infer(
        model: Path = typer.Option(..., "--model", help="A saved VideoRefer folder (model + processor)."),
        question: str = typer.Option(..., "--question", help="The question; <region> marks each object."),
        video: Path | None = typer.Option(
            None, "--video", help="Video file, folder of frames, or an image file; none for a text-only question."
        ),
        masks: Path | None = typer.Option(None, "--masks", help="Masks JSON (700K annotation list or {frame: RLE})."),
        box: list[str] | None = typer.Option(
            None, "--box", help="x0,y0,x1,y1 on --frame, once per object: the segmenter makes each masklet."
        ),
        frame: list[int] | None = typer.Option(
            None, "--frame", help="Frame index of the --box (once for all boxes, or once per box)."
        ),
        segmenter_config: Path | None = typer.Option(
            None, "--segmenter-config", help="Engine config whose agents.segmenter makes the --box masklets."
        ),
        save_masklet: Path | None = typer.Option(
            None, "--save-masklet", help="Write the --box masklets (700K RLE JSON) here, a preview beside it (.png)."
        ),
        mode: str = typer.Option("single", "--mode", help="single (1 token per object) or multi (up to u)."),
        num_frames: int | None = typer.Option(
            None, "--num-frames", min=2, help="Frames the model sees (default: the model's, 16; 8 = release eval)."
        ),
        protocol: str | None = typer.Option(
            None, "--protocol", help="release: the release's settings (8 frames, greedy mm_infer decoding); paper: 16"
        ),
        start: float | None = typer.Option(None, "--start", help="Span start in seconds (release's span rule)."),
        end: float | None = typer.Option(None, "--end", help="Span end in seconds."),
        max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="Default 2048 (mm_infer)."),
        sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
        temperature: float | None = typer.Option(None, "--temperature", min=0.0, help="With --sample (0.2)."),
        top_p: float | None = typer.Option(None, "--top-p", min=0.0, max=1.0, help="With --sample (0.9)."),
        repetition_penalty: float | None = typer.Option(
            None, "--repetition-penalty", min=0.0, help="Default: the model folder's generation_config.json."
        ),
        device: str = typer.Option("cpu", "--device"),
        dtype: str | None = typer.Option(
            None, "--dtype", help="float32, bfloat16 or float16 (default: stored dtype on CUDA, float32 on CPU)."
        ),
    ) -> None:
        """Ask the model about objects in a video (or an image, or text only); the answer streams to stdout."""
        from engine.errors import VideoReferError

        if mode not in ("single", "multi"):
            raise typer.BadParameter("--mode must be single or multi")
        if masks is not None and box:
            raise typer.BadParameter("give at most one of --masks or --box (with --frame)")
        if box and not frame:
            raise typer.BadParameter("--box needs --frame")
        if box and segmenter_config is None:
            raise typer.BadParameter(
                "--box needs --segmenter-config FILE: an engine config whose agents.segmenter makes the masklet "
                "(configs/local.yaml: SAM 2; configs/offline.yaml: the fake segmenter of the synthetic clips)"
            )
        if save_masklet is not None and not box:
            raise typer.BadParameter("--save-masklet needs --box")
        if video is None and (masks is not None or box):
            raise typer.BadParameter("--masks and --box need --video")
        prompts = _box_prompts(box, frame) if box else []
        try:
            from model.inference import check_mask_sizes, input_frame_size
            from model.processing import saved_num_frames

            if protocol is not None:
                from agents.bench.protocol import get_protocol

                get_protocol(protocol)
            # Everything that can be wrong with the inputs is found before the model loads (seconds, not a minute).
            frames_to_use, why = frame_count(num_frames, protocol, saved_num_frames(model))
            if video is not None:
                typer.echo(f"frames: {frames_to_use} ({why})", err=True)
            if masks is not None:
                objects = load_masks_file(masks)
                if video is not None:
                    check_mask_sizes(objects, input_frame_size(video))
            elif prompts:
                from flows.interactive import model_masks

                opened, picked, sampled = masklets_from_boxes(
                    video, prompts, segmenter_config=segmenter_config, num_frames=frames_to_use, start_s=start,
                    end_s=end,
                )
                if save_masklet is not None:
                    preview = save_masklets(save_masklet, opened, picked)
                    typer.echo(f"masklets: {save_masklet} (preview {preview})", err=True)
                objects = [model_masks(obj.masklet, sampled, mode) for obj in picked]
            else:
                objects = []

            from model.inference import VideoReferPipeline

            pipeline = VideoReferPipeline.from_pretrained(model, device=device, dtype=dtype)

            def emit(chunk: str) -> None:
                sys.stdout.write(chunk)
                sys.stdout.flush()

            pipeline.ask(
                video=None if video is None else str(video), masks=objects, question=question, mode=mode,
                num_frames=frames_to_use, start_s=start, end_s=end, max_new_tokens=max_new_tokens, do_sample=sample,
                temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, streamer_callback=emit,
            )
            sys.stdout.write("\n")
        except (VideoReferError, ValueError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc

    model_app = typer.Typer(help="Inspect VideoRefer models.", no_args_is_help=True)

    @model_app.command("info")
    def info(
        preset: str = typer.Option("7b", "--preset", help="7b or tiny (ignored with --model)."),
        model: Path | None = typer.Option(None, "--model", help="A saved VideoRefer folder: use its config."),
    ) -> None:
        """Parameter counts per component and token counts, built on the meta device (no memory, no weights)."""
        import torch

        from engine.errors import ConfigError
        from model.configuration import VideoReferConfig
        from model.configuration import preset as build_preset
        from model.modeling import VideoReferForCausalLM, parameter_counts

        try:
            config = VideoReferConfig.from_pretrained(str(model)) if model else build_preset(preset)
        except (ConfigError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        with torch.device("meta"):
            built = VideoReferForCausalLM(config)
        report = {
            "preset": None if model else preset,
            "parameters": parameter_counts(built),
            "image_size": config.image_size,
            "grid": config.grid_size,
            "num_frames": config.num_frames,
            "video_tokens_16_frames": config.video_token_count(16),
            "video_tokens_8_frames": config.video_token_count(8),
            "video_tokens": config.video_token_count(),
            "image_tokens": config.video_token_count(),  # an image is num_frames copies of one frame
            "tokens_per_object": {"single": 1, "multi_max": config.region_tokens_per_object},
            "region_token_id": config.region_token_id,
            "vocab_size": config.llm_vocab_size,
        }
        typer.echo(json.dumps(report, indent=2))

    @model_app.command("convert")
    def convert(
        checkpoint: Path = typer.Option(..., "--checkpoint", help="Released VideoRefer weights (folder or file)."),
        vision_tower: Path = typer.Option(..., "--vision-tower", help="SigLIP weights (file or folder)."),
        out: Path = typer.Option(..., "--out", help="Where the converted model + processor go."),
        tokenizer: Path | None = typer.Option(None, "--tokenizer", help="Tokenizer folder (default: --checkpoint)."),
        preset: str = typer.Option("7b", "--preset", help="Architecture of the weights: 7b or tiny."),
        dtype: str | None = typer.Option(
            None, "--dtype", help="float32, bfloat16 or float16 (default: the stored dtype, fp16 for the release)."
        ),
    ) -> None:
        """Convert the released checkpoint layout (+ SigLIP, + its generation_config.json) into a folder to load."""
        from engine.errors import VideoReferError
        from model.checkpoint import convert_release
        from model.configuration import preset as build_preset
        from model.inference import resolve_dtype

        try:
            written = convert_release(
                checkpoint, vision_tower=vision_tower, output_dir=out, tokenizer=tokenizer,
                config=build_preset(preset), dtype=None if dtype is None else resolve_dtype(dtype, "cpu"),
            )
        except (VideoReferError, ValueError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(str(written))

    app.add_typer(model_app, name="model")
