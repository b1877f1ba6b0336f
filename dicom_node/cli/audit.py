"""``dicom-node audit``: the audit log, as text, JSON or CSV."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from dicom_node.cli import common
from dicom_node.cli.common import ConfigOption, JsonOption

app = typer.Typer(rich_markup_mode=None, help="The audit log: every state change and admin action.")


@app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    *,
    event: Annotated[
        str | None, typer.Option("--event", help="job.failed, or a prefix: job.")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="The actor.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study Instance UID.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="YYYY-MM-DD")] = None,
    until: Annotated[str | None, typer.Option("--until", help="YYYY-MM-DD, inclusive")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 500,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV, as the web UI exports it.")] = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Audit events, newest first, with the same filters as the web UI."""
    if ctx.invoked_subcommand is not None:
        return
    from datetime import date  # noqa: PLC0415

    from dicom_node.admin.read.audit import AuditFilter, audit_csv  # noqa: PLC0415
    from dicom_node.admin.read.audit import audit as audit_rows  # noqa: PLC0415

    try:
        flt = AuditFilter(
            event_type=event,
            actor=user,
            study_uid=study,
            since=date.fromisoformat(since) if since else None,
            until=date.fromisoformat(until) if until else None,
            limit=limit,
        )
    except ValueError as exc:
        typer.echo(f"dicom-node: dates are YYYY-MM-DD ({exc})", err=True)
        raise typer.Exit(2) from exc
    rows = audit_rows(common.index(config), flt)
    if as_csv:
        typer.echo(audit_csv(rows), nl=False)
    else:
        common.emit(rows, as_json, _lines)


def _lines(r: Any) -> Iterator[str]:
    details = json.dumps(r.details, sort_keys=True)
    yield f"{(r.at or '')[:19]} {r.event:<26} {r.actor:<14} {r.study_uid or '-'} {details}"
