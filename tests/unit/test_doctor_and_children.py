"""The start-up report's findings one by one (``dicom_node.admin.doctor``) on an SQLite index,
and the rule that a child process never outlives the node (``dicom_node.children``), with real
spawned processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from dicom_node.admin import doctor
from dicom_node.admin.users import Role, add_user
from dicom_node.children import die_with_parent
from dicom_node.settings import Settings
from tests.helpers import free_port
from tests.rows import sqlite_index


def settings(tmp_path: Path, **sections: object) -> Settings:
    return Settings(
        storage={"root": str(tmp_path / "storage"), "min_free_mb": 10},  # type: ignore[arg-type]
        database={"url": f"sqlite:///{tmp_path / 'index.db'}"},  # type: ignore[arg-type]
        **sections,  # type: ignore[arg-type]
    )


def test_render_marks_warnings_and_problems_and_counts_them() -> None:
    block = doctor.render(
        "dicom-node 1 doctor",
        [
            doctor.Finding("DICOM", "NODE on 0.0.0.0:11112"),
            doctor.Finding("users", "0 admin(s)", "warning"),
            doctor.Finding("model", "x broken", "problem"),
        ],
    )
    assert block.splitlines() == [
        "dicom-node 1 doctor",
        "   DICOM  NODE on 0.0.0.0:11112",
        " ! users  0 admin(s)",
        " X model  x broken",
        "   1 problem(s), 1 warning(s)",
    ]


def test_accounts_warn_until_there_is_an_enabled_admin(tmp_path: Path) -> None:
    engine = sqlite_index(tmp_path)
    [finding] = doctor.accounts(engine)
    assert finding.level == "warning" and "users add NAME --role admin" in finding.text
    add_user(engine, "vic", "viewer pass", Role.VIEWER)
    assert doctor.accounts(engine)[0].level == "warning"
    add_user(engine, "ada", "correct horse", Role.ADMIN)
    assert doctor.accounts(engine) == [doctor.Finding("users", "2 account(s), 1 admin(s)")]


def test_models_and_rules_say_what_cannot_run(tmp_path: Path) -> None:
    found = doctor.models(
        settings(
            tmp_path,
            rules=[
                {"name": "ct", "models": ["ct-tissue"], "match": {"modality": ["CT"]}},
                {"name": "mr", "models": ["ct-tissue", "mr-brain"], "match": {}},
            ],
        )
    )
    by_topic = [(f.topic, f.level, f.text) for f in found]
    assert by_topic[0][:2] == ("model", "ok") and by_topic[0][2].startswith("ct-tissue 1.0.0")
    assert by_topic[1:] == [
        ("rule", "ok", "ct: CT -> ct-tissue"),
        ("rule", "problem", "mr: any modality -> ct-tissue, mr-brain (not usable: mr-brain)"),
    ]
    none = doctor.models(settings(tmp_path, rules=[]))
    assert none[-1] == doctor.Finding("rule", "none: studies are received and kept, nothing runs")


def test_disk_is_a_problem_below_the_reserve_and_a_warning_near_it(tmp_path: Path) -> None:
    free_mb = int(os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize / 1e6)
    ok = doctor.disk(settings(tmp_path))
    assert ok.level == "ok" and ok.text.endswith("(refuses C-STORE below 10 MB)")
    near = Settings(storage={"root": str(tmp_path / "x"), "min_free_mb": free_mb // 2 + 1})  # type: ignore[arg-type]
    assert doctor.disk(near).level == "warning"  # the nearest existing folder is measured
    full = Settings(storage={"root": str(tmp_path), "min_free_mb": free_mb * 2})  # type: ignore[arg-type]
    assert doctor.disk(full).level == "problem"


def test_no_destination_says_how_to_send_later_and_no_broker_is_embedded(tmp_path: Path) -> None:
    s = settings(tmp_path)
    [finding] = doctor.destinations(s)
    assert "exports send --job JOB --to DEST" in finding.text
    assert doctor.broker(s) == doctor.Finding("broker", "none (embedded workers)")
    assert doctor.admin_url(s) == doctor.Finding("admin UI", "http://127.0.0.1:8080/")


def _mark_if_kept(marker: str) -> None:
    die_with_parent()
    Path(marker).write_text(str(os.getpid()))
    time.sleep(30)  # until the test (or its parent's death) ends it


def _spawn_and_leave(marker: str, leave: bool) -> None:
    """A middle process: spawns a child, then (``leave``) exits at once, before the child has
    finished importing; the child is then an orphan that must not go on."""
    child = mp.get_context("spawn").Process(target=_mark_if_kept, args=(marker,), daemon=False)
    child.start()
    if leave:
        os._exit(0)
    time.sleep(30)


@pytest.mark.parametrize("leave", [False, True], ids=["parent alive", "parent gone early"])
def test_a_child_whose_parent_died_while_it_started_does_not_go_on(
    tmp_path: Path, leave: bool
) -> None:
    marker = tmp_path / "kept"
    middle = mp.get_context("spawn").Process(target=_spawn_and_leave, args=(str(marker), leave))
    middle.start()
    deadline = time.monotonic() + (8 if leave else 30)  # a kept child writes within seconds
    while time.monotonic() < deadline and not marker.exists():
        time.sleep(0.1)
    try:
        assert marker.exists() is (not leave)
    finally:
        if marker.exists():
            os.kill(int(marker.read_text()), 9)
        if middle.is_alive():
            middle.kill()
        middle.join(10)


def test_die_with_parent_in_the_node_itself_does_nothing() -> None:
    die_with_parent()  # no multiprocessing parent: nothing to follow, and still running


def test_a_broker_that_is_not_there_or_not_a_broker_is_a_problem(tmp_path: Path) -> None:
    port = free_port()
    down = doctor.broker(settings(tmp_path, queue={"broker_url": f"redis://127.0.0.1:{port}/0"}))
    assert down.level == "problem"
    assert down.text.startswith(f"redis://127.0.0.1:{port}/0 unreachable: ")
    odd = doctor.broker(settings(tmp_path, queue={"broker_url": "carrier-pigeon://loft/0"}))
    assert odd.level == "problem" and "is not a broker URL kombu knows" in odd.text
