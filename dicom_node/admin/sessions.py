"""Server-side admin sessions: the database says whether a session exists, not the cookie.

The signed cookie carries only a random token; the ``admin_sessions`` row (keyed by its sha256)
holds the user, the client, and when it was made, last used and expires. A session ends at once
on logout, and for every session of a user whose password or role changes or who is disabled
(``users.change_user`` deletes them in the same transaction). It also ends after
``session_idle_s`` without a request and ``session_max_age_s`` after login, whichever is first.
Every login makes a new token.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import Engine, delete, insert, select, update

from dicom_node.admin.users import Account, account_in
from dicom_node.db.models import AdminSession, utcnow
from dicom_node.settings import AdminSettings

TOUCH_EVERY = timedelta(seconds=30)  # last_seen_at is written at most this often


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start(engine: Engine, name: str, client: str | None, admin: AdminSettings) -> str:
    """A new session for ``name``; returns the token for the cookie."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(delete(AdminSession).where(AdminSession.expires_at < now))  # housekeeping
        conn.execute(
            insert(AdminSession),
            {
                "id": _key(token),
                "user_name": name,
                "client": (client or "")[:64] or None,
                "created_at": now,
                "last_seen_at": now,
                "expires_at": now + timedelta(seconds=admin.session_max_age_s),
            },
        )
    return token


def lookup(engine: Engine, token: str, admin: AdminSettings) -> Account | None:
    """The session's enabled account, or ``None`` (and the row gone) if it has ended."""
    now = utcnow()
    key = _key(token)
    with engine.begin() as conn:
        row = conn.execute(select(AdminSession).where(AdminSession.id == key)).first()
        if row is None:
            return None
        idle = now - row.last_seen_at > timedelta(seconds=admin.session_idle_s)
        found = None if idle or now >= row.expires_at else account_in(conn, row.user_name)
        if found is None:
            conn.execute(delete(AdminSession).where(AdminSession.id == key))
            return None
        if now - row.last_seen_at > TOUCH_EVERY:
            conn.execute(
                update(AdminSession).where(AdminSession.id == key).values(last_seen_at=now)
            )
    return found


def end(engine: Engine, token: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(AdminSession).where(AdminSession.id == _key(token)))
