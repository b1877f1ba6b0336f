"""The worker's job run (``workers.runner.execute``) on SQLite with real CT slices stored by the
intake and a tiny real torch model (a 300.5 HU threshold): a claimed job runs, its results are
built and kept, and every way it can end (not claimed, permanent, transient, crash, time limit)
leaves the job in the state the house rules say, with an error an admin can read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import Engine

from dicom_node.domain import JobState
from dicom_node.errors import Transient
from dicom_node.results import JobSummary, ObjectKind
from dicom_node.settings import Settings
from dicom_node.storage.index import AssociationCache
from tests.models import THRESHOLD_HU, build_model
from tests.recompose import new_series, straight
from tests.rows import add_job, job, make_intake, request, sqlite_index
from workers import runner
from workers.runner import JobTimeLimitError, WorkerContext, execute, previous_reports

WORKER = "test-worker"


@pytest.fixture
def site(tmp_path: Path, testdata: Path) -> tuple[WorkerContext, str, str]:
    """8 real CT slices in one series, stored and indexed; model 'bone' on disk."""
    engine = sqlite_index(tmp_path)
    intake = make_intake(engine, tmp_path / "storage")
    slices = new_series(straight(testdata)[:8], "runner")
    for ds in slices:
        intake.accept(request(ds), AssociationCache())
    build_model(tmp_path / "models", "bone", "torchscript")
    settings = Settings(
        storage={"root": str(tmp_path / "storage")},  # type: ignore[arg-type]
        database={"url": f"sqlite:///{tmp_path / 'index.db'}"},  # type: ignore[arg-type]
        models={"root": str(tmp_path / "models"), "device": "cpu"},  # type: ignore[arg-type]
    )
    ctx = WorkerContext(settings)
    study, series = str(slices[0].StudyInstanceUID), str(slices[0].SeriesInstanceUID)
    return ctx, study, series


def queued(engine: Engine, study: str, series: str, name: str = "job-1", **values: object) -> str:
    values.setdefault("model", "bone")
    return add_job(engine, name, study_uid=study, series_uids=[series], **values)


def bone_voxels(ctx: WorkerContext) -> int:
    """Independently of the node: voxels above the threshold in the stored slices."""
    total = 0
    for path in (Path(ctx.settings.storage.root) / "instances").rglob("*.dcm"):
        ds = dcmread(path)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        total += int(np.count_nonzero(hu > THRESHOLD_HU))
    return total


def test_a_claimed_job_runs_and_its_results_are_kept(site: tuple[WorkerContext, str, str]) -> None:
    ctx, study, series = site
    job_id = queued(ctx.engine, study, series)
    # no destination: the results are kept on the node, the job is DONE at once
    assert execute(ctx, job_id, WORKER) is JobState.RESULTS_READY
    row = job(ctx.engine, job_id)
    assert row.state == JobState.DONE and row.error is None
    summary = JobSummary.from_json(row.result)
    (one,) = summary.series
    (bone,) = one.labels
    assert (one.series_uid, one.frames) == (series, 8)
    assert bone.voxels == bone_voxels(ctx) > 0
    kinds = sorted(str(o.kind) for o in summary.objects_for("default"))
    assert kinds == sorted(str(k) for k in (ObjectKind.SEG, ObjectKind.SR))
    assert all(Path(o.path).is_file() for o in summary.objects_for("default"))
    assert execute(ctx, job_id, WORKER) is None  # DONE is not claimed again


def test_a_rerun_names_the_earlier_report(site: tuple[WorkerContext, str, str]) -> None:
    ctx, study, series = site
    first = queued(ctx.engine, study, series, "first")
    execute(ctx, first, WORKER)
    second = queued(ctx.engine, study, series, "second")
    record = runner.JobRecord.read(ctx.engine, second)
    earlier = JobSummary.from_json(job(ctx.engine, first).result)
    sr = [Path(o.path) for o in earlier.objects_for("default") if o.kind is ObjectKind.SR]
    assert previous_reports(ctx.engine, record) == {"default": sr}
    other_model = runner.JobRecord.read(
        ctx.engine, queued(ctx.engine, study, series, "x", model="y")
    )
    assert previous_reports(ctx.engine, other_model) == {}


def test_a_series_without_stored_instances_fails_the_job(
    site: tuple[WorkerContext, str, str],
) -> None:
    ctx, study, _series = site
    job_id = queued(ctx.engine, study, "1.2.3.404")
    assert execute(ctx, job_id, WORKER) is JobState.FAILED
    assert job(ctx.engine, job_id).error == "series 1.2.3.404 has no stored instances"


def test_an_unknown_model_fails_the_job_with_its_name(site: tuple[WorkerContext, str, str]) -> None:
    ctx, study, series = site
    job_id = queued(ctx.engine, study, series, model="no-such-model")
    assert execute(ctx, job_id, WORKER) is JobState.FAILED
    assert "no-such-model" in job(ctx.engine, job_id).error


@pytest.mark.parametrize(
    ("raised", "state", "error"),
    [
        (Transient("GPU busy"), JobState.QUEUED, "transient: GPU busy"),
        (RuntimeError("segfault-ish"), JobState.QUEUED, "RuntimeError: segfault-ish"),
        (JobTimeLimitError(), JobState.FAILED, "exceeded the soft time limit of"),
    ],
)
def test_how_a_run_ends_decides_the_jobs_state(
    site: tuple[WorkerContext, str, str],
    monkeypatch: pytest.MonkeyPatch,
    raised: BaseException,
    state: JobState,
    error: str,
) -> None:
    ctx, study, series = site
    job_id = queued(ctx.engine, study, series)

    def fails(*_args: object) -> JobSummary:
        raise raised

    monkeypatch.setattr(runner, "run", fails)  # the seam: the pipeline's outcome
    assert execute(ctx, job_id, WORKER) is state
    row = job(ctx.engine, job_id)
    assert row.state == state and row.error.startswith(error)
    assert row.worker in (None, WORKER)


def test_the_last_attempt_of_a_transient_error_fails_and_says_how_many(
    site: tuple[WorkerContext, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, study, series = site
    job_id = queued(ctx.engine, study, series, max_attempts=1)

    def busy(*_args: object) -> JobSummary:
        raise Transient("GPU busy")

    monkeypatch.setattr(runner, "run", busy)
    assert execute(ctx, job_id, WORKER) is JobState.FAILED
    assert job(ctx.engine, job_id).error == "transient: GPU busy (failed 1 attempts)"
