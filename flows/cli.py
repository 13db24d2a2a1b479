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
    debug: bool = typer.Option(False, "--debug", help="Also print Prefect's logs of a failed run, with its "
                               "traceback, on the terminal (they always go to the Prefect log)."),
) -> None:
    """VideoRefer suite: data engine, shard export, model, training and VideoRefer-Bench."""
    if debug:
        import os

        os.environ[cli_engine.DEBUG_ENV] = "1"

for _module in (cli_engine, cli_model, cli_train, cli_bench, cli_report, cli_audit, cli_app):
    _module.register(app)


# Read-only commands that end with `os._exit` once their output is flushed: they read Parquet, and pyarrow keeps a
# worker of its global thread pool alive (an idle `std::thread` of `arrow::internal::ThreadPool`, even with
# `use_threads=False`); at interpreter exit the pool's static destructor may meet it still joinable, and
# `std::terminate` aborts the process ("terminate called without an active exception", exit 134) after the command
# succeeded, about 1 run in 25-100. pyarrow offers no way to join its global pools, so these commands skip the
# native teardown: they hold no lock, start no server and write nothing, so nothing is lost.
NO_NATIVE_TEARDOWN = frozenset({"validate", "doctor", "status"})


def main() -> None:
    import os
    import sys

    try:
        app()
    except SystemExit as exc:
        if len(sys.argv) > 1 and sys.argv[1] in NO_NATIVE_TEARDOWN:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise


if __name__ == "__main__":
    main()
