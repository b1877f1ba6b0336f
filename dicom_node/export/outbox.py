"""The export outbox: one row per (result object, destination), moved only through
``EXPORT_TRANSITIONS``, each move one conditional UPDATE plus its audit event.

Rows are made in the transaction that makes the job RESULTS_READY, so results are never ready
without their exports, nor exports queued for results that do not exist. A row ends DELIVERED,
or FAILED and visible with its last error; an admin's resend puts it back to PENDING.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, or_, select, update

from dicom_node.audit.recorder import AuditEventType, record, record_transition
from dicom_node.db.models import DestinationCircuit, Export, Job, utcnow
from dicom_node.db.session import insert_ignore
from dicom_node.domain import (
    EXPORT_FINAL,
    EXPORT_TRANSITIONS,
    CircuitState,
    ExportState,
    JobState,
    check_transition,
)
from dicom_node.export.scu import Outcome
from dicom_node.jobs.service import transition_job
from dicom_node.results import ResultObject
from dicom_node.settings import DestinationSettings

# an SR after the SEG it references, a Key Object Selection after the images it selects
KIND_ORDER = {"seg": 0, "pm": 1, "sr": 2, "sc": 3, "kos": 4}
_AUDIT = {
    ExportState.PENDING: AuditEventType.EXPORT_PENDING,
    ExportState.SENDING: AuditEventType.EXPORT_SENDING,
    ExportState.DELIVERED: AuditEventType.EXPORT_DELIVERED,
    ExportState.RETRY_WAIT: AuditEventType.EXPORT_RETRY_WAIT,
    ExportState.FAILED: AuditEventType.EXPORT_FAILED,
}


def backoff_s(dest: DestinationSettings, attempts: int, jitter: float) -> float:
    """Exponential backoff with jitter: initial x 2^(attempts-1), capped, x U(1-j, 1+j)."""
    base = min(dest.backoff_max_s, dest.backoff_initial_s * 2 ** max(0, attempts - 1))
    return float(base * random.uniform(1 - jitter, 1 + jitter))  # noqa: S311 - not cryptographic


def create_exports(
    conn: Connection,
    *,
    job_id: str,
    study_uid: str,
    destinations: Sequence[DestinationSettings],
    objects: Mapping[str, Sequence[ResultObject]],
    at: datetime,
    reason: str = "results ready",
    actor: str = "system",
) -> list[str]:
    """PENDING rows for each destination x each object of its profile (in the caller's
    transaction: ``jobs.service.results_ready``, or ``send_kept``). A row the job already has
    for that destination and object is left as it is."""
    made = []
    for dest in destinations:
        for obj in objects.get(dest.profile, ()):
            export_id = str(uuid.uuid4())
            values = {
                "id": export_id,
                "job_id": job_id,
                "study_uid": study_uid,
                "destination": dest.name,
                "kind": str(obj.kind),
                "sop_class_uid": obj.sop_class_uid,
                "sop_instance_uid": obj.sop_instance_uid,
                "path": obj.path,
                "state": str(ExportState.PENDING),
                "attempts": 0,
                "max_attempts": dest.max_attempts,
                "next_attempt_at": at,
                "created_at": at,
            }
            if insert_ignore(conn, Export, values):
                _audit(
                    conn,
                    export_id,
                    study_uid=study_uid,
                    current=None,
                    target=ExportState.PENDING,
                    at=at,
                    reason=reason,
                    actor=actor,
                    details={
                        "destination": dest.name,
                        "kind": str(obj.kind),
                        "sop_instance_uid": obj.sop_instance_uid,
                        "job_id": job_id,
                    },
                )
                made.append(export_id)
    return made


def _audit(
    conn: Connection,
    export_id: str,
    *,
    study_uid: str,
    current: ExportState | None,
    target: ExportState,
    at: datetime,
    reason: str,
    actor: str = "system",
    details: dict[str, Any] | None = None,
    event: AuditEventType | None = None,
) -> None:
    record_transition(
        conn,
        event or _AUDIT[target],
        ("export", export_id),
        study_uid=study_uid,
        current=current,
        target=target,
        at=at,
        reason=reason,
        actor=actor,
        details=details,
    )


def transition_export(
    conn: Connection,
    export_id: str,
    current: ExportState,
    target: ExportState,
    *,
    at: datetime,
    reason: str,
    values: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
    actor: str = "system",
    event: AuditEventType | None = None,
) -> bool:
    """Move one outbox row from ``current`` to ``target`` if it is still there, audited; ``False``
    if not."""
    check_transition(EXPORT_TRANSITIONS, current, target)
    row = conn.execute(
        update(Export)
        .where(Export.id == export_id, Export.state == str(current))
        .values(state=str(target), **(values or {}))
        .returning(Export.study_uid, Export.destination, Export.attempts)
    ).first()
    if row is None:
        return False
    _audit(
        conn,
        export_id,
        study_uid=row.study_uid,
        current=current,
        target=target,
        at=at,
        reason=reason,
        actor=actor,
        details={"destination": row.destination, "attempt": row.attempts, **(details or {})},
        event=event,
    )
    return True


def expire_sending(engine: Engine, destination: str) -> list[str]:
    """SENDING rows whose exporter died (lease over) wait for a retry; nothing stays stuck."""
    now = utcnow()
    with engine.begin() as conn:
        rows = (
            conn.execute(
                select(Export.id).where(
                    Export.destination == destination,
                    Export.state == str(ExportState.SENDING),
                    Export.lease_expires_at < now,
                )
            )
            .scalars()
            .all()
        )
        for export_id in rows:
            transition_export(
                conn,
                export_id,
                ExportState.SENDING,
                ExportState.RETRY_WAIT,
                at=now,
                reason="exporter lost while sending",
                values={"next_attempt_at": now, "lease_expires_at": None},
            )
    return list(rows)


def claim_batch(engine: Engine, destination: str, lease_s: float) -> list[Export]:
    """The due rows of one job for ``destination``, moved to SENDING (attempt + 1), in send
    order; the job goes RESULTS_READY -> EXPORTING with its first claimed row."""
    now = utcnow()
    due = or_(
        Export.state == str(ExportState.PENDING),
        and_(Export.state == str(ExportState.RETRY_WAIT), Export.next_attempt_at <= now),
    )
    with engine.begin() as conn:
        first = conn.execute(
            select(Export.job_id)
            .where(Export.destination == destination, due)
            .order_by(Export.next_attempt_at, Export.created_at)
            .limit(1)
        ).scalar()
        if first is None:
            return []
        rows: Sequence[Export] = conn.execute(  # type: ignore[assignment]  # Rows
            select(Export.__table__).where(
                Export.destination == destination, Export.job_id == first, due
            )
        ).all()
        claimed = []
        for row in sorted(rows, key=lambda r: KIND_ORDER.get(r.kind, 9)):
            moved = transition_export(
                conn,
                row.id,
                ExportState(row.state),
                ExportState.SENDING,
                at=now,
                reason="sending",
                values={
                    "attempts": Export.attempts + 1,
                    "lease_expires_at": now + timedelta(seconds=lease_s),
                },
            )
            if moved:
                claimed.append(row)
        transition_job(
            conn,
            first,
            JobState.RESULTS_READY,
            JobState.EXPORTING,
            at=now,
            reason=f"sending to {destination}",
        )
    return claimed


def record_outcome(
    conn: Connection,
    row: Export,
    outcome: Outcome,
    *,
    delay_s: float,
) -> ExportState:
    """Move a SENDING row to DELIVERED, RETRY_WAIT (``delay_s`` from now) or FAILED. The caller
    computes one backoff for the whole batch, so a job's objects stay on one association."""
    now = utcnow()
    status, message, warning = outcome.status, outcome.message, outcome.warning
    delivered, transient = outcome.delivered, outcome.transient
    attempts = row.attempts + 1  # the claim added one; ``row`` was read before it
    base = {"lease_expires_at": None, "last_status": status}
    if delivered:
        transition_export(
            conn,
            row.id,
            ExportState.SENDING,
            ExportState.DELIVERED,
            at=now,
            reason=message,
            values={**base, "delivered_at": now, "warning": warning, "last_error": None},
            details={"status": status, "warning": warning},
        )
        return ExportState.DELIVERED
    if not outcome.sent or (transient and attempts < row.max_attempts):
        # never put on the wire (no association, or it was lost before this object's turn):
        # the claim's attempt is given back, so a destination that hangs on one object does
        # not use up the budget of the objects queued behind it
        reason = message if outcome.sent else f"not sent: {message}"
        at = now + timedelta(seconds=delay_s)
        values = {**base, "next_attempt_at": at, "last_error": reason[:1024]}
        if not outcome.sent:
            values["attempts"] = row.attempts
        transition_export(
            conn,
            row.id,
            ExportState.SENDING,
            ExportState.RETRY_WAIT,
            at=now,
            reason=reason,
            values=values,
            details={
                "status": status,
                **({} if outcome.sent else {"sent": False}),
                "delay_s": round(delay_s, 2),
                "next_attempt_at": at.isoformat(),
            },
        )
        return ExportState.RETRY_WAIT
    why = message if not transient else f"{message} (retry budget of {row.max_attempts} used)"
    transition_export(
        conn,
        row.id,
        ExportState.SENDING,
        ExportState.FAILED,
        at=now,
        reason=why,
        values={**base, "last_error": why[:1024]},
        details={"status": status},
    )
    return ExportState.FAILED


