"""`videorefer` engine commands (demo, ingest, build, stage, export, ...): placeholder until the flows issue."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the engine commands to the main app."""

    @app.command()
    def demo() -> None:
        """Run the whole data engine offline on synthetic clips (not built yet)."""
        typer.echo("videorefer demo: the data-engine flows are not built yet (see the flows issue).")
