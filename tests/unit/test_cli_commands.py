"""Every CLI command group in process (typer's CliRunner) on an index filled with rows: what it
prints, in text and JSON, its exit codes for what does not exist or may not be done, and the
audit events its actions leave. The same commands in a child process against a running node
are in tests/integration/test_cli.py and test_admin_cli.py."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import typer
from pydicom import config as pydicom_config
from sqlalchemy import Engine
from typer.core import TyperGroup
from typer.testing import CliRunner

from dicom_node.admin.actions import ActionError, NotFoundError
from dicom_node.cli import app, common
from dicom_node.cli import audit as cli_audit
from dicom_node.cli import config as cli_config
from dicom_node.cli import db as cli_db
from dicom_node.cli import destinations as cli_destinations
from dicom_node.cli import exports as cli_exports
from dicom_node.cli import jobs as cli_jobs
from dicom_node.cli import models as cli_models
from dicom_node.cli import node as cli_node
from dicom_node.cli import rules as cli_rules
from dicom_node.cli import studies as cli_studies
from dicom_node.cli import users as cli_users
from tests.rows import add_job, add_study, events, sqlite_index

STUDY = "1.2.826.0.1.3680043.8.498.77"
RUNNING = "1.2.826.0.1.3680043.8.498.78"


class CurrentStderr:
    """What the node's loggers write to here: whatever ``sys.stderr`` is at the time (each
    CliRunner run has its own, closed when the run ends; a logger caches its file)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def own_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI configures the process's logging for its run (structlog to CliRunner's stderr,
    the except hooks, pydicom's validation): put it all back for the tests that follow."""
    factory = structlog.WriteLoggerFactory
    monkeypatch.setattr(structlog, "WriteLoggerFactory", lambda file: factory(CurrentStderr()))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    hooks = (sys.excepthook, threading.excepthook)
    validation = pydicom_config.settings.reading_validation_mode
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook, threading.excepthook = hooks
    pydicom_config.settings.reading_validation_mode = validation


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Engine]:
    """A config file and its index: one COMPLETE study with a FAILED job, one still
    RECEIVING; a destination PACS that nothing listens on."""
    engine = sqlite_index(tmp_path)
    add_study(engine, STUDY)
    add_study(engine, RUNNING, state="RECEIVING")
    add_job(engine, "job-failed", study_uid=STUDY, state="FAILED", error="model said no")
    config = tmp_path / "node.toml"
    config.write_text(
        f'[storage]\nroot = "{tmp_path / "storage"}"\n'
        f'[database]\nurl = "sqlite:///{tmp_path / "index.db"}"\n'
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 1\n'
    )
    return config, engine


WHERE = "dicom-node: data dir "