def settle_job(conn: Connection, job_id: str) -> JobState | None:
    """EXPORTING -> DONE once every export is DELIVERED, -> FAILED once all are final and one
    FAILED (the message names it). ``None`` while some are still on their way."""
    rows = conn.execute(
        select(Export.state, Export.kind, Export.destination, Export.last_error).where(
            Export.job_id == job_id
        )
    ).all()
    if not rows or any(ExportState(r.state) not in EXPORT_FINAL for r in rows):
        return None
    now = utcnow()
    failed = [r for r in rows if r.state == str(ExportState.FAILED)]
    if not failed:
        transition_job(
            conn,
            job_id,
            JobState.EXPORTING,
            JobState.DONE,
            at=now,
            reason=f"{len(rows)} objects delivered",
        )
        return JobState.DONE
    first = failed[0]
    error = f"export of {first.kind.upper()} to {first.destination} failed: {first.last_error}"
    transition_job(
        conn,
        job_id,
        JobState.EXPORTING,
        JobState.FAILED,
        at=now,
        reason=error,
        values={"error": error[:1024]},
    )
    return JobState.FAILED


def settle_exporting(engine: Engine) -> list[str]:
    """Settle EXPORTING jobs whose rows are all final. Two senders finishing one job's rows at
    once under READ COMMITTED can each see the other's row still SENDING; this pass catches it."""
    final = [str(s) for s in EXPORT_FINAL]
    open_rows = select(Export.id).where(Export.job_id == Job.id, Export.state.not_in(final))
    with engine.begin() as conn:
        jobs = (
            conn.execute(
                select(Job.id).where(Job.state == str(JobState.EXPORTING), ~open_rows.exists())
            )
            .scalars()
            .all()
        )
        return [job_id for job_id in jobs if settle_job(conn, job_id) is not None]


