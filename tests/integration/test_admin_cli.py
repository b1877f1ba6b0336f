"""CLI parity: every admin action of the web UI has a ``dicom-node`` command, goes through the
same audited functions, and names the OS user as the actor."""

from __future__ import annotations

import csv
import getpass
import io
import json
import subprocess
import sys
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select

from dicom_node.db.models import Job
from tests.helpers import cli, node_settings, send_datasets, start_node


def users_add(cfg: Path, name: str, password: str, role: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node", "users", "add", name, "--role", role,
         "--password-stdin", "--config", str(cfg)],
        input=password + "\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_admin_actions_from_the_cli(tmp_path: Path, ct_dir: Path) -> None:
    settings = node_settings(
        tmp_path, rules=[{"name": "ct", "models": ["m"], "match": {"modality": ["CT"]}}]
    )
    node = start_node(settings, sweeper=False)  # the study stays RECEIVING until forced
    try:
        slices = sorted(
            (dcmread(p) for p in ct_dir.iterdir() if p.name != "DIRFILE"),
            key=lambda ds: int(ds.InstanceNumber),
        )[:3]
        assert set(send_datasets(node.port, slices)) == {0}
        uid = str(slices[0].StudyInstanceUID)
        cfg = tmp_path / "node.toml"
        cfg.write_text(
            f'[storage]\nroot = "{settings.storage.root}"\n'
            f'[database]\nurl = "{settings.database.url.get_secret_value()}"\n'
            '[[rules]]\nname = "ct"\nmodels = ["m"]\n[rules.match]\nmodality = ["CT"]\n'
        )
        actor = f"cli:{getpass.getuser()}"

        # accounts
        done = users_add(cfg, "bob", "a long passphrase", "admin")
        assert done.returncode == 0 and "user bob added (admin)" in done.stdout, done.stderr
        assert users_add(cfg, "bob", "another passphrase", "viewer").returncode == 1
        short = users_add(cfg, "eve", "short", "viewer")
        assert short.returncode == 1 and "at least 8 characters" in short.stderr
        assert users_add(cfg, "eve", "long enough", "root").returncode == 2
        users = json.loads(cli("users", "list", "--json", config=cfg).stdout)
        assert [(u["name"], u["role"]) for u in users] == [("bob", "admin")]
        assert "password" not in json.dumps(users)
        assert cli("users", "set", "bob", "--disable", config=cfg).returncode == 0
        assert json.loads(cli("users", "list", "--json", config=cfg).stdout)[0]["disabled"]

        # force-complete, then it is refused a second time with a message
        done = cli("studies", "force-complete", uid, config=cfg)
        assert done.returncode == 0 and "1 job(s) queued" in done.stdout, done.stderr
        again = cli("studies", "force-complete", uid, config=cfg)
        assert again.returncode == 1 and "already COMPLETE" in again.stderr
        assert cli("studies", "force-complete", "1.2.3", config=cfg).returncode == 2
        with node.engine.connect() as conn:
            [job_id] = conn.execute(select(Job.id)).scalars().all()

        # cancel, retry, re-run
        assert cli("jobs", "cancel", job_id, config=cfg).returncode == 0
        assert cli("jobs", "cancel", job_id, config=cfg).returncode == 1
        assert cli("jobs", "retry", job_id, config=cfg).returncode == 0
        assert cli("jobs", "retry", "no-such-job", config=cfg).returncode == 2
        done = cli("studies", "rerun", uid, config=cfg)
        assert done.returncode == 0 and "1 job(s) queued" in done.stdout
        jobs = json.loads(cli("jobs", "--json", config=cfg).stdout)
        assert sorted(j["state"] for j in jobs) == ["QUEUED", "QUEUED"]

        # the audit log, as CSV, names the OS user for each action
        done = cli("audit", "--csv", "--study", uid, config=cfg)
        rows = list(csv.DictReader(io.StringIO(done.stdout)))
        by_actor = {(r["event"], r["actor"]) for r in rows}
        assert {
            ("study.completed", actor),
            ("job.cancelled", actor),
            ("job.queued", actor),
        } <= by_actor
        done = cli("audit", "--event", "user.", "--json", config=cfg)
        assert {e["event"] for e in json.loads(done.stdout)} == {"user.added", "user.changed"}
        assert cli("audit", "--since", "last week", config=cfg).returncode == 2

        # bulk resend with nothing FAILED says so; reindex shows a progress bar
        done = cli("exports", "resend", "--failed", config=cfg)
        assert done.returncode == 1 and "no FAILED row" in done.stderr
        done = cli("db", "reindex", config=cfg)
        assert done.returncode == 0 and "indexed 0, quarantined 0" in done.stdout
        assert "re-indexing" in done.stderr
    finally:
        node.stop()
