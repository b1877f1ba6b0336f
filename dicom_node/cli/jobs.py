"""``dicom-node jobs``: list, retry, cancel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer

from dicom_node.cli import common
from dicom_node.cli.common import ConfigOption, JsonOption

app = typer.Typer(rich_markup_mode=None, help="Inference jobs: list, retry, cancel.")


@app.callback(invoke_without_command=True)
def jobs(ctx: typer.Context, as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Inference jobs, newest first, with their state and attempts."""
    if ctx.invoked_subcommand is not None:
        return
    from dicom_node.admin.read.jobs import JobFilter  # noqa: PLC0415
    from dicom_node.admin.read.jobs import jobs as job_rows  # noqa: PLC0415

    header = f"{'STATE':<14} {'TRY':>5}  {'MODEL':<20} {'RULE':<20} JOB / STUDY"
    common.emit(job_rows(common.index(config), JobFilter()), as_json, _lines, header)


def _lines(r: Any) -> Iterator[str]:
    tries = f"{r.attempts}/{r.max_attempts}"
    yield f"{r.state:<14} {tries:>5}  {r.model:<20} {r.rule:<20} {r.job_id} {r.study_uid}"
    if r.stack:
        yield f"{'':<22}{r.stack['label']}"
    if r.error:
        yield f"{'':<22}error: {r.error}"


@app.command("retry")
def jobs_retry(job_id: str, config: ConfigOption = None) -> None:
    """A FAILED or CANCELLED job back to QUEUED (attempts from zero)."""
    from dicom_node.admin.actions import retry_job  # noqa: PLC0415

    common.run_action(lambda: retry_job(common.index(config), job_id, common.actor()))
    typer.echo(f"job {job_id} QUEUED")


@app.command("cancel")
def jobs_cancel(job_id: str, config: ConfigOption = None) -> None:
    """A QUEUED or RUNNING job to CANCELLED (a running worker's results are refused)."""
    from dicom_node.admin.actions import cancel_job  # noqa: PLC0415

    common.run_action(lambda: cancel_job(common.index(config), job_id, common.actor()))
    typer.echo(f"job {job_id} CANCELLED")
