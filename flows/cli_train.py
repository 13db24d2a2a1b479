"""`videorefer train`: run one training stage under torchrun and stream its output; the exit code propagates.

The command only builds the torchrun command line (`model.training.launch.torchrun_command`) and runs it, so
what the CLI runs is exactly what the `train_stage` Prefect flow and a cluster job script run. Afterwards it
draws `<out>/log.jsonl` as `<out>/loss.png` (`flows.artifacts`), as the flow does for its artifact.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the `train` command to the main app."""

    @app.command()
    def train(
        recipe: str = typer.Option(..., "--recipe", help="stage1, stage2, stage2_5, stage3 or tiny_* (CPU)."),
        data: list[str] = typer.Option(..., "--data", help="Shard glob, optionally GLOB::WEIGHT (repeatable)."),
        out: Path = typer.Option(..., "--out", help="Output directory: log.jsonl, checkpoints/, model/."),
        max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Stop after this many steps."),
        nproc: int = typer.Option(1, "--nproc", min=1, help="Processes (GPUs) on this node."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint under --out."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Remove an earlier run in --out and start over."),
        init_from: Path | None = typer.Option(
            None, "--init-from", help="Previous stage's --out (or a save_pretrained directory)."
        ),
        override: list[str] = typer.Option([], "--set", help="Override a recipe field: FIELD=VALUE (repeatable)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the torchrun command and stop."),
    ) -> None:
        """Train one stage of the VideoRefer model from WebDataset shards (torchrun + FSDP2)."""
        from engine.errors import ConfigError
        from model.training.launch import run_streaming, torchrun_command
        from model.training.loader import expand_shards
        from model.training.recipes import get_recipe

        try:
            # Cheap checks before torchrun starts processes: the recipe exists, the data exists, a start exists.
            chosen = get_recipe(recipe)
            for pattern in data:
                expand_shards(pattern.partition("::")[0])
            if chosen.model_preset != "tiny" and init_from is None and chosen.init_from is None:
                raise ConfigError(f"{recipe} needs --init-from (the previous stage's --out, or a base model)")
            overrides = dict(item.split("=", 1) for item in override if "=" in item)
            if len(overrides) != len(override):
                raise ConfigError("--set expects FIELD=VALUE")
            if not overwrite:  # fail before torchrun starts when --out already holds a run
                from model.training.loop import check_out

                check_out(out, resume=resume, overwrite=False)
            command = torchrun_command(recipe=recipe, data=data, out=out, nproc=nproc, max_steps=max_steps,
                                       resume=resume, init_from=init_from, overrides=overrides, overwrite=overwrite)
        except ConfigError as error:
            typer.echo(f"config error: {error}", err=True)
            raise typer.Exit(2) from error
        if dry_run:
            typer.echo(" ".join(command))
            return
        code = run_streaming(command)
        from flows.artifacts import write_loss_curve

        curve = write_loss_curve(out)
        if curve is not None:
            typer.echo(f"loss curve: {curve}")
        if code != 0:
            typer.echo(f"training failed (exit code {code})", err=True)
            raise typer.Exit(code)
