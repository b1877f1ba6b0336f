"""Studies on SQLite: the sweeper completes a study only on evidence (every association
released and ``settle_s`` passed, or the quiet period, or the deadline), a late instance
reopens it, and each move is conditional and audited (``dicom_node.studies``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, select, update

from dicom_node.db.models import Association, Study, utcnow
from dicom_node.domain import AssociationEnd, IllegalTransitionError, StudyState
from dicom_node.storage.index import AssociationCache
from dicom_node.studies.policy import CompletionPolicy
from dicom_node.studies.sweeper import sweep_once
from dicom_node.studies.transitions import transition_study
from tests.rows import events, instance, make_intake, request, sqlite_index

POLICY = CompletionPolicy(quiet_period_s=60, settle_s=0, force_complete_after_s=3600)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return sqlite_index(tmp_path)


def receive(engine: Engine, root: Path, study_uid: str, association: str) -> None:
    intake = make_intake(engine, root)
    intake.index.association_started(
        association, calling_ae="CT1", called_ae="NODE", peer_host="127.0.0.1", peer_port=1,
        tls=False, pid=1,
    )  # fmt: skip
    req = replace(request(instance(StudyInstanceUID=study_uid)), association_id=association)
    intake.accept(req, AssociationCache())


def moves(engine: Engine, uid: str) -> list[tuple[str, dict[str, object]]]:
    """The study's completions and reopenings (its RECEIVING start is audited too)."""
    return [(e, d) for e, d in events(engine, uid) if e != "study.receiving"]


def state(engine: Engine, uid: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(Study.state).where(Study.study_uid == uid)).scalar_one())


def age(engine: Engine, seconds: float) -> None:
    """Everything the index holds happened ``seconds`` earlier."""
    then = timedelta(seconds=seconds)
    columns = {
        Study: ("first_received", "last_received", "opened_at"),
        Association: ("started_at", "ended_at"),
    }
    with engine.begin() as conn:
        for table, names in columns.items():
            for row in conn.execute(select(table.id, *(getattr(table, n) for n in names))):
                shifted = {n: v - then for n, v in zip(names, row[1:], strict=True) if v}
                conn.execute(update(table).where(table.id == row.id).values(**shifted))


def test_an_open_association_keeps_the_study_receiving(engine: Engine, tmp_path: Path) -> None:
    receive(engine, tmp_path / "s", "1.9.1", "a1")
    assert sweep_once(engine, POLICY) == []
    assert state(engine, "1.9.1") == "RECEIVING"


def test_released_and_settled_completes_with_its_jobs_in_the_same_step(
    engine: Engine, tmp_path: Path
) -> None:
    receive(engine, tmp_path / "s", "1.9.1", "a1")
    make_intake(engine, tmp_path / "s").index.association_ended("a1", AssociationEnd.RELEASED)
    made: list[str] = []

    def on_complete(conn: Connection, study_id: int, uid: str, at: datetime) -> None:
        assert conn.execute(select(Study.state).where(Study.id == study_id)).scalar() == "COMPLETE"
        made.append(uid)

    assert sweep_once(engine, POLICY, on_complete) == ["1.9.1"] == made
    assert sweep_once(engine, POLICY, on_complete) == []  # complete once
    [(event, details)] = moves(engine, "1.9.1")
    assert event == "study.completed" and details["reason"] == "settled after release"


def test_an_abort_is_no_evidence_the_quiet_period_is(engine: Engine, tmp_path: Path) -> None:
    receive(engine, tmp_path / "s", "1.9.1", "a1")
    make_intake(engine, tmp_path / "s").index.association_ended("a1", AssociationEnd.ABORTED)
    assert sweep_once(engine, POLICY) == []
    age(engine, 61)
    assert sweep_once(engine, POLICY) == ["1.9.1"]
    assert moves(engine, "1.9.1")[-1][1]["reason"] == "quiet period"


def test_a_late_instance_reopens_and_the_study_completes_again(
    engine: Engine, tmp_path: Path
) -> None:
    receive(engine, tmp_path / "s", "1.9.1", "a1")
    intake = make_intake(engine, tmp_path / "s")
    intake.index.association_ended("a1", AssociationEnd.RELEASED)
    sweep_once(engine, POLICY)
    receive(engine, tmp_path / "s", "1.9.1", "a2")
    assert state(engine, "1.9.1") == "REOPENED"
    intake.index.association_ended("a2", AssociationEnd.RELEASED)
    assert sweep_once(engine, POLICY) == ["1.9.1"]
    with engine.connect() as conn:
        times = conn.execute(select(Study.times_completed)).scalar_one()
    assert times == 2
    trail = [e for e, _ in moves(engine, "1.9.1")]
    assert trail == ["study.completed", "study.reopened", "study.completed"]


def test_a_stale_move_is_refused_and_an_unknown_one_raises(engine: Engine, tmp_path: Path) -> None:
    receive(engine, tmp_path / "s", "1.9.1", "a1")
    with engine.connect() as conn:
        study_id = conn.execute(select(Study.id)).scalar_one()
    with engine.begin() as conn:
        assert not transition_study(
            conn, study_id=study_id, study_uid="1.9.1", current=StudyState.REOPENED,
            target=StudyState.COMPLETE, at=utcnow(), reason="x",
        )  # fmt: skip
        with pytest.raises(IllegalTransitionError):
            transition_study(
                conn, study_id=study_id, study_uid="1.9.1", current=StudyState.RECEIVING,
                target=StudyState.REOPENED, at=utcnow(), reason="x",
            )  # fmt: skip
    assert moves(engine, "1.9.1") == []
