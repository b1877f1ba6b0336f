from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from tests.helpers import RunningNode, node_settings, start_node, testdata_root, unique_name

PG_ADMIN_URL = os.environ.get("DICOM_NODE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def pytest_configure(config: pytest.Config) -> None:
    """No test touches a real data directory (``/var/lib/dicom-node`` as root, the user's own
    otherwise): the defaults point at a fresh one for the session."""
    os.environ["DICOM_NODE_HOME"] = tempfile.mkdtemp(prefix="dicom-node-home-")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The markers follow from what a test needs, so they cannot drift:

    - ``postgres``: every test that uses the ``pg_url`` fixture;
    - ``soak``: opt-in. ``@pytest.mark.soak(size="ENV")`` runs only when ENV (its size) is set;
      CI sets each size explicitly (``.ci/run``) and fails where one is missing.
    """
    for item in items:
        if "pg_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
        soak = item.get_closest_marker("soak")
        if soak is None:
            continue
        size = soak.kwargs.get("size")
        if not size:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.soak needs size='ENV_VAR'")
        if size in os.environ:
            continue
        if os.environ.get("CI"):
            raise pytest.UsageError(f"CI must set {size}, the size of {item.nodeid}")
        item.add_marker(pytest.mark.skip(reason=f"soak suite: opt in by setting {size} (its size)"))


@pytest.fixture(scope="session")
def testdata() -> Path:
    root = testdata_root()
    if root is None:
        reason = (
            "real DICOM test data not found: set DICOM_NODE_TESTDATA or run "
            "`python tools/fetch_testdata.py` (see README)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must not skip: {reason}")
        pytest.skip(reason)
    return root


@pytest.fixture(scope="session")
def ct_dir(testdata: Path) -> Path:
    return testdata / "dcm_qa_ct/In/Philips/S21610/S2010"


@pytest.fixture(scope="session")
def ct_slice(ct_dir: Path) -> Path:
    return sorted(p for p in ct_dir.iterdir() if p.name != "DIRFILE")[0]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    running = start_node(node_settings(tmp_path))
    yield running
    running.stop()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server for each test, dropped afterwards."""
    name = f"dicom_node_test_{unique_name()}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must not skip: PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
    yield url.render_as_string(hide_password=False)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mount a small tmpfs (root only): a real filesystem that really fills up."""
    mounted: list[Path] = []

    def mount(size_mb: int) -> Path:
        target = tmp_path / f"tmpfs{len(mounted)}"
        target.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            reason = f"cannot mount a tmpfs here: {done.stderr.strip()}"
            if os.environ.get("CI"):
                pytest.fail(f"CI must not skip: {reason}")
            pytest.skip(reason)
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=False)
