"""One SCP process's wiring (``dicom_node.receive.scp.build_scp``) served from a thread of the
test, with real pynetdicom SCUs on loopback: C-ECHO, a C-STORE of a real slice stored and
indexed, an unknown calling AE rejected, and TLS off unless a certificate is configured. The
index migrations (``dicom_node.db.migrate``) run twice without change, and the one
dialect-aware statement (``insert_ignore``) answers alike on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, func, inspect, select

from dicom_node.db.migrate import alembic_config, upgrade
from dicom_node.db.models import DestinationCircuit, Instance
from dicom_node.db.session import insert_ignore, make_engine
from dicom_node.receive import handlers
from dicom_node.receive.echo import c_echo
from dicom_node.receive.scp import Scp, build_scp
from dicom_node.receive.tls import server_context
from dicom_node.settings import SecuritySettings
from tests.helpers import NODE_AE, node_settings, send_datasets, wait_for
from tests.rows import sqlite_index


@contextmanager
def serving(tmp_path: Path, **sections: object) -> Iterator[Scp]:
    """``build_scp`` on a migrated index, served from a thread until the block ends."""
    sqlite_index(tmp_path)
    built = build_scp(node_settings(tmp_path, **sections))
    thread = threading.Thread(target=built.server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield built
    finally:
        built.server.shutdown()
        built.server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[Scp]:
    with serving(tmp_path, security={"allowed_calling_aes": ["TESTSCU"]}) as built:
        yield built


def port_of(scp: Scp) -> int:
    return int(scp.server.server_address[1])


def test_an_allowed_peer_echoes_and_stores(scp: Scp, ct_slice: Path) -> None:
    echo = c_echo("127.0.0.1", port_of(scp), NODE_AE, calling_ae="TESTSCU")
    assert echo.ok, echo.message
    assert send_datasets(port_of(scp), [dcmread(ct_slice)]) == [0]
    with scp.engine.connect() as conn:
        stored = conn.execute(select(Instance.sop_instance_uid, Instance.path)).one()
    assert stored.sop_instance_uid == dcmread(ct_slice, stop_before_pixels=True).SOPInstanceUID
    assert stored.path.endswith(f"{stored.sop_instance_uid}.dcm")


def test_an_unknown_calling_ae_is_rejected(scp: Scp) -> None:
    refused = c_echo("127.0.0.1", port_of(scp), NODE_AE, calling_ae="STRANGER")
    assert not refused.ok
    assert refused.message.startswith("association rejected: ")
    assert "Calling AE title not recognised" in refused.message
    with scp.engine.connect() as conn:
        assert conn.execute(select(func.count(Instance.id))).scalar_one() == 0


def test_tls_is_off_without_a_certificate() -> None:
    assert server_context(SecuritySettings()) is None


def test_migrations_run_twice_without_change(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    upgrade(url)
    engine = create_engine(url)
    before = sorted(inspect(engine).get_table_names())
    upgrade(url)
    assert sorted(inspect(create_engine(url)).get_table_names()) == before
    assert {"studies", "series", "instances", "jobs", "exports", "audit_events"} <= set(before)
    # a password with % in the URL survives Alembic's config interpolation
    cfg = alembic_config("postgresql://u:p%40ss@host/db")
    assert cfg.get_main_option("sqlalchemy.url") == "postgresql://u:p%40ss@host/db"


class Recorded:
    """The handlers' logger, recording (a seam: the event names, not the JSON)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def __getattr__(self, level: str) -> object:
        return lambda event, **kw: self.events.append((event, kw))


def test_a_slow_c_store_is_logged_with_its_seconds(
    scp: Scp, ct_slice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = Recorded()
    monkeypatch.setattr(handlers, "log", recorded)
    monkeypatch.setattr(handlers, "SLOW_C_STORE_S", 0.0)  # every C-STORE is "slow" now
    assert send_datasets(port_of(scp), [dcmread(ct_slice)]) == [0]
    slow = [kw for event, kw in recorded.events if event == "c_store_slow"]
    assert len(slow) == 1
    assert float(slow[0]["seconds"]) >= 0  # type: ignore[arg-type]
    assert slow[0]["sop_instance_uid"] == dcmread(ct_slice, stop_before_pixels=True).SOPInstanceUID


def test_insert_ignore_says_whether_it_inserted(tmp_path: Path, pg_url: str) -> None:
    for url in (f"sqlite:///{tmp_path / 'ignore.db'}", pg_url):
        upgrade(url)
        engine = make_engine(url)
        row = {"destination": "pacs", "state": "CLOSED", "failures": 0}
        with engine.begin() as conn:
            assert insert_ignore(conn, DestinationCircuit, row) is True
            assert insert_ignore(conn, DestinationCircuit, {**row, "state": "OPEN"}) is False
        with engine.connect() as conn:
            assert conn.execute(select(DestinationCircuit.state)).scalars().all() == ["CLOSED"]
        engine.dispose()


@pytest.mark.parametrize(
    ("sections", "reason"),
    [
        ({"security": {"allowed_hosts": ["10.0.0.0/8"]}}, "Rejected Permanent, Service User"),
        (
            {"storage": {"min_free_mb": 10**9}},
            "Rejected Transient, Service Provider (Presentation)",
        ),
    ],
    ids=["host not allowed", "disk reserve reached"],
)
def test_a_peer_is_rejected_before_any_c_store(
    tmp_path: Path, sections: dict[str, object], reason: str
) -> None:
    with serving(tmp_path, **sections) as built:
        refused = c_echo("127.0.0.1", port_of(built), NODE_AE, calling_ae="TESTSCU")
    assert not refused.ok
    assert refused.message.startswith(f"association rejected: {reason}")


def test_the_c_store_path_logs_uids_and_never_the_patient(
    scp: Scp, ct_slice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = Recorded()
    monkeypatch.setattr(handlers, "log", recorded)
    ds = dcmread(ct_slice)
    ds.PatientName, ds.PatientID = "Quibbleworth^Ottoline", "PHI-88231977"
    ds.AccessionNumber = "ACC-5521-XY"
    assert send_datasets(port_of(scp), [ds]) == [0]
    # the SCP logs the association's end on its own thread, after the release reached the SCU
    wait_for(
        lambda: any(e == "association_ended" for e, _ in recorded.events),
        10,
        "the association's end logged",
    )
    said = repr(recorded.events)
    for phi in ("Quibbleworth", "PHI-88231977", "ACC-5521-XY"):
        assert phi not in said
    # per association: who, how it ended, and counts
    ended = next(kw for e, kw in recorded.events if e == "association_ended")
    assert (ended["calling_ae"], ended["stored"], ended["failed"]) == ("TESTSCU", 1, 0)
