"""`videorefer report`: write the static data report of a dataset root (`<root>/reports/index.html`).

The report (see `flows.reporting`) shows the per-stage funnel, rejects per reason with examples, time and tokens
per stage and backend, distributions of the accepted data, a seeded sample of exported training samples per task
with their masks drawn on their frames and the provenance of each field, the mask audit when there is one, and
the latest runs. It reads the root shard by shard and draws a bounded gallery, so it is safe on large roots.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `report` command to the main app."""

    @app.command()
    def report(
        root: str = typer.Option(..., "--root", help="Dataset root (a folder or an fsspec URL)."),
        samples: int = typer.Option(6, "--samples", min=0, help="Gallery samples per task (detailed, short, qa)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the gallery's sampling."),
        frames: int = typer.Option(8, "--frames", min=1, help="Frames per gallery strip."),
    ) -> None:
        """Write <root>/reports/index.html: funnel, rejects, time and tokens, distributions, gallery, audit."""
        from engine.errors import VideoReferError
        from flows.pipeline import layout
        from flows.reporting import write_report

        droot = layout.open_root(root)
        if not droot.exists(""):
            typer.secho(f"error: {root} does not exist (not a dataset root)", fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
        try:
            path = write_report(droot, per_kind=samples, seed=seed, max_frames=frames)
        except VideoReferError as exc:
            typer.secho(f"error: {type(exc).__name__}: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from exc
        typer.echo(f"data report: {path}")
