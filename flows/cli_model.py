"""`videorefer infer` (ask about masked objects, streaming the answer), `videorefer model info` and `model convert`.

Model code, torch and the SAM 2 segmenter are imported inside the commands so that `videorefer --help` stays fast.
Masks come from a JSON file (the VideoRefer-700K "annotation" list: one `{frame_index: {"segmentation": RLE}}` per
object, or one object's `{frame_index: RLE}`) or are made by SAM 2 from `--box` on `--frame`.
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


def _masks_from_box(
    video: Path,
    box: str,
    frame: int,
    *,
    mode: str,
    num_frames: int,
    sam2_config: str | None,
    sam2_checkpoint: str | None,
    sam2_random_weights: bool,
    sam2_image_size: int | None,
    device: str,
) -> list[dict[int, Any]]:
    """One object's masklet from SAM 2, prompted with a box on `frame` and propagated over the sampled frames."""
    from agents.backends.sam2_segmenter import Sam2Segmenter
    from engine.config import Sam2Config
    from engine.video import probe, uniform_indices

    indices = sorted(set(uniform_indices(probe(video).num_frames, num_frames)) | {frame})
    options: dict[str, Any] = {"device": device}
    if sam2_config:
        options["config_name"] = sam2_config
    if sam2_checkpoint:
        options["checkpoint"] = sam2_checkpoint
    if sam2_random_weights:
        options["random_weights"] = True
    if sam2_image_size:
        options["image_size"] = sam2_image_size
    masklet = Sam2Segmenter(Sam2Config(**options)).segment(
        video_uri=str(video), frame_indices=indices, key_frame=frame, box=_parse_box(box)
    )
    masks = dict(masklet.masks)
    if mode == "single":  # the prompted frame is the one the user pointed at
        return [{frame: masks[frame]}] if frame in masks else [masks]
    return [masks]


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
        box: str | None = typer.Option(None, "--box", help="x0,y0,x1,y1 on --frame: SAM 2 makes the masklet."),
        frame: int | None = typer.Option(None, "--frame", help="Frame index the --box is drawn on."),
        mode: str = typer.Option("single", "--mode", help="single (1 token per object) or multi (up to u)."),
        num_frames: int | None = typer.Option(
            None, "--num-frames", min=2, help="Frames the model sees (default: the model's, 16; 8 = release eval)."
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
        sam2_config: str | None = typer.Option(None, "--sam2-config", help="SAM 2 model config name."),
        sam2_checkpoint: str | None = typer.Option(None, "--sam2-checkpoint", help="SAM 2 weights file."),
        sam2_random_weights: bool = typer.Option(
            False, "--sam2-random-weights", help="SAM 2 with random weights instead (tests and demos only)."
        ),
        sam2_image_size: int | None = typer.Option(None, "--sam2-image-size", help="SAM 2 input size override."),
    ) -> None:
        """Ask the model about objects in a video (or an image, or text only); the answer streams to stdout."""
        from engine.errors import VideoReferError

        if mode not in ("single", "multi"):
            raise typer.BadParameter("--mode must be single or multi")
        if masks is not None and box is not None:
            raise typer.BadParameter("give at most one of --masks or --box (with --frame)")
        if box is not None and frame is None:
            raise typer.BadParameter("--box needs --frame")
        if video is None and (masks is not None or box is not None):
            raise typer.BadParameter("--masks and --box need --video")
        try:
            from model.inference import VideoReferPipeline

            pipeline = VideoReferPipeline.from_pretrained(model, device=device, dtype=dtype)
            frames_to_use = num_frames or pipeline.processor.num_frames
            if masks is not None:
                objects = load_masks_file(masks)
            elif box is not None:
                objects = _masks_from_box(
                    video, box, frame, mode=mode, num_frames=frames_to_use, sam2_config=sam2_config,
                    sam2_checkpoint=sam2_checkpoint, sam2_random_weights=sam2_random_weights,
                    sam2_image_size=sam2_image_size, device=device,
                )
            else:
                objects = []

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
