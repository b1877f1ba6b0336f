"""The ``dicom-node`` command against a node that received a real study."""

from __future__ import annotations

import json
from pathlib import Path

from pydicom import dcmread

from tests.helpers import NODE_AE, RunningNode, cli, config_for, send_datasets, wait_for


def test_studies_json_and_show(node: RunningNode, ct_dir: Path, tmp_path: Path) -> None:
    files = sorted(p for p in ct_dir.iterdir() if p.name != "DIRFILE")[:6]
    datasets = [dcmread(p) for p in files]
    send_datasets(node.port, datasets)
    uid = datasets[0].StudyInstanceUID
    wait_for(lambda: node.study(uid)["state"] == "COMPLETE", 5, "complete")
    cfg = config_for(node, tmp_path)

    done = cli("studies", "--json", config=cfg)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 1
    row = rows[0]
    assert {
        "study_uid",
        "state",
        "series",
        "instances",
        "first_received",
        "last_received",
        "completed_at",
    } <= row.keys()
    assert (row["study_uid"], row["state"], row["series"], row["instances"]) == (
        uid,
        "COMPLETE",
        1,
        6,
    )

    shown = cli("studies", "show", uid, "--json", config=cfg)
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert [e["event"] for e in detail["events"]] == ["study.receiving", "study.completed"]
    assert detail["series"][0]["instances"] == 6
    text = cli("studies", "show", uid, config=cfg).stdout
    assert "received (first instance)" in text and "complete (settled after release)" in text

    table = cli("studies", config=cfg)
    assert uid in table.stdout and "COMPLETE" in table.stdout
    # No patient names or IDs anywhere in what the CLI prints.
    for printed in (done.stdout, shown.stdout, text, table.stdout):
        assert str(datasets[0].PatientName) not in printed
        assert str(datasets[0].PatientID) not in printed

    assert cli("studies", "show", "1.2.3.999", config=cfg).returncode == 1


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        '[database]\nurl = "postgresql+psycopg://node:hunter2@db.example/pacs"\n'
        '[node]\nae_title = "SHOWME"\n'
    )
    done = cli("config", "show", config=cfg)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["node"]["ae_title"] == "SHOWME"
    assert "hunter2" not in done.stdout
    assert shown["database"]["url"] == "postgresql+psycopg://node:***@db.example/pacs"


def test_echo(node: RunningNode) -> None:
    ok = cli("echo", "127.0.0.1", str(node.port), NODE_AE)
    assert ok.returncode == 0 and "Success" in ok.stdout
    wrong_ae = cli("echo", "127.0.0.1", str(node.port), "NOBODY")
    assert wrong_ae.returncode == 1 and "Called AE" in wrong_ae.stdout
    closed = cli("echo", "127.0.0.1", "1", NODE_AE)
    assert closed.returncode == 1
    assert "failed" in closed.stdout or "cannot" in closed.stdout
