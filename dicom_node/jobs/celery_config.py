"""The Celery app as the node sees it: configuration and ``send_task`` by name, no torch.

Workers register the task itself in ``workers.celery_app``. Settings (PITFALLS 23-26):

- JSON only, tasks take a job id: the database row is the job, the message only points at it.
- ``acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged after the task ran,
  and a worker process that dies returns it to the queue. Attempts are counted in the database,
  so a study that keeps killing workers ends FAILED instead of looping (PITFALLS 24).
- prefetch 1: a GPU worker never holds jobs it cannot start.
- ``visibility_timeout`` above the hard time limit, or Redis hands a running task to a second
  worker (checked in Settings).
- Queues ``gpu`` (inference) and ``io`` (export, later stages).
- Hard and soft time limits per job (``[jobs]``); the soft one FAILS the job with a message.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from dicom_node.settings import Settings

RUN_JOB = "dicom_node.run_job"
GPU_QUEUE = "gpu"
IO_QUEUE = "io"


def make_celery(settings: Settings) -> Celery:
    """The Celery app on ``[queue] broker_url``; a ``ValueError`` in embedded mode."""
    if settings.queue.broker_url is None:
        raise ValueError("no [queue] broker_url: the node is in embedded mode")
    app = Celery(
        "dicom_node", broker=settings.queue.broker_url.get_secret_value(), set_as_current=False
    )
    app.conf.update(celery_options(settings))
    return app


def celery_options(settings: Settings) -> dict[str, Any]:
    """Celery's configuration for the node's jobs (see the module docstring)."""
    jobs, queue = settings.jobs, settings.queue
    return {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": jobs.soft_time_limit_s,
        "task_time_limit": jobs.hard_time_limit_s,
        "broker_transport_options": {"visibility_timeout": queue.visibility_timeout_s},
        "task_queues": (Queue(GPU_QUEUE), Queue(IO_QUEUE)),
        "task_default_queue": GPU_QUEUE,
        "task_routes": {RUN_JOB: {"queue": GPU_QUEUE}},
        "broker_connection_retry_on_startup": True,
        # The node's dispatcher must not hang on a dead broker: fail fast, the reconciler resends.
        "task_publish_retry_policy": {
            "max_retries": 1,
            "interval_start": 0.2,
            "interval_step": 0.5,
        },
        "broker_connection_timeout": 2.0,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }
