"""The `videorefer` command line: one typer app; each area registers its commands from its own module.

Engine commands (demo, ingest, build, stage, export, import-700k, validate, status) live in
`flows.cli_engine`; `infer` and `model info` in `flows.cli_model`; `train` in `flows.cli_train`;
`bench` in `flows.cli_bench`; `report` in `flows.cli_report`; `audit` in `flows.cli_audit`; `app` (the web
page) in `flows.cli_app`. Heavy imports happen
inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import typer

from flows import cli_app, cli_audit, cli_bench, cli_engine, cli_model, cli_report, cli_train

app = typer.Typer(
    name="videorefer",
    help="VideoRefer suite: data engine, shard export, model, training and VideoRefer-Bench.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"videorefer {version('videorefer-suite')}")
        except PackageNotFoundError:
            typer.echo("videorefer (not installed as a package)")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="Print the version and exit."),
) -> None:
    """VideoRefer suite: data engine, shard export, model, training and VideoRefer-Bench."""

for _module in (cli_engine, cli_model, cli_train, cli_bench, cli_report, cli_audit, cli_app):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
