"""Results kept on the node can still be sent: a study run with no destination keeps its SEG
and SR; once a destination is added, ``dicom-node exports send --job JOB --to DEST`` (or the
study page's Send button) makes outbox rows for them, and the real sender delivers them to
dcmtk storescp. ``jobs show`` and the study page say where each object is and where it went;
what cannot be sent says why."""

from __future__ import annotations

import getpass
import json
import re
from pathlib import Path

from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.admin.actions import force_complete
from dicom_node.admin.users import Role, add_user
from dicom_node.db.models import AuditEvent, Export, Job
from dicom_node.domain import JobState
from dicom_node.export.exporter import DestinationSender
from dicom_node.settings import Settings
from dicom_node.web.app import create_app
from tests.helpers import cli, node_settings, send_datasets, start_node
from tests.models import build_model
from tests.peers import storescp
from workers.runner import WorkerContext, execute


def config(settings: Settings, path: Path, destinations: str = "") -> Path:
    s = settings
    path.write_text(
        f'[storage]\nroot = "{s.storage.root}"\n'
        f'[database]\nurl = "{s.database.url.get_secret_value()}"\n'
        f'[models]\nroot = "{s.models.root}"\n'
        '[[rules]]\nname = "ct"\nmodels = ["threshold"]\n[rules.match]\nmodality = ["CT"]\n'
        + destinations
    )
    return path


def dest(name: str, port: int, profile: str = "default") -> str:
    return (
        f'[[destinations]]\nname = "{name}"\nae_title = "STORESCP"\nhost = "127.0.0.1"\n'
        f'port = {port}\nprofile = "{profile}"\n'
    )


