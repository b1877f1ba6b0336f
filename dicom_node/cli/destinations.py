"""``dicom-node destinations``: circuits and C-ECHO."""

from __future__ import annotations

import json

import typer

from dicom_node.cli.common import (
    ConfigOption,
    JsonOption,
    actor,
    engine_for,
    run_action,
    settings_for,
)

app = typer.Typer(help="Result destinations ([[destinations]]) and their circuits.")


@app.callback(invoke_without_command=True)
def destinations(
    ctx: typer.Context, as_json: JsonOption = False, config: ConfigOption = None
) -> None:
    """Configured destinations with their circuit state."""
    if ctx.invoked_subcommand is not None:
        return
    from dicom_node.admin.queries import list_circuits  # noqa: PLC0415

    settings = settings_for(config)
    circuits = {c["destination"]: c for c in list_circuits(engine_for(settings))}
    rows = [
        {
            "name": d.name,
            "ae_title": d.ae_title,
            "host": d.host,
            "port": d.port,
            "profile": d.profile,
            "tls": d.tls,
            **{
                k: v
                for k, v in circuits.get(d.name, {"circuit": "CLOSED"}).items()
                if k != "destination"
            },
        }
        for d in settings.destinations
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        typer.echo(
            f"{r['name']:<16} {r['ae_title']}@{r['host']}:{r['port']:<6} "
            f"profile={r['profile']:<10} circuit={r['circuit']}"
        )


@app.command("echo")
def destinations_echo(name: str, config: ConfigOption = None) -> None:
    """C-ECHO one destination with its own settings (TLS included)."""
    from dicom_node.admin.actions import echo_destination  # noqa: PLC0415

    settings = settings_for(config)
    error = run_action(lambda: echo_destination(engine_for(settings), settings, name, actor()))
    typer.echo(error or f"C-ECHO {name}: Success")
    raise typer.Exit(1 if error else 0)
