"""audit_events is append-only, enforced by the database itself (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import delete, update
from sqlalchemy.exc import DBAPIError

from dicom_node.audit.recorder import AuditEventType, record
from dicom_node.db.migrate import upgrade
from dicom_node.db.models import AuditEvent
from dicom_node.db.session import make_engine


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_audit_events_refuse_update_and_delete(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'a.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        record(conn, AuditEventType.STUDY_COMPLETED, study_uid="1.2.3", details={"reason": "x"})
    for stmt in (update(AuditEvent).values(actor="someone else"), delete(AuditEvent)):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(stmt)
    engine.dispose()
