"""Admin benchmark: what a Prometheus scrape and the busiest pages cost on a large index.

    python bench/admin.py [--studies 5000] [--instances 40] [--repeats 3]

Fills a fresh SQLite index (migrated by Alembic) with ``--studies`` studies of ``--instances``
instances each, one job per study (90 % DONE with two delivered exports, 7 % FAILED, 3 %
QUEUED) and their audit events, spread over the last 7 days. The rows are synthetic (bulk
inserts: no DICOM is parsed); what is measured is the admin code on top of them. Then, best of
``--repeats``, through the real app (FastAPI's TestClient, logged in as an admin): /metrics,
the dashboard (24 h and 7 days), the study list, one study's timeline, the audit log and its
CSV, the models page. The reference is the cheapest honest floor in the same process: one
``SELECT count(*)`` per table the page reads.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402

from dicom_node import logs  # noqa: E402
from dicom_node.admin.users import Role, add_user  # noqa: E402
from dicom_node.db.migrate import upgrade  # noqa: E402
from dicom_node.db.models import (  # noqa: E402
    AuditEvent,
    Export,
    Instance,
    Job,
    Series,
    Study,
)
from dicom_node.db.session import make_engine  # noqa: E402
from dicom_node.settings import BUILTIN_MODELS, load_settings  # noqa: E402
from dicom_node.web.app import create_app  # noqa: E402


def fill(engine, studies: int, per_study: int) -> str:  # type: ignore[no-untyped-def]
    rng = random.Random(20261124)
    now = datetime.now(UTC)
    study_rows, series_rows, instance_rows, job_rows, export_rows, events = [], [], [], [], [], []
    for i in range(1, studies + 1):
        uid = f"1.2.826.0.1.3680043.10.543.{i}"
        first = now - timedelta(seconds=rng.uniform(0, 7 * 86400))
        done = first + timedelta(seconds=rng.uniform(5, 90))
        study_rows.append({
            "id": i, "study_uid": uid, "accession_hash": f"{i:016x}", "study_date": "20261120",
            "state": "COMPLETE", "first_received": first, "last_received": first,
            "opened_at": first, "completed_at": done, "completion_reason": "quiet_period",
            "times_completed": 1,
        })  # fmt: skip
        series_rows.append({
            "id": i, "series_uid": f"{uid}.1", "study_id": i, "modality": "CT",
            "series_number": 1, "first_received": first, "orientation": "AXIAL",
        })  # fmt: skip
        for k in range(per_study):
            instance_rows.append({
                "sop_instance_uid": f"{uid}.1.{k}", "series_id": i,
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                "transfer_syntax_uid": "1.2.840.10008.1.2.1", "instance_number": k + 1,
                "path": f"instances/{uid}/{k}.dcm", "size_bytes": 530_000,
                "received_at": first + timedelta(milliseconds=20 * k), "duplicates_received": 0,
            })  # fmt: skip
        job_id = str(uuid.uuid4())
        roll = rng.random()
        state = "DONE" if roll < 0.9 else "FAILED" if roll < 0.97 else "QUEUED"
        started = done + timedelta(seconds=rng.uniform(0.5, 20))
        ready = started + timedelta(seconds=rng.uniform(3, 12))
        finished = ready + timedelta(seconds=rng.uniform(0.1, 2))
        job_rows.append({
            "id": job_id, "study_id": i, "study_uid": uid, "rule": "ct", "model": "ct-tissue",
            "series_uids": [f"{uid}.1"], "input_key": uuid.uuid4().hex * 2, "priority": 1,
            "state": state, "attempts": 1, "max_attempts": 3, "created_at": done,
            "queued_at": done, "started_at": None if state == "QUEUED" else started,
            "results_ready_at": ready if state == "DONE" else None,
            "finished_at": finished if state != "QUEUED" else None,
            "error": "weights fail the sha256 check" if state == "FAILED" else None,
            "result": {"series": [{"series_uid": f"{uid}.1", "labels": [
                {"value": v, "name": n, "voxels": rng.randint(0, 10**6),
                 "volume_ml": rng.uniform(0, 900)}
                for v, n in enumerate(("adipose tissue", "soft tissue", "bone", "air"), 1)]}]}
            if state == "DONE" else None,
        })  # fmt: skip
        trail = [("study.receiving", "study", uid, first), ("study.completed", "study", uid, done),
                 ("job.queued", "job", job_id, done)]  # fmt: skip
        if state != "QUEUED":
            trail.append(("job.running", "job", job_id, started))
        if state == "DONE":
            trail += [
                ("job.results_ready", "job", job_id, ready),
                ("job.done", "job", job_id, finished),
            ]
            for kind in ("seg", "sr"):
                export_id = str(uuid.uuid4())
                export_rows.append({
                    "id": export_id, "job_id": job_id, "study_uid": uid, "destination": "pacs",
                    "kind": kind, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.66.4",
                    "sop_instance_uid": f"2.25.{rng.getrandbits(100)}", "path": "/dev/null",
                    "state": "DELIVERED", "attempts": 1, "max_attempts": 10,
                    "last_status": 0, "created_at": ready, "delivered_at": finished,
                })  # fmt: skip
                trail += [("export.pending", "export", export_id, ready),
                          ("export.sending", "export", export_id, ready),
                          ("export.delivered", "export", export_id, finished)]  # fmt: skip
        if state == "FAILED":
            trail.append(("job.failed", "job", job_id, started))
        events += [
            {"at": at, "event_type": e, "actor": "system", "study_uid": uid, "entity_type": t,
             "entity_id": eid, "details": {"reason": "bench"}}
            for e, t, eid, at in trail
        ]  # fmt: skip
    with engine.begin() as conn:
        tables = (
            (Study, study_rows),
            (Series, series_rows),
            (Instance, instance_rows),
            (Job, job_rows),
            (Export, export_rows),
            (AuditEvent, events),
        )
        for table, rows in tables:
            for start in range(0, len(rows), 5000):
                conn.execute(insert(table), rows[start : start + 5000])
    return study_rows[len(study_rows) // 2]["study_uid"]


def best(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=5000)
    parser.add_argument("--instances", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logs.configure("WARNING")  # one request log line per call would drown the figures
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/index.db"
        upgrade(url)
        engine = make_engine(url)
        t0 = time.perf_counter()
        uid = fill(engine, args.studies, args.instances)
        print(f"index: {args.studies} studies, {args.studies * args.instances} instances, "
              f"{args.studies} jobs, filled in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        settings = load_settings(
            rules=[], storage={"root": f"{tmp}/storage"}, database={"url": url},
            models={"root": str(BUILTIN_MODELS)},
        )  # fmt: skip
        add_user(engine, "bench", "bench password", Role.ADMIN)
        client = TestClient(create_app(settings, engine))
        page = client.get("/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        client.post("/login", data={"name": "bench", "password": "bench password",
                                    "csrf_token": token})  # fmt: skip

        def floor() -> None:
            with engine.connect() as conn:
                for table in (Study, Instance, Job, Export, AuditEvent):
                    conn.execute(select(func.count()).select_from(table)).scalar_one()

        reference = best(floor, args.repeats)
        print(f"reference: one SELECT count(*) per table  {reference * 1000:8.1f} ms")
        for path in ("/metrics", "/api/dashboard?window=24h", "/?window=7d", "/studies",
                     "/api/studies?limit=200", f"/studies/{uid}", "/audit", "/audit.csv",
                     "/models"):  # fmt: skip

            def get(path: str = path) -> None:
                response = client.get(path)
                assert response.status_code == 200, (path, response.status_code)

            seconds = best(get, args.repeats)
            print(f"{path:<44} {seconds * 1000:8.1f} ms  ({seconds / reference:5.1f} x reference)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
