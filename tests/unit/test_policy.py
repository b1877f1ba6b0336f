from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dicom_node.domain import StudyState
from dicom_node.studies.policy import CompletionPolicy, CompletionReason, StudyEvidence, decide

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = CompletionPolicy(quiet_period_s=60, settle_s=3, force_complete_after_s=3600)


def evidence(
    state: StudyState = StudyState.RECEIVING,
    *,
    quiet_s: float,
    age_s: float = 100,
    open_: int = 0,
    unreleased: int = 0,
) -> tuple[StudyEvidence, datetime]:
    now = T0 + timedelta(seconds=age_s)
    return StudyEvidence(state, T0, now - timedelta(seconds=quiet_s), open_, unreleased), now


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"quiet_s": 2.9}, None),
        ({"quiet_s": 3.0}, CompletionReason.SETTLED),
        ({"quiet_s": 30, "open_": 1}, None),  # an open association may deliver more
        ({"quiet_s": 30, "unreleased": 1}, None),  # an abort is no evidence of the end
        ({"quiet_s": 59.9, "open_": 1}, None),
        ({"quiet_s": 60, "open_": 1}, CompletionReason.QUIET_PERIOD),
        ({"quiet_s": 60, "unreleased": 2}, CompletionReason.QUIET_PERIOD),
        ({"quiet_s": 1, "age_s": 3600, "open_": 1}, CompletionReason.DEADLINE),
        ({"quiet_s": 1, "age_s": 3599, "open_": 1}, None),
    ],
)
def test_decide(kwargs: dict[str, float], expected: CompletionReason | None) -> None:
    ev, now = evidence(**kwargs)  # type: ignore[arg-type]
    assert decide(ev, now, POLICY) == expected


@pytest.mark.parametrize("state", [StudyState.RECEIVING, StudyState.REOPENED])
def test_open_states_complete(state: StudyState) -> None:
    ev, now = evidence(state, quiet_s=10)
    assert decide(ev, now, POLICY) is CompletionReason.SETTLED


def test_complete_study_is_left_alone() -> None:
    ev, now = evidence(StudyState.COMPLETE, quiet_s=10_000, age_s=10_000)
    assert decide(ev, now, POLICY) is None


def test_trickle_with_gaps_up_to_quiet_period_is_never_completed() -> None:
    """A sender holding its association open and sending every 59 s for 50 minutes."""
    for minute in range(50):
        ev, now = evidence(quiet_s=59, age_s=minute * 60 + 59, open_=1)
        assert decide(ev, now, POLICY) is None
