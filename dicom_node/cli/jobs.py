"""``dicom-node jobs``: list, retry, cancel."""

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

app = typer.Typer(help="Inference jobs: list, retry, cancel.")


@app.callback(invoke_without_command=True)
def jobs(ctx: typer.Context, as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Inference jobs, newest first, with their state and attempts."""
    if ctx.invoked_subcommand is not None:
        return
    from dicom_node.admin.queries import list_jobs  # noqa: PLC0415

    rows = list_jobs(engine_for(settings_for(config)))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'STATE':<14} {'TRY':>5}  {'MODEL':<20} {'RULE':<20} JOB / STUDY")
    for r in rows:
        tries = f"{r['attempts']}/{r['max_attempts']}"
        typer.echo(
            f"{r['state']:<14} {tries:>5}  {r['model']:<20} {r['rule']:<20} "
            f"{r['job_id']} {r['study_uid']}"
        )
        if r["stack"]:
            typer.echo(f"{'':<22}{r['stack']['label']}")
        if r["error"]:
            typer.echo(f"{'':<22}error: {r['error']}")


@app.command("retry")
def jobs_retry(job_id: str, config: ConfigOption = None) -> None:
    """A FAILED or CANCELLED job back to QUEUED (attempts from zero)."""
    from dicom_node.admin.actions import retry_job  # noqa: PLC0415

    run_action(lambda: retry_job(engine_for(settings_for(config)), job_id, actor()))
    typer.echo(f"job {job_id} QUEUED")


@app.command("cancel")
def jobs_cancel(job_id: str, config: ConfigOption = None) -> None:
    """A QUEUED or RUNNING job to CANCELLED (a running worker's results are refused)."""
    from dicom_node.admin.actions import cancel_job  # noqa: PLC0415

    run_action(lambda: cancel_job(engine_for(settings_for(config)), job_id, actor()))
    typer.echo(f"job {job_id} CANCELLED")
