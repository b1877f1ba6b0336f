"""The recovery scan on SQLite (``dicom_node.storage.recovery``): partial writes removed, every
stored file the index lacks indexed, a file whose UIDs do not match its place quarantined,
each audited; a second scan finds nothing to do."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import func, select

from dicom_node.db.models import AuditEvent, Instance
from dicom_node.storage.index import AssociationCache
from dicom_node.storage.paths import StorageLayout
from dicom_node.storage.recovery import recover
from tests.rows import instance, make_intake, request, sqlite_index


def test_the_scan_rebuilds_the_index_from_the_storage_root(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    first = make_intake(sqlite_index(tmp_path / "old"), root)
    kept = [first.accept(request(instance()), AssociationCache()).key for _ in range(3)]
    layout = StorageLayout(root)
    (layout.incoming / "partial.tmp").write_bytes(b"half a file")
    stray = layout.path_for(kept[0]).parent / "1.2.3.4.dcm"  # its own UID says otherwise
    shutil.copy(layout.path_for(kept[0]), stray)

    engine = sqlite_index(tmp_path / "new")  # the index lost: a fresh one
    report = recover(layout, engine)
    assert report.partial_removed == 1
    assert sorted(report.indexed) == sorted(k.relative_path() for k in kept)
    assert report.quarantined and not stray.exists()
    assert list(layout.quarantine.iterdir())
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Instance)).scalar_one() == 3
        audited = conn.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    assert audited >= 2  # what was indexed and what was quarantined, for the admin

    again = recover(layout, engine)
    assert (again.partial_removed, again.indexed, again.quarantined) == (0, [], [])
