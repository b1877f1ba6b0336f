"""Jobs: made when a study completes (once per input), leased, requeued, failed after N tries."""

from __future__ import annotations

import concurrent.futures
import copy
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from dicom_node.db.models import Job, utcnow
from dicom_node.domain import IllegalTransitionError, JobState
from dicom_node.jobs import service
from dicom_node.settings import JobSettings
from tests.helpers import (
    RunningNode,
    cli,
    config_for,
    job_events,
    node_settings,
    send_datasets,
    start_node,
    wait_for,
)

RULES = [
    {
        "name": "ct-head",
        "models": ["ct-tissue", "ct-other"],
        "priority": "stat",
        "match": {"modality": ["CT"], "min_slices": 10},
    },
    {"name": "mr", "models": ["mr-model"], "match": {"modality": ["MR"]}},
]


@pytest.fixture(params=["sqlite", "postgresql"])
def jobs_node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningNode]:
    db_url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    node = start_node(node_settings(tmp_path, db_url=db_url, rules=RULES))  # type: ignore[arg-type]
    yield node
    node.stop()


def philips_study(ct_dir: Path) -> list[Dataset]:
    files = sorted(p for p in ct_dir.parent.rglob("*") if p.is_file() and p.name != "DIRFILE")
    return [dcmread(p) for p in files]


def jobs_of(node: RunningNode, study_uid: str) -> list[Job]:
    with node.engine.connect() as conn:
        return list(
            conn.execute(
                select(Job).where(Job.study_uid == study_uid).order_by(Job.created_at, Job.model)
            )
        )


def events(node: RunningNode, job_id: str) -> list[str]:
    return job_events(node.engine, job_id)


def test_complete_study_makes_one_job_per_model_and_input(
    jobs_node: RunningNode, ct_dir: Path
) -> None:
    node = jobs_node
    study = philips_study(ct_dir)
    uid = study[0].StudyInstanceUID
    axial_uid = next(d.SeriesInstanceUID for d in study if "AXIAL" in d.ImageType)
    send_datasets(node.port, study)
    wait_for(lambda: len(jobs_of(node, uid)) == 2, 5, "two jobs for ct-head")
    first = jobs_of(node, uid)
    assert sorted(j.model for j in first) == ["ct-other", "ct-tissue"]
    assert all(
        j.series_uids == [axial_uid] and j.state == "QUEUED" and j.priority == 0 for j in first
    )
    assert events(node, first[0].id) == ["job.queued"]

    # A late localizer reopens the study, but the chosen input is the same: no new jobs.
    scout = copy.deepcopy(next(d for d in study if "LOCALIZER" in d.ImageType))
    scout.SeriesInstanceUID, scout.SOPInstanceUID = generate_uid(), generate_uid()
    send_datasets(node.port, [scout])
    wait_for(lambda: node.study(uid)["times_completed"] == 2, 5, "completed again")
    assert len(jobs_of(node, uid)) == 2

    # A late axial series that wins the choice (as many slices, thinner) changes it: new jobs
    # on it. (Each slice sent twice would not: identical duplicates collapse into one stack.)
    thinner = []
    new_series = generate_uid()
    for d in [d for d in study if d.SeriesInstanceUID == axial_uid]:
        d2 = copy.deepcopy(d)
        d2.SeriesInstanceUID, d2.SOPInstanceUID = new_series, generate_uid()
        d2.SliceThickness = 2.0
        thinner.append(d2)
    send_datasets(node.port, thinner)
    wait_for(lambda: len(jobs_of(node, uid)) == 4, 5, "new jobs for the new input")
    assert {tuple(j.series_uids) for j in jobs_of(node, uid)[2:]} == {(new_series,)}


