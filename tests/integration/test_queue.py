"""The queue end to end with real processes: ``dicom-node serve``, real Redis, a real Celery worker
(``dicom-node worker -Q gpu``), and the embedded mode with no broker at all.

Each scenario receives the tilted Philips CT over DICOM, lets it complete, routes it to a tiny
fixed-weight model and waits for DONE (no destination configured); the mask is checked against
an independent threshold of the pixel data. The fault scenarios kill things with SIGKILL
mid-inference.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.domain import JobState
from tests.helpers import free_port, wait_for
from tests.scenario import SLOW, RedisProcess, Scenario


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    server = RedisProcess(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def scenarios() -> Iterator[list[Scenario]]:
    made: list[Scenario] = []
    yield made
    for s in made:
        s.close()


def start_scenario(
    mode: str,
    tmp: Path,
    ct_dir: Path,
    request: pytest.FixtureRequest,
    scenarios: list[Scenario],
    **options: str,
) -> Scenario:
    """A started node in ``mode`` (embedded, or celery with a private Redis and one worker)."""
    broker = request.getfixturevalue("redis").url if mode == "celery" else None
    s = Scenario(tmp, ct_dir, broker=broker, **options)
    scenarios.append(s)
    s.node.start()
    if broker:
        s.worker()
    return s


@pytest.mark.parametrize("mode", ["embedded", "celery"])
def test_study_is_received_completed_routed_and_inferred(
    mode: str,
    tmp_path: Path,
    ct_dir: Path,
    request: pytest.FixtureRequest,
    scenarios: list[Scenario],
) -> None:
    s = start_scenario(mode, tmp_path, ct_dir, request, scenarios)
    uid = s.send()
    job = s.wait_state(uid, JobState.DONE, 90)  # no destination: done once results are built
    s.check_mask(job)
    assert job.attempts == 1
    assert job.worker is not None
    assert job.worker.startswith(f"{mode}-")
    assert s.events(job.id) == ["job.queued", "job.running", "job.results_ready", "job.done"]


def test_worker_killed_mid_inference_job_reruns_and_completes_once(
    tmp_path: Path, ct_dir: Path, redis: RedisProcess, scenarios: list[Scenario]
) -> None:
    s = Scenario(tmp_path, ct_dir, broker=redis.url, model_extra=SLOW)
    scenarios.append(s)
    s.node.start()
    first = s.worker()
    uid = s.send()
    running = s.wait_state(uid, JobState.RUNNING, 60)
    time.sleep(1.0)  # inside the forward pass
    first.kill9()
    killed_at = time.monotonic()
    s.worker()
    job = s.wait_state(uid, JobState.DONE, 120)
    recovered_s = time.monotonic() - killed_at
    s.check_mask(job)
    assert job.attempts == 2
    assert job.worker != running.worker
    events = s.events(job.id)
    assert events == [
        "job.queued",
        "job.running",
        "job.requeued",
        "job.running",
        "job.results_ready",
        "job.done",
    ]
    print(f"worker kill -9: recovered in {recovered_s:.1f} s")


def test_redis_stopped_with_jobs_queued_loses_nothing(
    tmp_path: Path, ct_dir: Path, redis: RedisProcess, scenarios: list[Scenario]
) -> None:
    s = Scenario(tmp_path, ct_dir, broker=redis.url)
    scenarios.append(s)
    s.node.start()
    first = s.send()  # no worker yet: the job is published and waits in Redis
    wait_for(lambda: (j := s.job(first)) is not None and j.enqueued_at is not None, 30, "enqueued")
    redis.stop()  # Redis keeps nothing on disk: the message is gone
    second = s.send("1.2.826.0.1.3680043.8.498.424242")  # made while the broker is down
    s.wait_state(second, JobState.QUEUED, 30)
    time.sleep(2)
    assert "broker_unavailable" in (tmp_path / "node.log").read_text()
    redis.start()
    s.worker()
    for uid in (first, second):
        job = s.wait_state(uid, JobState.DONE, 90)
        s.check_mask(job)
        assert s.events(job.id).count("job.results_ready") == 1


def test_node_killed_while_jobs_run_is_recovered(
    tmp_path: Path, ct_dir: Path, scenarios: list[Scenario]
) -> None:
    s = Scenario(tmp_path, ct_dir, broker=None, model_extra=SLOW)
    scenarios.append(s)
    s.node.start()
    uid = s.send()
    s.wait_state(uid, JobState.RUNNING, 60)
    time.sleep(1.0)
    s.node.kill9()  # the node and its embedded worker, mid-inference
    job = s.job(uid)
    assert job is not None
    assert job.state == str(JobState.RUNNING)  # orphaned until the node comes back
    restarted_at = time.monotonic()
    s.node.start()
    job = s.wait_state(uid, JobState.DONE, 120)
    recovered_s = time.monotonic() - restarted_at
    s.check_mask(job)
    assert job.attempts == 2
    assert s.events(job.id) == [
        "job.queued",
        "job.running",
        "job.requeued",
        "job.running",
        "job.results_ready",
        "job.done",
    ]
    print(f"node kill -9: recovered {recovered_s:.1f} s after restart")


@pytest.mark.parametrize("mode", ["embedded", "celery"])
def test_a_job_past_its_soft_time_limit_fails_with_a_message(
    mode: str,
    tmp_path: Path,
    ct_dir: Path,
    request: pytest.FixtureRequest,
    scenarios: list[Scenario],
) -> None:
    limits = "soft_time_limit_s = 1.5\nhard_time_limit_s = 30.0"
    s = start_scenario(mode, tmp_path, ct_dir, request, scenarios, model_extra=SLOW, jobs=limits)
    uid = s.send()
    job = s.wait_state(uid, JobState.FAILED, 90)
    assert job.error == "exceeded the soft time limit of 1.5 s"
    assert job.attempts == 1  # a timeout is permanent: retrying the same input will not help
    assert s.events(job.id) == ["job.queued", "job.running", "job.failed"]


def test_a_missing_model_fails_the_job_with_a_readable_error(
    tmp_path: Path, ct_dir: Path, scenarios: list[Scenario]
) -> None:
    s = Scenario(tmp_path, ct_dir, broker=None, model="not-installed")
    scenarios.append(s)
    s.node.start()
    job = s.wait_state(s.send(), JobState.FAILED, 60)
    assert job.error is not None
    assert job.error.startswith("model 'not-installed': no manifest.toml in ")
    assert job.attempts == 1
