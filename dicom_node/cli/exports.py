"""``dicom-node exports``: the outbox and resending."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from dicom_node.cli import common
from dicom_node.cli.common import ConfigOption, JsonOption

app = typer.Typer(rich_markup_mode=None, help="The export outbox: result objects x destinations.")


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
    from dicom_node.admin.read.jobs import ExportFilter  # noqa: PLC0415
    from dicom_node.admin.read.jobs import exports as export_rows  # noqa: PLC0415

    rows = export_rows(common.index(config), ExportFilter(job_id=job, state=state))
    header = f"{'STATE':<11} {'TRY':>5} {'KIND':<4} {'DESTINATION':<16} {'STATUS':<7} EXPORT / JOB"
    common.emit(rows, as_json, _lines, header)


def _lines(r: Any) -> Iterator[str]:
    tries = f"{r.attempts}/{r.max_attempts}"
    yield (
        f"{r.state:<11} {tries:>5} {r.kind:<4} {r.destination:<16} "
        f"{r.last_status or '-':<7} {r.export_id} {r.job_id}"
    )
    if r.last_error and r.state != "DELIVERED":
        yield f"{'':<11} {r.last_error}"


@app.command("send")
def exports_send(
    job: Annotated[str, typer.Option("--job", help="The job whose kept results go.")],
    to: Annotated[str, typer.Option("--to", help="A destination of [[destinations]].")],
    config: ConfigOption = None,
) -> None:
    """Send a job's results, kept on the node, to a destination: one there was none for when
    it ran, or one added since. New outbox rows, recorded in the audit log."""
    from dicom_node.admin.actions import send_results  # noqa: PLC0415

    settings = common.settings_for(config)
    engine = common.engine_for(settings)
    made = common.run_action(lambda: send_results(engine, settings, job, to, common.actor()))
    typer.echo(f"{len(made)} object(s) queued for {to}: " + " ".join(made))


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
    from dicom_node.admin.read.jobs import ExportFilter  # noqa: PLC0415
    from dicom_node.admin.read.jobs import exports as export_rows  # noqa: PLC0415

    engine = common.index(config)
    who = common.actor()
    if not failed:
        moved = common.run_action(lambda: resend(engine, who, export_id=export_id, job_id=job))
    else:
        flt = ExportFilter(state="FAILED", destination=destination, limit=1_000_000)
        moved = []
        with typer.progressbar(export_rows(engine, flt), label="resending", file=sys.stderr) as bar:
            for r in bar:
                moved += resend(engine, who, export_id=r.export_id)
        if not moved:
            typer.echo("nothing to resend: no FAILED row matches", err=True)
            raise typer.Exit(1)
    typer.echo(f"{len(moved)} export(s) back to PENDING: " + " ".join(moved))
