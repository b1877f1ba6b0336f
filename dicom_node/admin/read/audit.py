"""The audit log: filtered, newest first, and as CSV a spreadsheet will not run."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Engine, and_, func, select

from dicom_node.admin.read.common import day_start, iso
from dicom_node.db.models import AuditEvent


@dataclass(frozen=True, slots=True)
class AuditFilter:
    event_type: str | None = None  # exact, or a prefix ending in "." ("job.")
    actor: str | None = None
    study_uid: str | None = None
    since: date | None = None
    until: date | None = None  # inclusive
    limit: int = 500
    offset: int = 0  # paging: newest first, skip this many

    def where(self) -> list[Any]:
        clauses: list[Any] = []
        if self.event_type:
            if self.event_type.endswith("."):
                clauses.append(AuditEvent.event_type.startswith(self.event_type))
            else:
                clauses.append(AuditEvent.event_type == self.event_type)
        if self.actor:
            clauses.append(AuditEvent.actor == self.actor)
        if self.study_uid:
            clauses.append(AuditEvent.study_uid == self.study_uid)
        if self.since:
            clauses.append(AuditEvent.at >= day_start(self.since))
        if self.until:
            clauses.append(AuditEvent.at < day_start(self.until) + timedelta(days=1))
        return clauses


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: str | None
    event: str
    actor: str
    entity_type: str | None
    entity_id: str | None
    details: dict[str, Any] | None
    study_uid: str | None


def audit(engine: Engine, flt: AuditFilter) -> list[AuditRow]:
    stmt = (
        select(AuditEvent.__table__)
        .where(and_(True, *flt.where()))
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        .limit(flt.limit)
        .offset(flt.offset)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [
        AuditRow(
            e.id,
            iso(e.at),
            e.event_type,
            e.actor,
            e.entity_type,
            e.entity_id,
            e.details,
            e.study_uid,
        )
        for e in rows
    ]


def count(engine: Engine, flt: AuditFilter) -> int:
    """How many events the filter matches (all pages)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(AuditEvent).where(and_(True, *flt.where()))
            ).scalar_one()
        )


def event_types(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(AuditEvent.event_type).distinct()).scalars())


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = ("id", "at", "event", "actor", "study_uid", "entity_type", "entity_id", "details")


def csv_cell(value: object) -> str:
    """A cell a spreadsheet will not run (OWASP CSV injection): text that starts like a formula
    gets a leading apostrophe. User-typed values reach the audit log (a failed login's name)."""
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def audit_csv(rows: list[AuditRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        details = json.dumps(r.details, sort_keys=True)
        writer.writerow(
            csv_cell(v)
            for v in (
                r.id,
                r.at,
                r.event,
                r.actor,
                r.study_uid,
                r.entity_type,
                r.entity_id,
                details,
            )
        )
    return buf.getvalue()