def resend(
    engine: Engine,
    *,
    export_id: str | None = None,
    job_id: str | None = None,
    actor: str = "admin",
) -> list[str]:
    """DELIVERED or FAILED rows back to PENDING (attempts from zero); their job to EXPORTING."""
    now = utcnow()
    with engine.begin() as conn:
        query = select(Export.id, Export.state, Export.job_id).where(
            Export.state.in_([str(s) for s in EXPORT_FINAL])
        )
        query = (
            query.where(Export.id == export_id)
            if export_id
            else query.where(Export.job_id == job_id)
        )
        rows = conn.execute(query).all()
        moved = []
        for row in rows:
            if transition_export(
                conn,
                row.id,
                ExportState(row.state),
                ExportState.PENDING,
                at=now,
                reason=f"resend by {actor}",
                actor=actor,
                event=AuditEventType.EXPORT_RESEND,
                values={
                    "attempts": 0,
                    "next_attempt_at": now,
                    "last_error": None,
                    "delivered_at": None,
                },
            ):
                moved.append(row.id)
        for jid in {row.job_id for row in rows}:
            _exporting_again(conn, jid, at=now, reason=f"resend by {actor}", actor=actor)
    return moved


def _exporting_again(
    conn: Connection, job_id: str, *, at: datetime, reason: str, actor: str
) -> None:
    """A DONE or FAILED job back to EXPORTING: it has rows to send again (resend, send_kept)."""
    state = conn.execute(select(Job.state).where(Job.id == job_id)).scalar_one()
    if state in (JobState.DONE, JobState.FAILED):
        transition_job(
            conn,
            job_id,
            JobState(state),
            JobState.EXPORTING,
            at=at,
            reason=reason,
            actor=actor,
            values={"error": None},
        )


