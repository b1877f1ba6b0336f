"""``dicom-node studies``: list, show, force-complete, rerun."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer

from dicom_node.cli import common
from dicom_node.cli.common import ConfigOption, JsonOption
from dicom_node.cli.jobs import job_lines

app = typer.Typer(rich_markup_mode=None, help="Studies in the index (no patient names).")


@app.callback(invoke_without_command=True)
def studies(ctx: typer.Context, as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List studies, most recent first."""
    if ctx.invoked_subcommand is not None:
        return
    from dicom_node.admin.read.studies import StudyFilter  # noqa: PLC0415
    from dicom_node.admin.read.studies import studies as study_rows  # noqa: PLC0415

    settings = common.settings_for(config)
    rows = study_rows(
        common.engine_for(settings),
        StudyFilter(limit=1000),
        show_accession=settings.admin.show_accession,
    )
    header = f"{'STATE':<10} {'SERIES':>6} {'INST':>6}  {'LAST RECEIVED':<32} STUDY UID"
    common.emit(rows, as_json, _row_lines, header)


def _row_lines(r: Any) -> Iterator[str]:
    yield f"{r.state:<10} {r.series:>6} {r.instances:>6}  {r.last_received:<32} {r.study_uid}"


@app.command("show")
def studies_show(uid: str, as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """One study's timeline, as the web UI's study page shows it: every stage with its time,
    the series, the rules' choice of stacks, each job with its exports and measurements."""
    from dicom_node.admin.read.timeline import timeline  # noqa: PLC0415

    settings = common.settings_for(config)
    found = timeline(
        common.engine_for(settings), settings, uid, show_accession=settings.admin.show_accession
    )
    if found is None:
        typer.echo(f"no study {uid}", err=True)
        raise typer.Exit(1)
    common.emit(found, as_json, _timeline_lines)


def _timeline_lines(s: Any) -> Iterator[str]:
    from dicom_node.web.format import dicom_date, when  # noqa: PLC0415

    yield (
        f"study {s.study_uid}  {s.state}  study date {dicom_date(s.study_date)}  "
        f"sent by {', '.join(s.calling_aes) or '-'}"
    )
    for se in s.series:
        yield (
            f"  series {se.series_number if se.series_number is not None else '-':>4} "
            f"{se.modality or '-':<4} {se.instances:>5} instances  {se.series_uid}"
        )
    yield "timeline:"
    for e in s.timeline:
        took = f"  +{e.duration_s:.3f} s {e.duration_of or ''}" if e.duration_s is not None else ""
        extra = " · ".join(v for v in (e.actor, e.detail) if v)
        yield f"  {when(e.at)}  {e.stage}{took}{'  (' + extra + ')' if extra else ''}"
    for r in s.rules:
        yield f"rule {r.rule}: " + (", ".join(r.chosen) if r.chosen else "does not apply")
        for key, why in r.refused.items():
            yield f"  refused {key}: {why}"
    for j in s.jobs:
        yield from job_lines(j)


@app.command("force-complete")
def studies_force_complete(uid: str, config: ConfigOption = None) -> None:
    """Mark a study still receiving COMPLETE now; its jobs are queued."""
    from dicom_node.admin.actions import force_complete  # noqa: PLC0415

    settings = common.settings_for(config)
    jobs = common.run_action(
        lambda: force_complete(common.engine_for(settings), settings, uid, common.actor())
    )
    typer.echo(f"study {uid} COMPLETE; {len(jobs)} job(s) queued: " + " ".join(jobs))


@app.command("rerun")
def studies_rerun(uid: str, config: ConfigOption = None) -> None:
    """New jobs for a COMPLETE study, as if it completed now."""
    from dicom_node.admin.actions import rerun  # noqa: PLC0415

    settings = common.settings_for(config)
    jobs = common.run_action(
        lambda: rerun(common.engine_for(settings), settings, uid, common.actor())
    )
    typer.echo(f"{len(jobs)} job(s) queued: " + " ".join(jobs))
