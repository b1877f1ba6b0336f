"""The recovery scan: files the index lacks are indexed or quarantined, partial writes removed."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select

from dicom_node.db.models import AuditEvent, Instance
from dicom_node.db.session import make_engine
from dicom_node.node import prepare
from dicom_node.storage.paths import StorageLayout
from tests.helpers import node_settings


def test_orphans_indexed_quarantined_and_partials_removed(tmp_path: Path, ct_slice: Path) -> None:
    settings = node_settings(tmp_path)
    layout = StorageLayout(settings.storage.root)
    layout.create()
    ds = dcmread(ct_slice, stop_before_pixels=True)
    # 1. A complete file renamed into place, index row never committed (crash between the two).
    good = (
        layout.root
        / f"instances/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    )
    good.parent.mkdir(parents=True)
    shutil.copyfile(ct_slice, good)
    # 2. A file whose content does not match its name.
    liar = good.with_name("1.2.3.4.dcm")
    shutil.copyfile(ct_slice, liar)
    # 3. Garbage.
    junk = good.with_name("9.9.9.dcm")
    junk.write_bytes(b"not dicom at all")
    # 4. A temp file of a write that never finished.
    (layout.incoming / "tmpabc.part").write_bytes(b"\x00" * 100)

    prepared = prepare(settings)
    report = prepared.recovery
    assert report.partial_removed == 1
    assert report.indexed == [good.relative_to(layout.root).as_posix()]
    assert sorted(report.quarantined) == sorted(
        p.relative_to(layout.root).as_posix() for p in (liar, junk)
    )
    assert not liar.exists() and not junk.exists()
    assert len(list(layout.quarantine.iterdir())) == 2
    engine = make_engine(settings.database.url.get_secret_value())
    with engine.connect() as conn:
        rows = conn.execute(select(Instance.sop_instance_uid)).scalars().all()
        events = conn.execute(select(AuditEvent.event_type)).scalars().all()
    assert rows == [ds.SOPInstanceUID]
    assert events.count("recovery.indexed") == 1
    assert events.count("recovery.quarantined") == 2
    # A second start finds nothing more to do.
    again = prepare(settings).recovery
    assert (again.partial_removed, again.indexed, again.quarantined) == (0, [], [])
    engine.dispose()
    prepared.engine.dispose()