def send_kept(
    engine: Engine,
    *,
    job_id: str,
    study_uid: str,
    dest: DestinationSettings,
    objects: Sequence[ResultObject],
    actor: str,
) -> list[str]:
    """Rows for results kept on the node (no destination then, or one added since): PENDING
    for ``dest``, and the job, DONE or FAILED, back to EXPORTING until they are sent."""
    now = utcnow()
    with engine.begin() as conn:
        made = create_exports(
            conn,
            job_id=job_id,
            study_uid=study_uid,
            destinations=[dest],
            objects={dest.profile: objects},
            at=now,
            reason=f"sent to {dest.name} by {actor}",
            actor=actor,
        )
        if made:
            reason = f"sent to {dest.name} by {actor}"
            _exporting_again(conn, job_id, at=now, reason=reason, actor=actor)
    return made


# --- the destination's circuit ------------------------------------------------------------


def circuit(engine: Engine, destination: str) -> DestinationCircuit:
    """The destination's circuit row (made CLOSED when it has none)."""
    with engine.begin() as conn:
        insert_ignore(
            conn,
            DestinationCircuit,
            {"destination": destination, "state": str(CircuitState.CLOSED), "failures": 0},
        )
        return conn.execute(  # type: ignore[return-value]  # a Row with its columns
            select(DestinationCircuit.__table__).where(
                DestinationCircuit.destination == destination
            )
        ).one()


def association_failed(engine: Engine, dest: DestinationSettings, error: str) -> bool:
    """Count a failed association; open the circuit at ``circuit_failures``. True if opened."""
    now = utcnow()
    with engine.begin() as conn:
        row = conn.execute(
            update(DestinationCircuit)
            .where(DestinationCircuit.destination == dest.name)
            .values(failures=DestinationCircuit.failures + 1, last_error=error[:1024])
            .returning(DestinationCircuit.failures, DestinationCircuit.state)
        ).one()
        if row.state == str(CircuitState.CLOSED) and row.failures >= dest.circuit_failures:
            probe_at = now + timedelta(seconds=dest.circuit_probe_s)
            conn.execute(
                update(DestinationCircuit)
                .where(DestinationCircuit.destination == dest.name)
                .values(state=str(CircuitState.OPEN), opened_at=now, probe_at=probe_at)
            )
            record(
                conn,
                AuditEventType.DESTINATION_CIRCUIT_OPENED,
                entity_type="destination",
                entity_id=dest.name,
                at=now,
                details={
                    "failures": row.failures,
                    "error": error[:300],
                    "probe_at": probe_at.isoformat(),
                },
            )
            return True
    return False


def association_ok(engine: Engine, destination: str) -> None:
    """An association worked: the destination's failure count starts again."""
    with engine.begin() as conn:
        conn.execute(
            update(DestinationCircuit)
            .where(DestinationCircuit.destination == destination, DestinationCircuit.failures > 0)
            .values(failures=0, last_error=None)
        )


def probe_result(engine: Engine, dest: DestinationSettings, error: str) -> None:
    """After a C-ECHO probe of an OPEN circuit: close it (and make its waiting rows due now),
    or schedule the next probe."""
    now = utcnow()
    with engine.begin() as conn:
        if error:
            failures = conn.execute(
                update(DestinationCircuit)
                .where(DestinationCircuit.destination == dest.name)
                .values(failures=DestinationCircuit.failures + 1, last_error=error[:1024])
                .returning(DestinationCircuit.failures)
            ).scalar_one()
            # probes back off as sends do, so a PACS down for a day is not probed every 30 s
            extra = max(0, failures - dest.circuit_failures)
            delay = min(
                max(dest.backoff_max_s, dest.circuit_probe_s), dest.circuit_probe_s * 2**extra
            )
            probe_at = now + timedelta(seconds=delay)
            conn.execute(
                update(DestinationCircuit)
                .where(DestinationCircuit.destination == dest.name)
                .values(probe_at=probe_at)
            )
            record(
                conn,
                AuditEventType.DESTINATION_PROBE_FAILED,
                entity_type="destination",
                entity_id=dest.name,
                at=now,
                details={"error": error[:300], "probe_at": probe_at.isoformat()},
            )
            return
        conn.execute(
            update(DestinationCircuit)
            .where(DestinationCircuit.destination == dest.name)
            .values(state=str(CircuitState.CLOSED), failures=0, probe_at=None, last_error=None)
        )
        due = (
            conn.execute(
                update(Export)
                .where(Export.destination == dest.name, Export.state == str(ExportState.RETRY_WAIT))
                .values(next_attempt_at=now)
                .returning(Export.id)
            )
            .scalars()
            .all()
        )
        record(
            conn,
            AuditEventType.DESTINATION_CIRCUIT_CLOSED,
            entity_type="destination",
            entity_id=dest.name,
            at=now,
            details={"probe": "C-ECHO Success", "rows_due_now": len(due)},
        )
