"""``dicom-node exports``: the outbox and resending."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from dicom_node.cli.common import (
    ConfigOption,
    JsonOption,
    actor,
    engine_for,
    run_action,
    settings_for,
)

app = typer.Typer(help="The export outbox: result objects x destinations.")


@app.callback(invoke_without_command=True)
def exports(
    ctx: typer.Context,
    as_json: JsonOption = False,
    job: Annotated[str | None, typer.Option("--job", help="Only this job's rows.")] = None,
    state: Annotated[str | None, typer.Option("--state", help="PENDING, FAILED, ...")] = None,
    config: ConfigOption = None,
) -> None:
    """Outbox rows, newest first: state, attempts, last DIMSE status and error."""
    if ctx.invoked_subcommand is not None:
        return
    from dicom_node.admin.queries import list_exports  # noqa: PLC0415

    rows = list_exports(engine_for(settings_for(config)), job_id=job, state=state)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(
        f"{'STATE':<11} {'TRY':>5} {'KIND':<4} {'DESTINATION':<16} {'STATUS':<7} EXPORT / JOB"
    )
    for r in rows:
        tries = f"{r['attempts']}/{r['max_attempts']}"
        typer.echo(
            f"{r['state']:<11} {tries:>5} {r['kind']:<4} {r['destination']:<16} "
            f"{r['last_status'] or '-':<7} {r['export_id']} {r['job_id']}"
        )
        if r["last_error"] and r["state"] != "DELIVERED":
            typer.echo(f"{'':<11} {r['last_error']}")


@app.command("resend")
def exports_resend(
    export_id: Annotated[str | None, typer.Argument(help="One outbox row.")] = None,
    job: Annotated[str | None, typer.Option("--job", help="Every row of this job.")] = None,
    failed: Annotated[
        bool, typer.Option("--failed", help="Bulk: every FAILED row (with --destination, its).")
    ] = False,
    destination: Annotated[str | None, typer.Option("--destination")] = None,
    config: ConfigOption = None,
) -> None:
    """Send DELIVERED or FAILED rows again (attempts from zero). Recorded in the audit log."""
    if sum((export_id is not None, job is not None, failed)) != 1:
        typer.echo("dicom-node: give an export ID, --job JOB or --failed", err=True)
        raise typer.Exit(2)
    from dicom_node.admin.actions import resend  # noqa: PLC0415
    from dicom_node.admin.queries import list_exports  # noqa: PLC0415

    engine = engine_for(settings_for(config))
    who = actor()
    if not failed:
        moved = run_action(lambda: resend(engine, who, export_id=export_id, job_id=job))
    else:
        rows = [
            r
            for r in list_exports(engine, state="FAILED", limit=1_000_000)
            if destination is None or r["destination"] == destination
        ]
        moved = []
        with typer.progressbar(rows, label="resending", file=sys.stderr) as bar:
            for r in bar:
                moved += resend(engine, who, export_id=r["export_id"])
        if not moved:
            typer.echo("nothing to resend: no FAILED row matches", err=True)
            raise typer.Exit(1)
    typer.echo(f"{len(moved)} export(s) back to PENDING: " + " ".join(moved))
