"""The exporter: one thread per destination empties that destination's outbox rows.

Each pass: rows whose sender died go back to RETRY_WAIT; an OPEN circuit is probed with C-ECHO
when its probe is due (and sends nothing until a probe succeeds); otherwise the due rows of one
job are claimed and sent on one association, and each outcome recorded. Because every move is a
conditional UPDATE, several nodes may run exporters against one PostgreSQL index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine

from dicom_node.db.models import Export, utcnow
from dicom_node.domain import CircuitState, ExportState
from dicom_node.export import outbox
from dicom_node.export.scu import AssociationFailedError, Outcome, echo, store
from dicom_node.logs import get_logger
from dicom_node.loops import Loop
from dicom_node.settings import DestinationSettings, Settings

log = get_logger(__name__)


class DestinationSender(Loop):
    def __init__(self, engine: Engine, settings: Settings, dest: DestinationSettings) -> None:
        super().__init__(
            f"export-{dest.name}",
            self.pass_once,
            settings.export.poll_interval_s,
            event="export_pass_failed",
            destination=dest.name,
        )
        self.engine, self.settings, self.dest = engine, settings, dest
        self.calling_ae = dest.calling_ae or settings.node.ae_title

    def pass_once(self) -> bool:
        """One step; True if it sent something (so the next step comes at once)."""
        outbox.expire_sending(self.engine, self.dest.name)
        state = outbox.circuit(self.engine, self.dest.name)
        if state.state == str(CircuitState.OPEN):
            if state.probe_at is not None and utcnow() < state.probe_at:
                return False
            error = echo(self.dest, self.calling_ae, probe=True)
            outbox.probe_result(self.engine, self.dest, error)
            log.info("destination_probed", destination=self.dest.name, ok=not error, error=error)
            return False
        batch = outbox.claim_batch(self.engine, self.dest.name, self.settings.export.lease_s)
        if not batch:
            outbox.settle_exporting(self.engine)
            return False
        self.send(batch)
        return True

    def send(self, batch: Sequence[Export]) -> None:
        """C-STORE one job's claimed rows on one association and record each outcome."""
        job_id = batch[0].job_id
        failure = ""
        outcomes: dict[str, Outcome] = {
            row.id: Outcome(False, False, None, f"result file missing: {row.path}")
            for row in batch
            if not Path(row.path).is_file()
        }
        present = [row for row in batch if row.id not in outcomes]
        if present:
            try:
                sent = store(
                    self.dest, self.calling_ae, [(Path(r.path), r.sop_class_uid) for r in present]
                )
            except AssociationFailedError as exc:
                failure = str(exc)
                sent = [Outcome(False, True, None, failure, sent=False) for _ in present]
            outcomes.update(zip((r.id for r in present), sent, strict=True))
        attempt = max(row.attempts for row in batch) + 1  # rows were read before the claim
        if failure:  # nothing was sent: back off by the destination's run of failures instead
            attempt = max(attempt, outbox.circuit(self.engine, self.dest.name).failures + 1)
        delay = outbox.backoff_s(self.dest, attempt, self.settings.export.jitter)
        with self.engine.begin() as conn:
            states = [
                outbox.record_outcome(conn, row, outcomes[row.id], delay_s=delay) for row in batch
            ]
            job_state = outbox.settle_job(conn, job_id)
        if failure:
            opened = outbox.association_failed(self.engine, self.dest, failure)
            log.warning(
                "export_association_failed",
                destination=self.dest.name,
                job_id=job_id,
                error=failure,
                circuit_opened=opened,
            )
        else:
            outbox.association_ok(self.engine, self.dest.name)
        log.info(
            "export_sent",
            destination=self.dest.name,
            job_id=job_id,
            study_uid=batch[0].study_uid,
            outcomes=[f"{row.kind}:{s}" for row, s in zip(batch, states, strict=True)],
            job_state=job_state and str(job_state),
            delivered=sum(s is ExportState.DELIVERED for s in states),
        )


class Exporter:
    """All destinations' senders."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.senders = [DestinationSender(engine, settings, d) for d in settings.destinations]

    def start(self) -> None:
        """Start every destination's sender."""
        for sender in self.senders:
            sender.start()

    def wake(self) -> None:
        """Have every sender look at its outbox now."""
        for sender in self.senders:
            sender.wake()

    def stop(self) -> None:
        """Stop every sender and wait for them."""
        for sender in self.senders:
            sender.stop()
        for sender in self.senders:
            sender.join(timeout=10)
