"""Admin accounts: argon2id password hashes (argon2-cffi), two roles, every change audited.

Failed logins are throttled per (name, client address), with a backoff that doubles from the
``FREE_FAILURES``-th failure up to ``MAX_BACKOFF``: a guesser gets a handful of tries per quarter
hour, and no one can lock a name out from elsewhere, because the right password from another
client is never held back. ``ALARM_FAILURES`` failures for one name within the window, from
anywhere, raise an alarm (an error log line and a ``user.login_alarm`` audit event). An unknown
or disabled name costs the same argon2 verification as a known one.
"""

from __future__ import annotations

import contextlib
import enum
import re
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, Engine, delete, insert, select, update

from dicom_node.audit.recorder import AuditEventType, record
from dicom_node.db.models import AdminSession, User, utcnow
from dicom_node.logs import get_logger

log = get_logger(__name__)
_HASHER = PasswordHasher()  # argon2id, salted, the library's current parameters
_DUMMY_HASH = _HASHER.hash("not a password anyone has")  # for unknown names: the same work
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 8
FAILURE_WINDOW_S = 15 * 60
FREE_FAILURES = 3  # per (name, client) within the window, before any backoff
MAX_BACKOFF_S = 15 * 60
ALARM_FAILURES = 20  # per name within the window, from all clients


class Role(enum.StrEnum):
    ADMIN = "admin"  # may act: retry, cancel, resend, force-complete, re-run
    VIEWER = "viewer"  # read-only


class UserError(ValueError):
    """A refused account change, with a message for the admin."""


