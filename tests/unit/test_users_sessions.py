"""Admin accounts and sessions on SQLite (``dicom_node.admin.users``, ``.sessions``): names and
passwords checked, every login audited, the throttle per client and the alarm per name, and
server-side sessions that end on logout, change, idleness and age."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from dicom_node.admin import sessions, users
from dicom_node.admin.users import LoginThrottle, Role, UserError
from dicom_node.db.models import AdminSession, AuditEvent, utcnow
from dicom_node.settings import AdminSettings
from tests.rows import sqlite_index

ADMIN = AdminSettings(session_idle_s=600, session_max_age_s=3600)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = sqlite_index(tmp_path)
    users.add_user(engine, "ada", "correct horse", Role.ADMIN)
    return engine


def audited(engine: Engine, event: str) -> list[tuple[str, dict[str, object]]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(AuditEvent.actor, AuditEvent.details)
            .where(AuditEvent.event_type == event)
            .order_by(AuditEvent.id)
        ).all()
    return [(str(a), dict(d or {})) for a, d in rows]


# --- accounts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "password", "message"),
    [
        ("", "long enough", "user names are 1-64"),
        ("a b", "long enough", "user names are 1-64"),
        ("x" * 65, "long enough", "user names are 1-64"),
        ("bob", "short", "at least 8 characters"),
        ("ada", "long enough", "user 'ada' exists"),
    ],
)
def test_names_and_passwords_are_checked(
    engine: Engine, name: str, password: str, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        users.add_user(engine, name, password, Role.VIEWER)


def test_a_new_user_is_audited_with_its_role_and_the_hash_is_not_the_password(
    engine: Engine,
) -> None:
    users.add_user(engine, "vic", "viewer pass", Role.VIEWER, actor="cli:root")
    assert audited(engine, "user.added")[-1] == ("cli:root", {"role": "viewer"})
    listed = {u["name"]: u for u in users.list_users(engine)}
    assert listed["vic"]["role"] == "viewer" and listed["vic"]["last_login_at"] is None
    assert "viewer pass" not in str(listed)


def test_the_right_password_logs_in_and_is_audited_with_the_client(engine: Engine) -> None:
    throttle = LoginThrottle()
    found = users.authenticate(engine, "ada", "correct horse", "192.0.2.7", throttle)
    assert found is not None and found.may_act and found.role is Role.ADMIN
    assert audited(engine, "user.login") == [("ada", {"client": "192.0.2.7"})]
    assert users.list_users(engine)[0]["last_login_at"] is not None


@pytest.mark.parametrize(("name", "password"), [("ada", "wrong horse"), ("nobody", "whatever1")])
def test_a_wrong_password_or_unknown_name_fails_alike(
    engine: Engine, name: str, password: str
) -> None:
    assert users.authenticate(engine, name, password, "192.0.2.7", LoginThrottle()) is None
    [(actor, details)] = audited(engine, "user.login_failed")
    assert actor == "anonymous"
    assert details == {"client": "192.0.2.7", "reason": "unknown user, disabled or wrong password"}


def test_a_disabled_user_cannot_log_in_and_a_viewer_may_not_act(engine: Engine) -> None:
    users.add_user(engine, "vic", "viewer pass", Role.VIEWER)
    viewer = users.authenticate(engine, "vic", "viewer pass", throttle=LoginThrottle())
    assert viewer is not None and not viewer.may_act
    users.change_user(engine, "vic", disabled=True)
    assert users.authenticate(engine, "vic", "viewer pass", throttle=LoginThrottle()) is None
    assert users.account(engine, "vic") is None


def test_changing_an_unknown_user_is_an_error_and_no_change_is_nothing(engine: Engine) -> None:
    with pytest.raises(UserError, match="no user 'bob'"):
        users.change_user(engine, "bob", role=Role.VIEWER)
    with pytest.raises(UserError, match="at least 8"):
        users.change_user(engine, "ada", password="short")  # noqa: S106
    users.change_user(engine, "ada")
    assert audited(engine, "user.changed") == []


# --- the throttle ---------------------------------------------------------------------------


def test_three_failures_are_free_then_the_wait_doubles(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(users.time, "monotonic", lambda: now[0])
    throttle = LoginThrottle()
    for _ in range(3):
        assert throttle.wait_s("ada", "a") == 0
        throttle.failed("ada", "a")
    assert throttle.wait_s("ada", "a") == 2.0
    throttle.failed("ada", "a")
    assert throttle.wait_s("ada", "a") == 4.0
    assert throttle.wait_s("ada", "other client") == 0  # another client is never locked out
    now[0] += 4.0
    assert throttle.wait_s("ada", "a") == 0
    throttle.succeeded("ada", "a")
    assert throttle.wait_s("ada", "a") == 0


def test_failures_age_out_of_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(users.time, "monotonic", lambda: now[0])
    throttle = LoginThrottle()
    for _ in range(6):
        throttle.failed("ada", "a")
    assert throttle.wait_s("ada", "a") > 0
    now[0] += users.FAILURE_WINDOW_S + 1
    assert throttle.wait_s("ada", "a") == 0


def test_the_alarm_rings_once_a_window_for_failures_from_all_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    monkeypatch.setattr(users.time, "monotonic", lambda: now[0])
    throttle = LoginThrottle()
    rang = [throttle.failed("ada", f"client-{k}") for k in range(users.ALARM_FAILURES + 5)]
    assert rang.count(True) == 1 and rang.index(True) == users.ALARM_FAILURES - 1


def test_a_throttled_login_is_refused_before_the_password_is_checked(engine: Engine) -> None:
    throttle = LoginThrottle()
    for _ in range(users.FREE_FAILURES):
        users.authenticate(engine, "ada", "wrong horse", "192.0.2.9", throttle)
    with pytest.raises(users.LoginThrottledError) as caught:
        users.authenticate(engine, "ada", "correct horse", "192.0.2.9", throttle)
    assert caught.value.retry_after_s > 0
    assert len(audited(engine, "user.login_failed")) == users.FREE_FAILURES


# --- sessions -------------------------------------------------------------------------------


def test_a_session_finds_its_account_until_logout(engine: Engine) -> None:
    token = sessions.start(engine, "ada", "192.0.2.7", ADMIN)
    found = sessions.lookup(engine, token, ADMIN)
    assert found is not None and found.name == "ada"
    assert sessions.lookup(engine, "forged", ADMIN) is None
    sessions.end(engine, token)
    assert sessions.lookup(engine, token, ADMIN) is None


def test_the_database_keeps_only_the_tokens_digest(engine: Engine) -> None:
    token = sessions.start(engine, "ada", None, ADMIN)
    with engine.connect() as conn:
        [key] = conn.execute(select(AdminSession.id)).scalars()
    assert token not in key and len(key) == 64


def test_every_login_makes_a_new_token(engine: Engine) -> None:
    assert sessions.start(engine, "ada", None, ADMIN) != sessions.start(engine, "ada", None, ADMIN)


@pytest.mark.parametrize(
    "change", [{"password": "battery staple"}, {"role": Role.VIEWER}, {"disabled": True}]
)
def test_a_changed_user_loses_every_session_at_once(
    engine: Engine, change: dict[str, object]
) -> None:
    tokens = [sessions.start(engine, "ada", None, ADMIN) for _ in range(2)]
    users.change_user(engine, "ada", **change)  # type: ignore[arg-type]
    assert [sessions.lookup(engine, t, ADMIN) for t in tokens] == [None, None]
    assert audited(engine, "user.changed")[-1][1]["sessions_ended"] == 2


def _age(engine: Engine, **values: object) -> None:
    with engine.begin() as conn:
        conn.execute(update(AdminSession).values(**values))


def test_an_idle_session_ends(engine: Engine) -> None:
    token = sessions.start(engine, "ada", None, ADMIN)
    _age(engine, last_seen_at=utcnow() - timedelta(seconds=601))
    assert sessions.lookup(engine, token, ADMIN) is None
    with engine.connect() as conn:
        assert conn.execute(select(AdminSession.id)).first() is None  # and its row is gone


def test_a_session_ends_at_its_maximum_age_even_when_busy(engine: Engine) -> None:
    token = sessions.start(engine, "ada", None, ADMIN)
    _age(engine, expires_at=utcnow() - timedelta(seconds=1))
    assert sessions.lookup(engine, token, ADMIN) is None


def test_use_moves_the_idle_clock_on(engine: Engine) -> None:
    token = sessions.start(engine, "ada", None, ADMIN)
    _age(engine, last_seen_at=utcnow() - timedelta(seconds=500))
    assert sessions.lookup(engine, token, ADMIN) is not None  # touched now
    with engine.connect() as conn:
        seen = conn.execute(select(AdminSession.last_seen_at)).scalar_one()
    assert utcnow() - seen < timedelta(seconds=5)
