"""Per destination: the outbox rows by state and the circuit breaker."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import Engine, func, select

from dicom_node.admin.read.common import iso
from dicom_node.db.models import DestinationCircuit, Export
from dicom_node.settings import Settings


@dataclass(frozen=True, slots=True)
class CircuitRow:
    destination: str
    circuit: str  # CLOSED, OPEN or HALF_OPEN
    failures: int
    opened_at: str | None
    probe_at: str | None
    last_error: str | None


def circuits(engine: Engine) -> list[CircuitRow]:
    with engine.connect() as conn:
        rows = conn.execute(select(DestinationCircuit.__table__)).all()
    return [
        CircuitRow(
            r.destination, r.state, r.failures, iso(r.opened_at), iso(r.probe_at), r.last_error
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class DestinationRow:
    destination: str
    configured: bool  # named in the config (else only rows of an older config name it)
    address: str | None
    tls: bool
    profile: str | None  # the result profile sent there
    states: dict[str, int]
    circuit: str
    failures: int
    circuit_last_error: str | None
    probe_at: str | None


def destinations(engine: Engine, settings: Settings) -> list[DestinationRow]:
    """Every configured destination, then any other name the outbox holds."""
    by_name = {c.destination: c for c in circuits(engine)}
    with engine.connect() as conn:
        counts = conn.execute(
            select(Export.destination, Export.state, func.count()).group_by(
                Export.destination, Export.state
            )
        ).all()
    by_dest: dict[str, dict[str, int]] = defaultdict(dict)
    for name, state, n in counts:
        by_dest[name][state] = n
    configured = [d.name for d in settings.destinations]
    out = []
    for name in configured + sorted(set(by_dest) - set(configured)):
        dest = settings.destination(name)
        circuit = by_name.get(name)
        out.append(
            DestinationRow(
                destination=name,
                configured=dest is not None,
                address=f"{dest.ae_title}@{dest.host}:{dest.port}" if dest else None,
                tls=bool(dest and dest.tls),
                profile=dest.profile if dest else None,
                states=by_dest.get(name, {}),
                circuit=circuit.circuit if circuit else "CLOSED",
                failures=circuit.failures if circuit else 0,
                circuit_last_error=circuit.last_error if circuit else None,
                probe_at=circuit.probe_at if circuit else None,
            )
        )
    return out
