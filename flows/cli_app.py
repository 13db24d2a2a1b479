"""`videorefer app`: the interactive web page (open a video, click objects, watch masklets, ask the model).

Builds what the page shares (`flows.webapp.AppService`): the model (`--model DIR`, or `--tiny`: a tiny random
VideoRefer written into the work folder, said on the page), the segmenter of `--segmenter-config` (an engine config
file's `agents.segmenter`, built by `agents.backends.factory`; with `--tiny` and no config, the fake segmenter of
the offline profile, said on the page), the config's limits, and example clips (synthetic, written into the work
folder). gradio and torch are imported inside the command, so `videorefer --help` stays fast.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import typer

EXAMPLE_SEEDS = ((7, 2), (11, 3))  # (seed, objects) of the synthetic example clips


def register(app: typer.Typer) -> None:
    """Add `app` to the main command line."""

    @app.command("app")
    def run_app(
        model: Path | None = typer.Option(None, "--model", help="A saved VideoRefer folder (model + processor)."),
        tiny: bool = typer.Option(False, "--tiny", help="A tiny RANDOM model (offline; its answers mean nothing)."),
        segmenter_config: Path | None = typer.Option(
            None, "--segmenter-config", help="Engine config whose agents.segmenter segments clicks (and limits)."
        ),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on (0.0.0.0: every interface)."),
        port: int = typer.Option(7860, "--port", min=0, max=65535, help="Port (0: a free one)."),
        device: str = typer.Option("cpu", "--device"),
        num_frames: int | None = typer.Option(None, "--num-frames", min=2, help="Frames the model sees."),
        max_new_tokens: int = typer.Option(512, "--max-new-tokens", min=1),
        max_frames: int = typer.Option(64, "--max-frames", min=1, help="Frames shown and segmented at most."),
        max_seconds: float = typer.Option(600.0, "--max-seconds", min=0.0, help="Longest video accepted (s)."),
        workdir: Path | None = typer.Option(None, "--workdir", help="Where downloads and examples go (a temp dir)."),
    ) -> None:
        """Serve the interactive page: pick objects in a video, watch their masklets, ask the model about them."""
        from engine.errors import VideoReferError

        if (model is None) == (not tiny):
            raise typer.BadParameter("give exactly one of --model DIR or --tiny")
        if model is not None and segmenter_config is None:
            raise typer.BadParameter(
                "--model needs --segmenter-config FILE (configs/local.yaml: SAM 2 on this machine)"
            )
        try:
            service = build_service(
                model=model, tiny=tiny, segmenter_config=segmenter_config, device=device, num_frames=num_frames,
                max_new_tokens=max_new_tokens, max_frames=max_frames, max_seconds=max_seconds,
                workdir=workdir or Path(tempfile.mkdtemp(prefix="videorefer-app-")),
            )
            from flows.webapp import start

            typer.echo("serving the page (Ctrl+C stops); its address follows", err=True)
            start(service, host=host, port=port or None, block=True)
        except (VideoReferError, ValueError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc


def build_service(
    *,
    model: Path | None,
    tiny: bool,
    segmenter_config: Path | None,
    workdir: Path,
    device: str = "cpu",
    num_frames: int | None = None,
    max_new_tokens: int = 512,
    max_frames: int = 64,
    max_seconds: float = 600.0,
    examples: bool = True,
) -> Any:
    """The page's shared service: model, segmenter, limits, examples (see the module docstring)."""
    from agents.backends.factory import build_segmenter
    from engine.config import load_config
    from flows.interactive import AppLimits
    from flows.webapp import AppService
    from model.inference import VideoReferPipeline, save_tiny_model

    config = load_config(segmenter_config)  # None: the offline profile (the fake segmenter)
    segmenter = build_segmenter(config.agents.segmenter)
    workdir.mkdir(parents=True, exist_ok=True)
    if tiny:
        folder = workdir / "tiny-model"
        if not (folder / "config.json").is_file():
            save_tiny_model(folder, seed=0)
        model = folder
    pipeline = VideoReferPipeline.from_pretrained(model, device=device)
    notice = page_notice(tiny=tiny, model=model, segmenter=segmenter)
    limits = AppLimits(
        max_video_bytes=config.limits.max_video_bytes, max_decoded_pixels=config.limits.max_decoded_pixels,
        max_text_chars=config.limits.max_text_chars, max_frames=max_frames, max_seconds=max_seconds,
    )
    return AppService(
        segmenter=segmenter, pipeline=pipeline, notice=notice, limits=limits,
        examples=example_clips(workdir / "examples") if examples else (), workdir=workdir,
        max_new_tokens=max_new_tokens, num_frames=num_frames,
        model_name="tiny-random-videorefer" if tiny else str(model),
    )


def page_notice(*, tiny: bool, model: Path | None, segmenter: Any) -> str:
    """The notice at the top of the page: which model and segmenter answer, saying so when random or fake."""
    if tiny:
        about_model = ("**Model: a tiny RANDOM VideoRefer** (random weights, made offline by `--tiny`): its answers "
                       "are meaningless; the page works the same with real weights (`--model DIR`).")
    else:
        about_model = f"**Model:** `{model}`."
    about_segmenter = f"**Segmenter:** `{segmenter.kind}` (`{segmenter.model}`)."
    if segmenter.kind == "fake":
        about_segmenter += (" A FAKE segmenter: on the synthetic examples it returns their ground-truth masks, on "
                            "other videos the prompted box filled; a real one comes from `--segmenter-config`.")
    return f"{about_model}  \n{about_segmenter}"


def example_clips(folder: Path) -> tuple[Any, ...]:
    """Synthetic example clips (moving textured objects, with ground truth), written once into `folder`."""
    from engine.synthetic import load_ground_truth, make_clip
    from flows.webapp import Example

    out = []
    for seed, objects in EXAMPLE_SEEDS:
        path = folder / f"example-{seed}.mp4"
        truth = load_ground_truth(path) if path.is_file() else None
        if truth is None:
            truth = make_clip(path, seed=seed, num_frames=24, width=256, height=192, num_objects=objects).ground_truth
        out.append(Example(title=truth.caption, path=path))
    return tuple(out)
