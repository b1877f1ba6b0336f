"""When is a study complete? A pure function of the evidence, so it can be tested exhaustively.

Evidence, strongest first:

1. ``settle``: every association that delivered during this receiving episode ended with an
   A-RELEASE, and nothing has arrived for ``settle_s``. A sender that releases has finished.
2. ``quiet period``: nothing has arrived for ``quiet_period_s`` (mercure and Orthanc use 60 s).
   This covers a sender that trickles with an association held open, or one that aborted.
3. ``deadline``: the episode has lasted ``force_complete_after_s``; complete it anyway so a
   never-ending trickle still reaches the models. Late instances reopen the study.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from dicom_node.domain import OPEN_STUDY_STATES, StudyState


class CompletionReason(enum.StrEnum):
    SETTLED = "settled after release"
    QUIET_PERIOD = "quiet period"
    DEADLINE = "force-complete deadline"
    ADMIN = "forced by admin"


@dataclass(frozen=True, slots=True)
class CompletionPolicy:
    quiet_period_s: float
    settle_s: float
    force_complete_after_s: float


@dataclass(frozen=True, slots=True)
class StudyEvidence:
    state: StudyState
    opened_at: datetime
    last_received: datetime
    open_associations: int  # delivered to this study and not yet ended
    unreleased_associations: int  # ended this episode without A-RELEASE (abort, close, crash)


def decide(
    evidence: StudyEvidence, now: datetime, policy: CompletionPolicy
) -> CompletionReason | None:
    """The reason to complete the study now, or ``None`` to keep waiting."""
    if evidence.state not in OPEN_STUDY_STATES:
        return None
    quiet_s = (now - evidence.last_received).total_seconds()
    all_released = evidence.open_associations == 0 and evidence.unreleased_associations == 0
    if all_released and quiet_s >= policy.settle_s:
        return CompletionReason.SETTLED
    if quiet_s >= policy.quiet_period_s:
        return CompletionReason.QUIET_PERIOD
    if (now - evidence.opened_at).total_seconds() >= policy.force_complete_after_s:
        return CompletionReason.DEADLINE
    return None
