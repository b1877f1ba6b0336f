"""The same index on PostgreSQL (``postgresql+psycopg://``), against the local server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, inspect, select

from dicom_node import statuses
from dicom_node.db.migrate import upgrade
from dicom_node.db.models import AuditEvent, Instance
from tests.helpers import (
    RunningNode,
    fresh_series,
    node_settings,
    send_datasets,
    start_node,
    wait_for,
)


@pytest.fixture
def pg_node(tmp_path: Path, pg_url: str) -> Iterator[RunningNode]:
    node = start_node(node_settings(tmp_path, db_url=pg_url))
    yield node
    node.stop()


def test_migrations_create_the_schema(pg_url: str) -> None:
    upgrade(pg_url)
    upgrade(pg_url)  # idempotent
    engine = create_engine(pg_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {
        "patients",
        "studies",
        "series",
        "instances",
        "associations",
        "study_associations",
        "audit_events",
        "alembic_version",
    } <= tables


def test_receive_complete_reopen_on_postgres(pg_node: RunningNode, ct_slice: Path) -> None:
    uid = generate_uid()
    first = fresh_series(ct_slice, 5, study_uid=uid)
    assert send_datasets(pg_node.port, [*first, first[0]]) == [statuses.SUCCESS] * 6
    wait_for(lambda: pg_node.study(uid)["state"] == "COMPLETE", 5, "complete on PostgreSQL")
    send_datasets(pg_node.port, fresh_series(ct_slice, 2, study_uid=uid))
    wait_for(lambda: pg_node.study(uid)["times_completed"] == 2, 5, "completed again")
    study = pg_node.study(uid)
    assert (study["series"], study["instances"]) == (2, 7)
    with pg_node.engine.connect() as conn:
        events = list(
            conn.execute(
                select(AuditEvent.event_type)
                .where(AuditEvent.study_uid == uid)
                .order_by(AuditEvent.id)
            ).scalars()
        )
        dup = conn.execute(
            select(Instance.duplicates_received).where(
                Instance.sop_instance_uid == first[0].SOPInstanceUID
            )
        ).scalar_one()
    assert events == [
        "study.receiving",
        "instance.duplicate",
        "study.completed",
        "study.reopened",
        "study.completed",
    ]
    assert dup == 1


def test_concurrent_associations_on_postgres(pg_node: RunningNode, ct_slice: Path) -> None:
    """Four senders into one study at once: one study row, every instance indexed once."""
    import concurrent.futures  # noqa: PLC0415

    uid = generate_uid()
    batches = [fresh_series(ct_slice, 5, study_uid=uid) for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda b: send_datasets(pg_node.port, b), batches))
    assert all(set(r) == {statuses.SUCCESS} for r in results)
    wait_for(lambda: pg_node.study(uid)["state"] == "COMPLETE", 5, "complete")
    assert (pg_node.study(uid)["series"], pg_node.study(uid)["instances"]) == (4, 20)