class LoginThrottledError(Exception):
    """Too many failed logins for this name from this client lately; ``retry_after_s``."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(name)
        self.retry_after_s = retry_after_s


@dataclass
class LoginThrottle:
    """Failed logins per (name, client) and per name, within the window (in memory: the admin
    UI runs in one process; a restart forgets, which only helps the legitimate user)."""

    failures: dict[tuple[str, str], deque[float]] = field(
        default_factory=lambda: defaultdict(deque)
    )
    by_name: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    alarmed: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def _recent(times: deque[float], now: float) -> deque[float]:
        while times and times[0] < now - FAILURE_WINDOW_S:
            times.popleft()
        return times

    def wait_s(self, name: str, client: str) -> float:
        """Seconds before this client may try this name again (0: now)."""
        now = time.monotonic()
        with self.lock:
            times = self._recent(self.failures[(name, client)], now)
            if len(times) < FREE_FAILURES:
                return 0.0
            backoff = min(MAX_BACKOFF_S, 2.0 ** (len(times) - FREE_FAILURES + 1))
            return max(0.0, times[-1] + backoff - now)

    def failed(self, name: str, client: str) -> bool:
        """Count a failure; ``True`` when it raises the alarm for this name (once a window)."""
        now = time.monotonic()
        with self.lock:
            self._recent(self.failures[(name, client)], now).append(now)
            total = self._recent(self.by_name[name], now)
            total.append(now)
            if (
                len(total) >= ALARM_FAILURES
                and now - self.alarmed.get(name, -1e9) > FAILURE_WINDOW_S
            ):
                self.alarmed[name] = now
                return True
            return False

    def succeeded(self, name: str, client: str) -> None:
        with self.lock:
            self.failures.pop((name, client), None)


THROTTLE = LoginThrottle()


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    role: Role

    @property
    def may_act(self) -> bool:
        return self.role is Role.ADMIN


def add_user(engine: Engine, name: str, password: str, role: Role, *, actor: str = "cli") -> None:
    if not _NAME.match(name):
        raise UserError("user names are 1-64 letters, digits and _ . @ -")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"passwords have at least {MIN_PASSWORD} characters")
    with engine.begin() as conn:
        if conn.execute(select(User.id).where(User.name == name)).first() is not None:
            raise UserError(f"user {name!r} exists")
        conn.execute(
            insert(User),
            {
                "name": name,
                "password_hash": _HASHER.hash(password),
                "role": str(role),
                "disabled": False,
                "created_at": utcnow(),
            },
        )
        record(
            conn,
            AuditEventType.USER_ADDED,
            entity_type="user",
            entity_id=name,
            actor=actor,
            details={"role": str(role)},
        )


def change_user(
    engine: Engine,
    name: str,
    *,
    password: str | None = None,
    role: Role | None = None,
    disabled: bool | None = None,
    actor: str = "cli",
) -> None:
    values: dict[str, object] = {}
    if password is not None:
        if len(password) < MIN_PASSWORD:
            raise UserError(f"passwords have at least {MIN_PASSWORD} characters")
        values["password_hash"] = _HASHER.hash(password)
    if role is not None:
        values["role"] = str(role)
    if disabled is not None:
        values["disabled"] = disabled
    if not values:
        return
    with engine.begin() as conn:
        if conn.execute(update(User).where(User.name == name).values(**values)).rowcount != 1:
            raise UserError(f"no user {name!r}")
        # a changed password, role or state ends every session of the user, at once
        ended = conn.execute(delete(AdminSession).where(AdminSession.user_name == name)).rowcount
        record(
            conn,
            AuditEventType.USER_CHANGED,
            entity_type="user",
            entity_id=name,
            actor=actor,
            details={
                "password_changed": password is not None,
                "sessions_ended": int(ended),
                **({"role": str(role)} if role is not None else {}),
                **({"disabled": disabled} if disabled is not None else {}),
            },
        )


def authenticate(
    engine: Engine,
    name: str,
    password: str,
    client: str = "unknown",
    throttle: LoginThrottle = THROTTLE,
) -> Account | None:
    """The account when the password matches an enabled user; every attempt is audited (with
    the client address). Raises ``LoginThrottledError`` while this client must wait for this
    name. Blocking (argon2): call it off the event loop."""
    name, client = name[:64], client[:64]
    wait = throttle.wait_s(name, client)
    if wait > 0:
        raise LoginThrottledError(name, wait)
    with engine.connect() as conn:
        row = conn.execute(
            select(User.password_hash, User.role, User.disabled).where(User.name == name)
        ).first()
    usable = row is not None and not row.disabled
    matched: bool = False
    with contextlib.suppress(VerificationError, InvalidHashError):
        matched = _HASHER.verify(row.password_hash if usable and row else _DUMMY_HASH, password)
    ok = matched and usable
    with engine.begin() as conn:
        if ok and row is not None:
            values: dict[str, object] = {"last_login_at": utcnow()}
            if _HASHER.check_needs_rehash(row.password_hash):
                values["password_hash"] = _HASHER.hash(password)
            conn.execute(update(User).where(User.name == name).values(**values))
        record(
            conn,
            AuditEventType.USER_LOGIN if ok else AuditEventType.USER_LOGIN_FAILED,
            entity_type="user",
            entity_id=name,
            actor=name if ok else "anonymous",
            details={"client": client}
            if ok
            else {"client": client, "reason": "unknown user, disabled or wrong password"},
        )
        if ok:
            throttle.succeeded(name, client)
        elif throttle.failed(name, client):
            log.error("login_failures_alarm", user=name, failures=ALARM_FAILURES, client=client)
            record(
                conn,
                AuditEventType.USER_LOGIN_ALARM,
                entity_type="user",
                entity_id=name,
                details={
                    "failures": ALARM_FAILURES,
                    "window_s": FAILURE_WINDOW_S,
                    "last_client": client,
                },
            )
    return Account(name, Role(row.role)) if ok and row is not None else None


def account_in(conn: Connection, name: str) -> Account | None:
    """The enabled account of that name (looked up on every request: a disabled user is out)."""
    row = conn.execute(select(User.role).where(User.name == name, User.disabled.is_(False))).first()
    return Account(name, Role(row.role)) if row is not None else None


def account(engine: Engine, name: str) -> Account | None:
    with engine.connect() as conn:
        return account_in(conn, name)


def list_users(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                User.name, User.role, User.disabled, User.created_at, User.last_login_at
            ).order_by(User.name)
        ).all()
    return [
        {
            "name": r.name,
            "role": r.role,
            "disabled": r.disabled,
            "created_at": r.created_at.isoformat(),
            "last_login_at": r.last_login_at.isoformat() if r.last_login_at else None,
        }
        for r in rows
    ]