def test_kept_results_are_sent_to_a_destination_added_later(tmp_path: Path, ct_dir: Path) -> None:
    build_model(tmp_path / "models", "threshold", "torchscript")
    rule = {"name": "ct", "models": ["threshold"], "match": {"modality": ["CT"]}}
    settings = node_settings(
        tmp_path, rules=[rule], models={"root": str(tmp_path / "models"), "device": "cpu"}
    )
    node = start_node(settings, sweeper=False)
    try:
        study, series = generate_uid(), generate_uid()
        slices = sorted(
            (dcmread(p) for p in ct_dir.iterdir() if p.name != "DIRFILE"),
            key=lambda ds: int(ds.InstanceNumber),
        )[:3]
        for ds in slices:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        assert set(send_datasets(node.port, slices)) == {0}
        [job_id] = force_complete(node.engine, settings, study, "test")
        assert execute(WorkerContext(settings), job_id, "test-worker") is JobState.RESULTS_READY
    finally:
        node.stop()
    with node.engine.connect() as conn:  # no destination: DONE at once, the objects kept
        assert conn.execute(select(Job.state).where(Job.id == job_id)).scalar() == "DONE"

    before = config(settings, tmp_path / "before.toml")
    shown = json.loads(cli("jobs", "show", job_id, "--json", config=before).stdout)
    objects = {o["sop_instance_uid"]: o for o in shown["objects"]}
    assert {o["kind"] for o in objects.values()} >= {"seg", "sr"}
    assert all(o["on_node"] and o["profile"] == "default" for o in objects.values())
    assert all(Path(o["path"]).is_file() for o in objects.values())
    assert shown["sendable"] == []  # nowhere to send it yet
    text = cli("jobs", "show", job_id, config=before).stdout
    for uid, o in objects.items():
        assert f"{uid}  {o['path']}  -> not sent" in text
    done = cli("exports", "send", "--job", job_id, "--to", "archive", config=before)
    assert done.returncode == 2
    assert "no destination 'archive' (destinations: none configured)" in done.stderr

    with storescp(tmp_path / "archive") as port, storescp(tmp_path / "second") as second_port:
        after = config(
            settings,
            tmp_path / "after.toml",
            dest("archive", port)
            + dest("slicer-box", port, "slicer")
            + dest("second", second_port),
        )
        text = cli("jobs", "show", job_id, config=after).stdout
        assert f"can be sent: dicom-node exports send --job {job_id} --to archive" in text
        assert "--to slicer-box" not in text  # its profile was never built for this job

        refused = cli("exports", "send", "--job", job_id, "--to", "slicer-box", config=after)
        assert refused.returncode == 1
        assert (
            f"job {job_id} built objects for profile(s) default, and slicer-box takes profile "
            f"'slicer': re-run the study to build them (dicom-node studies rerun {study})"
        ) in refused.stderr

        sent = cli("exports", "send", "--job", job_id, "--to", "archive", config=after)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith(f"{len(objects)} object(s) queued for archive: ")
        later = node_settings(
            tmp_path,
            rules=[rule],
            models={"root": str(tmp_path / "models"), "device": "cpu"},
            destinations=[
                {"name": "archive", "ae_title": "STORESCP", "host": "127.0.0.1", "port": port},
                {
                    "name": "second",
                    "ae_title": "STORESCP",
                    "host": "127.0.0.1",
                    "port": second_port,
                },
            ],
        )
        with node.engine.connect() as conn:
            assert conn.execute(select(Job.state).where(Job.id == job_id)).scalar() == "EXPORTING"
            actors = set(
                conn.execute(
                    select(AuditEvent.actor).where(AuditEvent.event_type == "export.pending")
                ).scalars()
            )
        assert actors == {f"cli:{getpass.getuser()}"}
        DestinationSender(node.engine, later, later.destinations[0]).pass_once()
        files = list((tmp_path / "archive").iterdir())
        assert {str(dcmread(p).SOPInstanceUID) for p in files} == set(objects)
        assert len(files) == len(objects)  # each once
        with node.engine.connect() as conn:
            assert conn.execute(select(Job.state).where(Job.id == job_id)).scalar() == "DONE"

        again = cli("exports", "send", "--job", job_id, "--to", "archive", config=after)
        assert again.returncode == 1
        assert (
            f"already has these objects for archive: dicom-node exports resend --job {job_id}"
            in (again.stderr)
        )
        shown = json.loads(cli("jobs", "show", job_id, "--json", config=after).stdout)
        sent_to = {o["sop_instance_uid"]: o["sent_to"] for o in shown["objects"]}
        assert sent_to == {uid: ["archive"] for uid in objects}
        assert shown["sendable"] == ["second"]

        # the study page: where the objects are, and a Send button for what can still go
        add_user(node.engine, "ada", "correct horse", Role.ADMIN)
        client = TestClient(create_app(later, node.engine), follow_redirects=False)
        page = client.get("/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token is not None
        r = client.post(
            "/login",
            data={"name": "ada", "password": "correct horse", "csrf_token": token[1], "next": "/"},
        )
        assert r.status_code == 303
        html = client.get(f"/studies/{study}").text
        assert "Result objects on the node" in html
        for o in objects.values():
            assert o["path"] in html
        form = re.search(rf'action="/api/jobs/{job_id}/send".*?</form>', html, re.S)
        assert form is not None and "<option>second</option>" in form[0]
        assert "<option>archive</option>" not in form[0]
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form[0])
        assert csrf is not None
        r = client.post(
            f"/api/jobs/{job_id}/send",
            data={"csrf_token": csrf[1], "next": f"/studies/{study}", "destination": "second"},
        )
        assert r.status_code == 303
        DestinationSender(node.engine, later, later.destinations[1]).pass_once()
        files = list((tmp_path / "second").iterdir())
        assert {str(dcmread(p).SOPInstanceUID) for p in files} == set(objects)
        assert len(files) == len(objects)
        with node.engine.connect() as conn:
            rows = conn.execute(
                select(Export.destination, Export.state).where(Export.job_id == job_id)
            ).all()
        assert sorted(rows) == sorted(
            [("archive", "DELIVERED")] * len(objects) + [("second", "DELIVERED")] * len(objects)
        )
