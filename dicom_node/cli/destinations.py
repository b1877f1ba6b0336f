"""``dicom-node destinations``: circuits and C-ECHO."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer

from dicom_node.cli import common
from dicom_node.cli.common import ConfigOption, JsonOption

app = typer.Typer(
    rich_markup_mode=None,
    help="Result destinations (the [[destinations]] tables) and their circuits.",
)


@app.callback(invoke_without_command=True)
def destinations(
    ctx: typer.Context, as_json: JsonOption = False, config: ConfigOption = None
) -> None:
    """Every destination with its address, profile, outbox states and circuit."""
    if ctx.invoked_subcommand is not None:
        return
    from dicom_node.admin.read.destinations import destinations as rows  # noqa: PLC0415

    settings = common.settings_for(config)
    common.emit(rows(common.engine_for(settings), settings), as_json, _lines)


def _lines(r: Any) -> Iterator[str]:
    states = " ".join(f"{k}={v}" for k, v in sorted(r.states.items()))
    yield (
        f"{r.destination:<16} {r.address or '(not configured)':<32} "
        f"profile={r.profile or '-':<10} circuit={r.circuit} {states}"
    )


@app.command("echo")
def destinations_echo(name: str, config: ConfigOption = None) -> None:
    """C-ECHO one destination with its own settings (TLS included)."""
    from dicom_node.admin.actions import echo_destination  # noqa: PLC0415

    settings = common.settings_for(config)
    error = common.run_action(
        lambda: echo_destination(common.engine_for(settings), settings, name, common.actor())
    )
    typer.echo(error or f"C-ECHO {name}: Success")
    raise typer.Exit(1 if error else 0)
