"""``dicom-node studies``: list, show, force-complete, rerun."""

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

app = typer.Typer(help="Studies in the index (no patient names).")


@app.callback(invoke_without_command=True)
def studies(ctx: typer.Context, as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List studies, most recent first."""
    if ctx.invoked_subcommand is not None:
        return
    from dicom_node.admin.queries import list_studies  # noqa: PLC0415

    rows = list_studies(engine_for(settings_for(config)))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'STATE':<10} {'SERIES':>6} {'INST':>6}  {'LAST RECEIVED':<32} STUDY UID")
    for r in rows:
        typer.echo(
            f"{r['state']:<10} {r['series']:>6} {r['instances']:>6}  "
            f"{r['last_received']:<32} {r['study_uid']}"
        )


@app.command("show")
def studies_show(uid: str, config: ConfigOption = None) -> None:
    """One study: its series and its timeline of audit events."""
    from dicom_node.admin.queries import show_study  # noqa: PLC0415

    detail = show_study(engine_for(settings_for(config)), uid)
    if detail is None:
        typer.echo(f"no study {uid}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(detail, indent=2))


@app.command("force-complete")
def studies_force_complete(uid: str, config: ConfigOption = None) -> None:
    """Mark a study still receiving COMPLETE now; its jobs are queued."""
    from dicom_node.admin.actions import force_complete  # noqa: PLC0415

    settings = settings_for(config)
    jobs = run_action(lambda: force_complete(engine_for(settings), settings, uid, actor()))
    typer.echo(f"study {uid} COMPLETE; {len(jobs)} job(s) queued: " + " ".join(jobs))


@app.command("rerun")
def studies_rerun(uid: str, config: ConfigOption = None) -> None:
    """New jobs for a COMPLETE study, as if it completed now."""
    from dicom_node.admin.actions import rerun  # noqa: PLC0415

    settings = settings_for(config)
    jobs = run_action(lambda: rerun(engine_for(settings), settings, uid, actor()))
    typer.echo(f"{len(jobs)} job(s) queued: " + " ".join(jobs))
