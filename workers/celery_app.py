"""The Celery worker's app: ``dicom-node worker -Q gpu`` runs it.

The pool is prefork with the **spawn** start method (``--pool-start-method spawn``, Celery 5.7):
CUDA cannot be used in a process forked from one that initialised it, and the parent here never
touches torch. Spawned children import torch, load models once and keep them warm between tasks.
Unlike the solo or threads pools, prefork keeps time limits and ``reject_on_worker_lost`` working
(PITFALLS 26).
"""

from __future__ import annotations

import functools

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init

from dicom_node.jobs.celery_config import RUN_JOB, make_celery
from dicom_node.settings import load_settings


@functools.cache
def _context() -> object:
    from workers.runner import WorkerContext  # noqa: PLC0415 - torch only in pool children

    return WorkerContext(load_settings(), time_limit_errors=(SoftTimeLimitExceeded,))


def _warm_up(**_: object) -> None:
    """In each spawned pool child, before any task: import torch and the pipeline and open the
    engine, so a task's time limit never lands inside an import (a half-imported module breaks
    the child for good)."""
    _context()


def run_job(job_id: str) -> str | None:
    """Claim and run one job; the outcome is on its row, this only reports it."""
    from workers.runner import WorkerContext, execute, worker_name  # noqa: PLC0415

    ctx = _context()
    assert isinstance(ctx, WorkerContext)  # noqa: S101 - narrows the cached type
    state = execute(ctx, job_id, worker_name("celery"))
    return None if state is None else str(state)


def build_app() -> Celery:
    """The worker's Celery app with ``run_job`` registered, from the environment's settings."""
    worker_process_init.connect(_warm_up, weak=False)
    app = make_celery(load_settings())
    app.task(name=RUN_JOB)(run_job)
    return app


app = build_app()
