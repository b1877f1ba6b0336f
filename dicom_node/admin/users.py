"""Admin accounts: argon2id password hashes (argon2-cffi), two roles, every change audited."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, func, insert, select, update

from dicom_node.audit.recorder import AuditEventType, record
from dicom_node.db.models import AuditEvent, User, utcnow

_HASHER = PasswordHasher()  # argon2id, salted, the library's current parameters
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 8
# After this many failed logins for one name within the window, that name is refused until the
# window has passed (a password guesser gets a few tries per quarter hour, not thousands).
MAX_FAILURES = 10
FAILURE_WINDOW = timedelta(minutes=15)


class Role(enum.StrEnum):
    ADMIN = "admin"  # may act: retry, cancel, resend, force-complete, re-run
    VIEWER = "viewer"  # read-only


class UserError(ValueError):
    """A refused account change, with a message for the admin."""


class LoginThrottledError(Exception):
    """Too many failed logins for this name lately."""


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
        record(
            conn,
            AuditEventType.USER_CHANGED,
            entity_type="user",
            entity_id=name,
            actor=actor,
            details={
                "password_changed": password is not None,
                **({"role": str(role)} if role is not None else {}),
                **({"disabled": disabled} if disabled is not None else {}),
            },
        )


def authenticate(engine: Engine, name: str, password: str) -> Account | None:
    """The account when the password matches an enabled user; every attempt is audited.
    Raises ``LoginThrottledError`` after ``MAX_FAILURES`` failures within ``FAILURE_WINDOW``."""
    name = name[:64]
    with engine.begin() as conn:
        failures = conn.execute(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.event_type == str(AuditEventType.USER_LOGIN_FAILED),
                AuditEvent.entity_id == name,
                AuditEvent.at >= utcnow() - FAILURE_WINDOW,
            )
        ).scalar_one()
        if failures >= MAX_FAILURES:
            raise LoginThrottledError(name)
        row = conn.execute(
            select(User.password_hash, User.role, User.disabled).where(User.name == name)
        ).first()
        ok = False
        if row is not None and not row.disabled:
            try:
                ok = _HASHER.verify(row.password_hash, password)
            except (VerificationError, InvalidHashError):
                ok = False
        if ok and row is not None and _HASHER.check_needs_rehash(row.password_hash):
            conn.execute(
                update(User).where(User.name == name).values(password_hash=_HASHER.hash(password))
            )
        if ok:
            conn.execute(update(User).where(User.name == name).values(last_login_at=utcnow()))
        record(
            conn,
            AuditEventType.USER_LOGIN if ok else AuditEventType.USER_LOGIN_FAILED,
            entity_type="user",
            entity_id=name,
            actor=name if ok else "anonymous",
            details={} if ok else {"reason": "unknown user, disabled or wrong password"},
        )
    return Account(name, Role(row.role)) if ok and row is not None else None


def account(engine: Engine, name: str) -> Account | None:
    """The enabled account of that name (looked up on every request: a disabled user is out)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(User.role).where(User.name == name, User.disabled.is_(False))
        ).first()
    return Account(name, Role(row.role)) if row is not None else None


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
