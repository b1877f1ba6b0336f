"""``dicom-node jobs``: list, retry, cancel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer

from dicom_node.cli import common
from dicom_node.cli.common import ConfigOption, JsonOption

app = typer.Typer(rich_markup_mode=None, help="Inference jobs: list, show, retry, cancel.")


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


@app.command("show")
def jobs_show(job_id: str, as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """One job: its stages, measurements, the result objects it keeps on the node (where each
    file is, and which destinations have it), its exports, and where else it can be sent."""
    from dicom_node.admin.read.timeline import job_timeline  # noqa: PLC0415

    settings = common.settings_for(config)
    found = job_timeline(common.engine_for(settings), settings, job_id)
    if found is None:
        typer.echo(f"no job {job_id}", err=True)
        raise typer.Exit(1)
    common.emit(found, as_json, job_lines)


def job_lines(j: Any) -> Iterator[str]:
    """A job for people: ``jobs show``, and each job of ``studies show``."""
    from dicom_node.web.format import when  # noqa: PLC0415

    yield f"job {j.job_id} {j.model} {j.state} (rule {j.rule}, attempts {j.attempts})"
    if j.error:
        yield f"  error: {j.error}"
    for st in j.stages:
        if st.at:
            took = "" if st.duration_s is None else f"  +{st.duration_s:.3f} s {st.duration_of}"
            yield f"  {when(st.at)}  {st.stage}{took}"
    for m in j.measurements:
        mean = f", mean {m.mean:.1f}" if m.mean is not None else ""
        yield f"  {m.label}: {m.volume_ml:.2f} mL ({m.voxels} voxels{mean})"
    for o in j.objects:
        where = o.path if o.on_node else f"{o.path} (gone)"
        sent = ", ".join(o.sent_to) or "not sent"
        yield f"  {o.kind:<3} [{o.profile}] {o.sop_instance_uid}  {where}  -> {sent}"
    for x in j.exports:
        yield f"  {x.kind} -> {x.destination}: {x.state} {x.last_status or ''}".rstrip()
    for name in j.sendable:
        yield f"  can be sent: dicom-node exports send --job {j.job_id} --to {name}"


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
