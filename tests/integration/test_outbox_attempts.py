"""A destination that hangs: a real pynetdicom Storage SCP that accepts the association and
never answers the first C-STORE. The object in flight times out and uses its attempt; the
objects queued behind it on the lost association were never sent and use none."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from sqlalchemy import insert, select

from dicom_node.db.models import Export, Job, Study, utcnow
from dicom_node.export.exporter import DestinationSender
from dicom_node.export.outbox import create_exports
from dicom_node.node import prepare
from dicom_node.results import ObjectKind, ResultObject
from tests.helpers import free_port, node_settings


@pytest.fixture
def hanging() -> Iterator[int]:
    release = threading.Event()

    def never_answers(_event: Event) -> int:
        release.wait(60)
        return 0x0000

    ae = AE(ae_title="HANGING")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, never_answers)]
    )
    yield port
    release.set()
    server.shutdown()


def test_a_hanging_destination_uses_the_attempt_of_the_object_in_flight_only(
    hanging: int, tmp_path: Path, ct_dir: Path
) -> None:
    settings = node_settings(
        tmp_path,
        destinations=[
            {
                "name": "hanging",
                "ae_title": "HANGING",
                "host": "127.0.0.1",
                "port": hanging,
                "dimse_timeout_s": 2,
                "max_attempts": 3,
            }
        ],
    )
    [dest] = settings.destinations
    engine = prepare(settings).engine
    files = sorted(p for p in ct_dir.iterdir() if p.name != "DIRFILE")[:3]
    objects = []
    for kind, path in zip(("seg", "pm", "sr"), files, strict=True):
        ds = dcmread(path, stop_before_pixels=True)
        objects.append(
            ResultObject(
                kind=ObjectKind(kind),
                path=str(path),
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                series_uid=str(ds.SeriesInstanceUID),
            )
        )
    now = utcnow()
    with engine.begin() as conn:  # the rows a completed study and its finished job leave
        study_id = conn.execute(
            insert(Study).returning(Study.id),
            {
                "study_uid": "1.2.3",
                "state": "COMPLETE",
                "first_received": now,
                "last_received": now,
                "opened_at": now,
                "times_completed": 1,
            },
        ).scalar_one()
        conn.execute(
            insert(Job),
            {
                "id": "job-hanging",
                "study_id": study_id,
                "study_uid": "1.2.3",
                "rule": "ct",
                "model": "m",
                "series_uids": [],
                "input_key": "k",
                "priority": 1,
                "state": "RESULTS_READY",
                "attempts": 1,
                "max_attempts": 3,
                "created_at": now,
                "queued_at": now,
            },
        )
        create_exports(
            conn,
            job_id="job-hanging",
            study_uid="1.2.3",
            destinations=[dest],
            objects={dest.profile: objects},
            at=now,
        )
    assert DestinationSender(engine, settings, dest).pass_once()
    with engine.connect() as conn:
        rows = {r.kind: r for r in conn.execute(select(Export.__table__))}
    assert (rows["seg"].state, rows["seg"].attempts) == ("RETRY_WAIT", 1)
    assert rows["seg"].last_error == "no C-STORE response (timeout or abort)"
    for kind in ("pm", "sr"):
        assert (rows[kind].state, rows[kind].attempts) == ("RETRY_WAIT", 0), kind
        assert rows[kind].last_error == "not sent: association lost before sending"
    engine.dispose()