def test_lease_requeue_and_permanent_failure(jobs_node: RunningNode, ct_dir: Path) -> None:
    node, settings = jobs_node, JobSettings(max_attempts=3, lease_s=60)
    study = philips_study(ct_dir)
    send_datasets(node.port, study)
    wait_for(lambda: jobs_of(node, study[0].StudyInstanceUID), 5, "jobs made")
    job_id = jobs_of(node, study[0].StudyInstanceUID)[0].id

    assert service.claim(node.engine, job_id, "worker-a", settings)
    assert not service.claim(node.engine, job_id, "worker-b", settings)  # already RUNNING
    assert service.heartbeat(node.engine, job_id, "worker-a", settings)
    assert not service.heartbeat(node.engine, job_id, "worker-b", settings)
    assert service.give_back(node.engine, job_id, "CUDA out of memory") is JobState.QUEUED

    def expire() -> None:
        with node.engine.begin() as conn:
            conn.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )

    assert service.claim(node.engine, job_id, "worker-a", settings)
    expire()  # the worker was killed: its lease runs out
    assert job_id in service.expire_leases(node.engine)  # requeued
    assert service.claim(node.engine, job_id, "worker-c", settings)
    expire()
    assert job_id not in service.expire_leases(node.engine)  # failed: attempts used up
    [job] = [j for j in jobs_of(node, study[0].StudyInstanceUID) if j.id == job_id]
    assert (job.state, job.attempts) == ("FAILED", 3)
    assert job.error == "lease expired: the worker stopped answering (failed 3 attempts)"
    assert events(node, job_id) == [
        "job.queued",
        "job.running",
        "job.requeued",
        "job.running",
        "job.requeued",
        "job.running",
        "job.failed",
    ]
    with node.engine.begin() as conn, pytest.raises(IllegalTransitionError):
        service.transition_job(
            conn, job_id, JobState.FAILED, JobState.DONE, at=utcnow(), reason="no"
        )


def test_unclaimed_jobs_are_returned_for_reenqueue(jobs_node: RunningNode, ct_dir: Path) -> None:
    study = philips_study(ct_dir)
    send_datasets(jobs_node.port, study)
    wait_for(lambda: jobs_of(jobs_node, study[0].StudyInstanceUID), 5, "jobs made")
    ids = {j.id for j in jobs_of(jobs_node, study[0].StudyInstanceUID)}
    assert (
        set(service.due_for_enqueue(jobs_node.engine, unclaimed_after_s=3600)) == ids
    )  # never sent
    service.mark_enqueued(jobs_node.engine, list(ids))
    assert service.due_for_enqueue(jobs_node.engine, unclaimed_after_s=3600) == []
    assert (
        set(service.due_for_enqueue(jobs_node.engine, unclaimed_after_s=0)) == ids
    )  # sent, unclaimed


def test_one_claim_wins_under_contention(jobs_node: RunningNode, ct_dir: Path) -> None:
    study = philips_study(ct_dir)
    send_datasets(jobs_node.port, study)
    wait_for(lambda: jobs_of(jobs_node, study[0].StudyInstanceUID), 5, "jobs made")
    job_id = jobs_of(jobs_node, study[0].StudyInstanceUID)[0].id
    settings = JobSettings()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        wins = list(
            pool.map(lambda i: service.claim(jobs_node.engine, job_id, f"w{i}", settings), range(8))
        )
    assert wins.count(True) == 1
    assert events(jobs_node, job_id).count("job.running") == 1


def test_jobs_cli(tmp_path: Path, ct_dir: Path) -> None:
    node = start_node(node_settings(tmp_path, rules=RULES))  # type: ignore[arg-type]
    try:
        study = philips_study(ct_dir)
        send_datasets(node.port, study)
        wait_for(lambda: len(jobs_of(node, study[0].StudyInstanceUID)) == 2, 5, "jobs")
        done = cli("jobs", "--json", config=config_for(node, tmp_path))
        assert done.returncode == 0, done.stderr
        rows = json.loads(done.stdout)
        assert {r["model"] for r in rows} == {"ct-tissue", "ct-other"}
        assert all(r["state"] == "QUEUED" and r["priority"] == "stat" for r in rows)
    finally:
        node.stop()