def run(config: Path, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Exit code, stdout and stderr (less the line saying which data dir and database)."""
    result = CliRunner().invoke(app, [*args, "--config", str(config)], input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    err = "".join(line for line in result.stderr.splitlines(True) if not line.startswith(WHERE))
    return result.exit_code, result.stdout, err


def test_every_index_command_says_which_data_dir_and_database(
    site: tuple[Path, Engine], tmp_path: Path
) -> None:
    config, _ = site
    result = CliRunner().invoke(app, ["jobs", "--config", str(config)])
    assert result.exit_code == 0
    home = Path(os.environ["DICOM_NODE_HOME"])  # no data_dir in the file: the default's
    assert f"{WHERE}{home}, database sqlite:///{tmp_path / 'index.db'}" in result.stderr


@pytest.mark.parametrize(
    "command", [["studies"], ["jobs"], ["exports"], ["audit"], ["studies", "show", STUDY]]
)
def test_a_read_command_never_makes_a_new_empty_index(tmp_path: Path, command: list[str]) -> None:
    """Run from the wrong place or with the wrong config, a read command says there is no
    index there and exits 1, instead of creating one and listing nothing."""
    config = tmp_path / "elsewhere.toml"
    config.write_text('[node]\ndata_dir = "never-used"\n')
    result = CliRunner().invoke(app, [*command, "--config", str(config)])
    assert result.exit_code == 1, result.stdout
    db = tmp_path / "never-used" / "dicom-node.db"  # relative to the config file's folder
    assert f"no index at sqlite:///{db}: no node has used this data dir yet" in result.stderr
    assert not db.exists()


def test_studies_list_and_show(site: tuple[Path, Engine]) -> None:
    config, _ = site
    code, out, _ = run(config, "studies")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["STATE", "SERIES", "INST"]
    assert {line.split()[-1] for line in out.splitlines()[1:]} == {STUDY, RUNNING}
    code, out, _ = run(config, "studies", "--json")
    assert {row["study_uid"]: row["state"] for row in json.loads(out)} == {
        STUDY: "COMPLETE",
        RUNNING: "RECEIVING",
    }
    code, out, _ = run(config, "studies", "show", STUDY)
    assert code == 0
    assert out.startswith(f"study {STUDY}  COMPLETE")
    assert "job job-failed m FAILED (rule ct, attempts 0)" in out
    assert "  error: model said no" in out
    shown = json.loads(run(config, "studies", "show", STUDY, "--json")[1])
    assert shown["study_uid"] == STUDY and shown["jobs"][0]["job_id"] == "job-failed"
    code, _, err = run(config, "studies", "show", "1.2.3.999")
    assert (code, err.strip()) == (1, "no study 1.2.3.999")


def test_study_actions_say_what_they_did_or_why_not(site: tuple[Path, Engine]) -> None:
    config, engine = site
    code, _, err = run(config, "studies", "force-complete", "1.2.3.999")
    assert code == 2 and "1.2.3.999" in err
    code, _, err = run(config, "studies", "force-complete", STUDY)
    assert code == 1 and err.startswith("dicom-node: ")  # already COMPLETE
    code, out, _ = run(config, "studies", "force-complete", RUNNING)
    assert code == 0 and out.startswith(f"study {RUNNING} COMPLETE; ")
    assert events(engine, RUNNING)[-1] == (
        "study.completed",
        {"from": "RECEIVING", "to": "COMPLETE", "reason": "forced"},
    )


def test_job_retry_and_cancel(site: tuple[Path, Engine]) -> None:
    config, engine = site
    code, out, _ = run(config, "jobs", "--json")
    assert [(j["job_id"], j["state"]) for j in json.loads(out)] == [("job-failed", "FAILED")]
    code, _, err = run(config, "jobs", "cancel", "job-failed")
    assert code == 1 and err.startswith("dicom-node: ")  # a FAILED job is not cancellable
    code, out, _ = run(config, "jobs", "retry", "job-failed")
    assert (code, out.strip()) == (0, "job job-failed QUEUED")
    assert events(engine, "job-failed")[-1][1]["reason"].startswith("retry by cli:")
    code, out, _ = run(config, "jobs", "cancel", "job-failed")
    assert (code, out.strip()) == (0, "job job-failed CANCELLED")
    assert run(config, "jobs", "retry", "no-such-job")[0] == 2


# pynetdicom drops the socket of a refused connection unclosed (closed when it is collected)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_exports_and_destinations(site: tuple[Path, Engine]) -> None:
    config, _ = site
    code, out, _ = run(config, "exports", "--json")
    assert (code, json.loads(out)) == (0, [])
    code, _, err = run(config, "exports", "resend", "--job", "job-failed")
    assert (code, err.strip()) == (2, "dicom-node: no exports of job-failed")
    code, out, _ = run(config, "destinations", "--json")
    rows = json.loads(out)
    assert [(d["destination"], d["address"], d["circuit"]) for d in rows] == [
        ("pacs", "PACS@127.0.0.1:1", "CLOSED")
    ]
    code, out, _ = run(config, "destinations", "echo", "pacs")
    assert code == 1  # nothing listens on port 1: said so, not a traceback
    assert out.startswith("association with PACS@127.0.0.1:1 aborted or no answer")


def test_users_add_set_list_and_audit(site: tuple[Path, Engine]) -> None:
    config, _ = site
    code, out, _ = run(
        config, "users", "add", "ada", "--role", "admin", "--password-stdin", stdin="s3cret-Pass!\n"
    )
    assert code == 0
    code, _, err = run(config, "users", "add", "ada", "--password-stdin", stdin="another-Pass1\n")
    assert code != 0 and "ada" in err
    assert run(config, "users", "set", "ada", "--role", "viewer")[0] == 0
    listed = json.loads(run(config, "users", "list", "--json")[1])
    assert [(u["name"], u["role"], u["disabled"]) for u in listed] == [("ada", "viewer", False)]
    assert "s3cret" not in json.dumps(listed)
    code, out, _ = run(config, "audit", "--event", "user.", "--json")
    kinds = [row["event"] for row in json.loads(out)]
    assert "user.added" in kinds and "user.changed" in kinds
    code, out, _ = run(config, "audit", "--csv")
    assert out.splitlines()[0] == "id,at,event,actor,study_uid,entity_type,entity_id,details"
    assert run(config, "audit", "--since", "yesterday")[0] == 2


def test_config_and_db_commands(site: tuple[Path, Engine], tmp_path: Path) -> None:
    config, _ = site
    code, out, _ = run(config, "config", "show")
    assert code == 0 and "pacs" in out
    result = CliRunner().invoke(app, ["config", "env-example"])
    assert result.exit_code == 0 and "DICOM_NODE_NODE__AE_TITLE" in result.stdout
    assert run(config, "db", "upgrade")[0] == 0
    broken = tmp_path / "broken.toml"
    broken.write_text("[node]\nport = 'eleven'\n")
    code, _, err = run(broken, "studies")
    assert code == 2 and err.startswith("dicom-node: ") and "port" in err


def test_models_and_rules(site: tuple[Path, Engine]) -> None:
    config, _ = site
    code, out, _ = run(config, "models", "list", "--json")
    (model,) = json.loads(out)
    assert (code, model["name"], model["status"]) == (0, "ct-tissue", "ok")
    assert model["labels"] == ["adipose tissue", "soft tissue", "bone", "air"]
    code, out, _ = run(config, "rules", "test", STUDY)
    assert (code, out.strip()) == (0, "rule ct-tissue: does not apply")  # no series in it
    code, _, err = run(config, "rules", "test", "1.2.3.999")
    assert (code, err.strip()) == (1, "no study 1.2.3.999")


def test_rows_become_json_and_actions_exit_with_their_kind(
    capsys: pytest.CaptureFixture[str],
) -> None:
    @dataclasses.dataclass
    class Row:
        uid: str
        parts: tuple[int, ...]

    assert common.to_json([Row("1.2", (1, 2))]) == [{"uid": "1.2", "parts": (1, 2)}]
    common.emit([Row("1.2", ())], True, lambda r: [r.uid])
    assert json.loads(capsys.readouterr().out) == [{"uid": "1.2", "parts": []}]
    common.emit([Row("1.2", ()), Row("1.3", ())], False, lambda r: [r.uid], header="UID")
    assert capsys.readouterr().out.splitlines() == ["UID", "1.2", "1.3"]

    def missing() -> None:
        raise NotFoundError("no study 9.9")

    def refused() -> None:
        raise ActionError("job j is DONE")

    for do, code in ((missing, 2), (refused, 1)):
        with pytest.raises(typer.Exit) as caught:
            common.run_action(do)
        assert caught.value.exit_code == code
    assert capsys.readouterr().err.splitlines() == [
        "dicom-node: no study 9.9",
        "dicom-node: job j is DONE",
    ]
    assert common.run_action(lambda: 7) == 7
    assert common.actor().startswith("cli")


GROUPS = {
    "audit": cli_audit, "config": cli_config, "db": cli_db, "destinations": cli_destinations,
    "exports": cli_exports, "jobs": cli_jobs, "models": cli_models, "rules": cli_rules,
    "studies": cli_studies, "users": cli_users,
}  # fmt: skip


def commands(group: TyperGroup, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, TyperGroup):
            yield from commands(command, (*path, name))


def test_every_group_module_is_mounted_under_its_name() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    for name, module in GROUPS.items():
        mounted = root.commands[name]
        assert isinstance(mounted, TyperGroup)
        assert mounted.help == module.app.info.help  # type: ignore[attr-defined]
    assert {"serve", "worker", "echo", "doctor"} <= set(root.commands)
    assert cli_node.serve.__doc__


def test_every_commands_help_prints_as_written_with_distinct_flags() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    for path in commands(root):
        command: Any = root
        for name in path:
            assert isinstance(command, TyperGroup)
            command = command.commands[name]
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, path
        first = "".join((command.help or "").split("\n\n")[0].split())  # wrapping aside
        assert first, f"{' '.join(path)} has no help text"
        assert first in "".join(result.stdout.split()), (path, command.help)
        # no markup ate a bracketed name: no empty [], no "( root)", no doubled space left behind
        text = " ".join(result.stdout.split()).replace("- ", "-")  # wrapped at a hyphen
        assert "[]" not in text and "( " not in text and " )" not in text, (path, text)
        assert " ".join((command.help or "").split("\n\n")[0].split()).replace("- ", "-") in text
        for line in result.stdout.splitlines():
            prose = line.strip()
            if prose and not prose.startswith(("-", "│", "╭", "╰")) and "  " in prose:
                assert not re.search(r"[a-z,(]  [a-z)]", prose), (path, line)
        flags = [f for p in command.params for f in getattr(p, "opts", []) if f.startswith("-")]
        assert len(flags) == len(set(flags)), (path, flags)


@pytest.mark.parametrize(
    ("command", "columns"),
    [
        ("studies", ["STATE", "SERIES", "INST", "LAST RECEIVED", "STUDY UID"]),
        ("jobs", ["STATE", "TRY", "MODEL", "RULE", "JOB / STUDY"]),
        ("exports", ["STATE", "TRY", "KIND", "DESTINATION", "STATUS", "EXPORT / JOB"]),
    ],
)
def test_table_columns_are_as_the_readme_documents_them(
    site: tuple[Path, Engine], command: str, columns: list[str]
) -> None:
    config, _ = site
    code, out, _ = run(config, command)
    assert code == 0
    header = out.splitlines()[0]
    at = [header.index(c) for c in columns]
    assert at == sorted(at)
    for c in columns:
        header = header.replace(c, "", 1)
    assert header.strip() == ""  # those columns, in that order, and nothing else
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    [row] = [line for line in readme.splitlines() if line.startswith(f"| `dicom-node {command} [")]
    assert ", ".join(columns) in row
