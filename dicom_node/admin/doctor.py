"""What the node found at start, and ``dicom-node doctor``: one list of findings, each ok, a
warning or a problem, rendered as one human-readable block.

At start (beside the JSON logs): the AE title and address, TLS, the data dir and database, the
models on the search path with their version and weights check, the rules and whether their
models are there, each destination with its C-ECHO, the admin URL and the accounts. ``doctor``
adds free disk, the index's migrations, the broker and exits non-zero on a problem; it never
migrates or creates anything.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import Engine

from dicom_node.settings import DestinationSettings, Settings, masked

Level = Literal["ok", "warning", "problem"]
ECHO_TIMEOUT_S = 5.0
MARK = {"ok": " ", "warning": "!", "problem": "X"}


@dataclass(frozen=True, slots=True)
class Finding:
    topic: str
    text: str
    level: Level = "ok"


def startup_findings(settings: Settings, engine: Engine) -> list[Finding]:
    """What ``serve`` reports once it is receiving (the index is migrated by then)."""
    return [
        *identity(settings),
        *where(settings),
        *models(settings),
        *destinations(settings),
        admin_url(settings),
        *accounts(engine),
    ]


def doctor_findings(settings: Settings) -> list[Finding]:
    """Everything ``startup_findings`` says, plus disk, migrations and the broker; from the
    configuration alone, touching nothing."""
    from dicom_node.db.session import database_exists, make_engine  # noqa: PLC0415

    url = settings.database.url.get_secret_value()
    found = [*identity(settings), *where(settings), disk(settings)]
    if not database_exists(url):
        found.append(Finding("index", "none yet: `dicom-node serve` makes it", "warning"))
        engine = None
    else:
        found.append(migrations(url))
        engine = make_engine(url)
    found += [*models(settings), broker(settings), *destinations(settings, "problem")]
    found.append(admin_url(settings))
    if engine is not None:
        found += accounts(engine)
        engine.dispose()
    return found


def identity(settings: Settings) -> list[Finding]:
    node, security = settings.node, settings.security
    tls = f"TLS ({security.tls_cert})" if security.tls_cert else "no TLS"
    callers = (
        f"{len(security.allowed_calling_aes)} calling AE titles allowed"
        if security.allowed_calling_aes
        else "any calling AE title"
    )
    return [Finding("DICOM", f"{node.ae_title} on {node.host}:{node.port}, {tls}, {callers}")]


def where(settings: Settings) -> list[Finding]:
    queue = (
        f"Celery at {masked(settings)['queue']['broker_url']}"
        if settings.queue.broker_url
        else f"embedded, {settings.queue.embedded_workers} worker process(es)"
    )
    return [
        Finding("data dir", str(settings.node.data_dir)),
        Finding("storage", str(settings.storage.root)),
        Finding("database", str(masked(settings)["database"]["url"])),
        Finding("queue", queue),
    ]


def disk(settings: Settings) -> Finding:
    root = Path(settings.storage.root)
    while not root.exists() and root != root.parent:
        root = root.parent
    free_mb = shutil.disk_usage(root).free / 1e6
    floor = settings.storage.min_free_mb
    text = f"{free_mb / 1000:.1f} GB free at {root} (refuses C-STORE below {floor} MB)"
    if free_mb < floor:
        return Finding("disk", text, "problem")
    return Finding("disk", text, "warning" if free_mb < 2 * floor else "ok")


def migrations(url: str) -> Finding:
    from dicom_node.db.migrate import revisions  # noqa: PLC0415

    current, head = revisions(url)
    if current == head:
        return Finding("index", f"migrations at head ({head})")
    return Finding(
        "index",
        f"at revision {current}, the package has {head}: `dicom-node db upgrade`",
        "problem",
    )


def models(settings: Settings) -> list[Finding]:
    from dicom_node.admin.read.models import describe_models  # noqa: PLC0415

    rows = describe_models(settings.model_path)
    found = [
        Finding(
            "model",
            f"{r.name} {r.version or '?'} ({r.runner or '?'}, {r.status}) in {r.folder}",
            "ok" if r.status == "ok" else "problem",
        )
        for r in rows
    ]
    if not rows:
        looked = ", ".join(map(str, settings.model_path))
        found.append(Finding("model", f"none found in {looked}", "problem"))
    have = {r.name for r in rows if r.status == "ok"}
    for rule in settings.rules:
        missing = [m for m in rule.models if m not in have]
        text = f"{rule.name}: {', '.join(rule.match.modality) or 'any modality'} -> "
        text += ", ".join(rule.models)
        if missing:
            text += f" (not usable: {', '.join(missing)})"
        found.append(Finding("rule", text, "problem" if missing else "ok"))
    if not settings.rules:
        found.append(Finding("rule", "none: studies are received and kept, nothing runs"))
    return found


def destinations(settings: Settings, unreachable: Level = "warning") -> list[Finding]:
    """Each destination with its C-ECHO (in parallel). One that does not answer is a warning
    at start (the outbox waits for it), a problem for ``doctor``."""
    if not settings.destinations:
        return [
            Finding(
                "destination",
                "none: results are kept; `dicom-node exports send --job JOB --to DEST` later",
            )
        ]
    with ThreadPoolExecutor(max_workers=min(8, len(settings.destinations))) as pool:
        answers = list(pool.map(lambda d: _echo(settings, d), settings.destinations))
    return [
        Finding(
            "destination",
            f"{d.name}: {d.ae_title}@{d.host}:{d.port} ({d.profile})"
            + (", C-ECHO ok" if not error else f", C-ECHO failed: {error}"),
            "ok" if not error else unreachable,
        )
        for d, error in zip(settings.destinations, answers, strict=True)
    ]


def _echo(settings: Settings, dest: DestinationSettings) -> str:
    from dicom_node.export.scu import echo  # noqa: PLC0415 - pynetdicom SCU

    quick = dest.model_copy(
        update={
            "acse_timeout_s": min(dest.acse_timeout_s, ECHO_TIMEOUT_S),
            "dimse_timeout_s": min(dest.dimse_timeout_s, ECHO_TIMEOUT_S),
        }
    )
    return echo(quick, dest.calling_ae or settings.node.ae_title)


def broker(settings: Settings) -> Finding:
    if settings.queue.broker_url is None:
        return Finding("broker", "none (embedded workers)")
    shown = masked(settings)["queue"]["broker_url"]
    try:
        from kombu import Connection  # noqa: PLC0415 - only with a broker
        from kombu.exceptions import OperationalError  # noqa: PLC0415
    except ImportError:
        return Finding("broker", f"{shown}: Celery is not installed (extra 'queue')", "problem")
    try:
        with Connection(settings.queue.broker_url.get_secret_value(), connect_timeout=3) as c:
            c.ensure_connection(max_retries=1)
    except (OperationalError, OSError) as exc:  # kombu wraps the transport's errors
        return Finding("broker", f"{shown} unreachable: {exc}", "problem")
    except (KeyError, ValueError) as exc:  # no such transport, or a URL it cannot parse
        return Finding("broker", f"{shown} is not a broker URL kombu knows: {exc}", "problem")
    return Finding("broker", f"{shown} reachable")


def admin_url(settings: Settings) -> Finding:
    admin = settings.admin
    if not admin.enabled:
        return Finding("admin UI", "disabled ([admin] enabled = false)")
    return Finding("admin UI", f"http://{admin.host}:{admin.port}/")


def accounts(engine: Engine) -> list[Finding]:
    from dicom_node.admin.users import Role, list_users  # noqa: PLC0415

    users = [u for u in list_users(engine) if not u["disabled"]]
    admins = sum(1 for u in users if u["role"] == Role.ADMIN)
    text = f"{len(users)} account(s), {admins} admin(s)"
    if admins:
        return [Finding("users", text)]
    return [
        Finding(
            "users",
            f"{text}: nobody can act in the UI; `dicom-node users add NAME --role admin`",
            "warning",
        )
    ]


def render(title: str, findings: list[Finding]) -> str:
    """The findings as one block: a title, then one line each (``!`` a warning, ``X`` a
    problem), then a count of what needs looking at."""
    width = max(len(f.topic) for f in findings)
    lines = [title]
    lines += [f" {MARK[f.level]} {f.topic:<{width}}  {f.text}" for f in findings]
    problems = sum(f.level == "problem" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
    lines.append(f"   {problems} problem(s), {warnings} warning(s)")
    return "\n".join(lines)
