"""The reconciler: the one loop that makes queued jobs reach a worker, whatever was lost.

Every ``reconcile_interval_s`` (and right after a study completes, when the sweeper wakes it):

1. RUNNING jobs past their lease go back to QUEUED, or FAILED once their attempts are used up;
2. with a broker, QUEUED jobs never sent, or sent ``unclaimed_after_s`` ago and still unclaimed,
   are published (job id only) and stamped ``enqueued_at``. It reads only committed rows, so a
   job is never enqueued before the transaction that made it. A dead broker is logged and the
   same jobs are tried again next pass: nothing is lost while Redis is down or flushed.

In embedded mode there is no publishing: the worker processes take QUEUED rows themselves.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine

from dicom_node.errors import Transient
from dicom_node.jobs.service import due_for_enqueue, expire_leases, mark_enqueued
from dicom_node.logs import get_logger
from dicom_node.loops import Loop
from dicom_node.settings import Settings

log = get_logger(__name__)

Publish = Callable[[str], None]


class BrokerUnavailableError(Transient):
    """The job could not be published; it stays QUEUED and the next pass tries again."""


class Dispatcher(Loop):
    def __init__(self, engine: Engine, settings: Settings, publish: Publish | None) -> None:
        super().__init__(
            "job-dispatcher",
            self.pass_once,
            settings.queue.reconcile_interval_s,
            event="reconcile_failed",
        )
        self.engine = engine
        self.settings = settings
        self.publish = publish
        self._broker_down = False

    def pass_once(self) -> list[str]:
        """Requeue expired leases, then publish what is due; the job ids sent."""
        requeued = expire_leases(self.engine)
        if requeued:
            log.warning("jobs_requeued_after_lease", jobs=requeued)
        if self.publish is None:
            return []
        sent: list[str] = []
        for job_id in due_for_enqueue(
            self.engine, unclaimed_after_s=self.settings.queue.unclaimed_after_s
        ):
            try:
                self.publish(job_id)
            except BrokerUnavailableError as exc:
                if not self._broker_down:
                    log.error("broker_unavailable", error=str(exc)[:300])
                self._broker_down = True
                break
            sent.append(job_id)
        mark_enqueued(self.engine, sent)
        if sent:
            if self._broker_down:
                log.info("broker_available_again")
            self._broker_down = False
            log.info("jobs_enqueued", jobs=sent)
        return sent


def celery_publisher(settings: Settings) -> Publish:
    """A publisher of job ids to the Celery queue; ``BrokerUnavailableError`` when the broker is
    down (the reconciler sends again)."""
    from kombu.exceptions import KombuError  # noqa: PLC0415
    from redis.exceptions import RedisError  # noqa: PLC0415

    from dicom_node.jobs.celery_config import GPU_QUEUE, RUN_JOB, make_celery  # noqa: PLC0415

    app = make_celery(settings)

    def publish(job_id: str) -> None:
        try:
            app.send_task(RUN_JOB, args=[job_id], queue=GPU_QUEUE)
        except (KombuError, RedisError, OSError) as exc:  # a dead broker, as kombu and redis say it
            raise BrokerUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    return publish
