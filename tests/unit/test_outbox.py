"""The outbox and the destination circuit on SQLite (``dicom_node.export.outbox``): rows made
per destination and profile, claimed per job in send order, outcomes (delivered, retried with
the attempt kept or given back, failed), the job settled, resend, and the circuit opening,
backing off its probes and closing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from dicom_node.db.models import DestinationCircuit, Export, utcnow
from dicom_node.export import outbox
from dicom_node.export.scu import Outcome
from dicom_node.results import ObjectKind, ResultObject
from dicom_node.settings import DestinationSettings
from tests.rows import add_job, events, job, sqlite_index

PACS = DestinationSettings(
    name="pacs", ae_title="PACS", host="127.0.0.1", port=104, max_attempts=2,
    circuit_failures=2, circuit_probe_s=30, backoff_max_s=300,
)  # fmt: skip
VNA = DestinationSettings(name="vna", ae_title="VNA", host="127.0.0.1", port=105, profile="slim")


def obj(kind: ObjectKind, uid: str) -> ResultObject:
    return ResultObject(kind, f"/r/{kind}-{uid}.dcm", "1.2.840.10008.5.1.4.1.1.66.4", uid, "1.4")


OBJECTS = {
    "default": (obj(ObjectKind.SR, "9.2"), obj(ObjectKind.SEG, "9.1")),
    "slim": (obj(ObjectKind.SEG, "9.1"),),
}
OK = Outcome(True, False, 0, "Success")
BUSY = Outcome(False, True, 0xA700, "refused for now: 0xA700 (Out of Resources)")
LOST = Outcome(False, True, None, "association lost before sending", sent=False)
REFUSED = Outcome(False, False, 0xC000, "refused: 0xC000 (Error: Cannot understand)")


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = sqlite_index(tmp_path)
    add_job(engine, state="RESULTS_READY", attempts=1)
    with engine.begin() as conn:
        made = outbox.create_exports(
            conn, job_id="job-1", study_uid="1.2.3", destinations=[PACS, VNA],
            objects=OBJECTS, at=utcnow(),
        )  # fmt: skip
    assert len(made) == 3
    return engine


def rows(engine: Engine, destination: str = "pacs") -> list[Export]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(Export.__table__)
                .where(Export.destination == destination)
                .order_by(Export.kind)
            )
        )  # type: ignore[arg-type]


def send(engine: Engine, outcome: Outcome, destination: str = "pacs") -> list[str]:
    claimed = outbox.claim_batch(engine, destination, lease_s=60)
    with engine.begin() as conn:
        states = [str(outbox.record_outcome(conn, r, outcome, delay_s=10)) for r in claimed]
        outbox.settle_job(conn, "job-1")
    return states


def test_each_destination_gets_its_profile_objects_once(engine: Engine) -> None:
    assert [(r.kind, r.state) for r in rows(engine)] == [("seg", "PENDING"), ("sr", "PENDING")]
    assert [r.kind for r in rows(engine, "vna")] == ["seg"]
    with engine.begin() as conn:  # made again (a retried RESULTS_READY): nothing new
        again = outbox.create_exports(
            conn, job_id="job-1", study_uid="1.2.3", destinations=[PACS], objects=OBJECTS,
            at=utcnow(),
        )  # fmt: skip
    assert again == []


def test_a_batch_is_one_job_in_send_order_and_moves_the_job_to_exporting(engine: Engine) -> None:
    claimed = outbox.claim_batch(engine, "pacs", lease_s=60)
    assert [r.kind for r in claimed] == ["seg", "sr"]  # the SEG before the SR that cites it
    assert {r.state for r in rows(engine)} == {"SENDING"}
    assert job(engine, "job-1").state == "EXPORTING"
    assert outbox.claim_batch(engine, "pacs", lease_s=60) == []  # nothing due twice


def test_delivered_everywhere_settles_the_job_done(engine: Engine) -> None:
    assert send(engine, OK) == ["DELIVERED", "DELIVERED"]
    assert job(engine, "job-1").state == "EXPORTING"  # the VNA's row is still on its way
    send(engine, OK, "vna")
    assert job(engine, "job-1").state == "DONE"


def test_a_transient_refusal_waits_and_the_budget_then_fails_the_job(engine: Engine) -> None:
    assert send(engine, BUSY) == ["RETRY_WAIT", "RETRY_WAIT"]
    seg = rows(engine)[0]
    assert seg.attempts == 1 and seg.next_attempt_at > utcnow() + timedelta(seconds=5)
    assert outbox.claim_batch(engine, "pacs", lease_s=60) == []  # not due yet
    with engine.begin() as conn:
        conn.execute(Export.__table__.update().values(next_attempt_at=utcnow()))
    send(engine, OK, "vna")
    assert send(engine, BUSY) == ["FAILED", "FAILED"]  # max_attempts = 2
    assert "retry budget of 2 used" in (rows(engine)[0].last_error or "")
    final = job(engine, "job-1")
    assert final.state == "FAILED" and " to pacs failed: refused for now: 0xA700" in final.error


def test_an_object_never_sent_gives_its_attempt_back(engine: Engine) -> None:
    for _ in range(3):  # more than max_attempts: it was never on the wire
        assert send(engine, LOST) == ["RETRY_WAIT", "RETRY_WAIT"]
        with engine.begin() as conn:
            conn.execute(Export.__table__.update().values(next_attempt_at=utcnow()))
    assert [r.attempts for r in rows(engine)] == [0, 0]
    assert rows(engine)[0].last_error == "not sent: association lost before sending"


def test_a_permanent_refusal_fails_at_once_and_resend_starts_over(engine: Engine) -> None:
    assert send(engine, REFUSED) == ["FAILED", "FAILED"]
    send(engine, OK, "vna")
    assert job(engine, "job-1").state == "FAILED"
    seg_id = rows(engine)[0].id
    assert outbox.resend(engine, export_id=seg_id, actor="ada") == [seg_id]
    again = rows(engine)[0]
    assert (again.state, again.attempts, again.last_error) == ("PENDING", 0, None)
    assert job(engine, "job-1").state == "EXPORTING"
    assert events(engine, seg_id)[-1][0] == "export.resend"
    assert outbox.resend(engine, export_id=seg_id) == []  # PENDING: nothing to resend


def test_a_dead_exporter_s_rows_wait_for_a_retry(engine: Engine) -> None:
    outbox.claim_batch(engine, "pacs", lease_s=-1)  # a lease already over: the sender died
    assert len(outbox.expire_sending(engine, "pacs")) == 2
    assert {r.state for r in rows(engine)} == {"RETRY_WAIT"}


def circuit_row(engine: Engine) -> DestinationCircuit:
    return outbox.circuit(engine, "pacs")


def test_the_circuit_opens_after_its_failures_backs_off_its_probes_and_closes(
    engine: Engine,
) -> None:
    assert circuit_row(engine).state == "CLOSED"
    assert not outbox.association_failed(engine, PACS, "connection refused")
    assert outbox.association_failed(engine, PACS, "connection refused")
    opened = circuit_row(engine)
    assert opened.state == "OPEN" and opened.probe_at > utcnow() + timedelta(seconds=25)
    delays = []
    for _ in range(4):
        before = utcnow()
        outbox.probe_result(engine, PACS, "C-ECHO failed: no response")
        delays.append((circuit_row(engine).probe_at - before).total_seconds())
    assert delays == sorted(delays) and delays[-1] <= PACS.backoff_max_s + 1
    send(engine, BUSY)  # rows waiting behind the open circuit
    outbox.probe_result(engine, PACS, "")
    closed = circuit_row(engine)
    assert (closed.state, closed.failures, closed.probe_at) == ("CLOSED", 0, None)
    assert all(r.next_attempt_at <= utcnow() for r in rows(engine))  # due at once
    kinds = [e for e, _ in events(engine, "pacs")]
    assert kinds[0] == "destination.circuit_opened" and kinds[-1] == "destination.circuit_closed"


def test_a_good_association_clears_the_failure_count(engine: Engine) -> None:
    circuit_row(engine)  # the sender makes its destination's row when it starts
    outbox.association_failed(engine, PACS, "timeout")
    outbox.association_ok(engine, "pacs")
    assert circuit_row(engine).failures == 0
    assert not outbox.association_failed(engine, PACS, "timeout")  # counting from zero again
