"""Routing rules: a pure function from a complete study's series to the models that run on them.

Every series a rule does not take gets the reason, in the standard's words, so an admin can ask
``dicom-node rules test STUDY_UID`` why a model did or did not run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dicom_node.settings import RuleMatch, RuleSettings


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    """What the index knows of one series (attributes of its first instance, and counts)."""

    series_uid: str
    modality: str | None
    sop_class_uid: str | None
    series_description: str | None
    body_part: str | None
    image_type: tuple[str, ...]
    orientation: str | None
    slice_thickness_mm: float | None
    instances: int
    calling_aes: frozenset[str] = frozenset()
    called_aes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    rule: str
    models: tuple[str, ...]
    priority: str
    chosen: tuple[str, ...]  # series UIDs the models run on; empty = the rule does not apply
    reasons: dict[str, str] = field(default_factory=dict)  # series UID -> why not chosen


BACKSLASH = "\\"


def _any_of(label: str, allowed: Sequence[str], value: str | None) -> str | None:
    if allowed and (value or "").upper() not in {a.upper() for a in allowed}:
        return f"{label} {value or '(none)'} not in {list(allowed)}"
    return None


def _range(label: str, low: float | None, high: float | None, value: float | None) -> str | None:
    if low is None and high is None:
        return None
    if value is None:
        return f"{label} unknown"
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'' if low is None else f'{low:g}'}, {'' if high is None else f'{high:g}'}]"
        return f"{label} {value:g} outside {bounds}"
    return None


def _image_type(m: RuleMatch, s: SeriesFacts) -> str | None:
    present = set(s.image_type)
    shown = BACKSLASH.join(s.image_type) or "(none)"
    if missing := [v for v in m.image_type if v.upper() not in present]:
        return f"ImageType {shown} lacks {missing}"
    if excluded := [v for v in m.exclude_image_type if v.upper() in present]:
        return f"ImageType {shown} is {'/'.join(excluded)}"
    return None


def _description(m: RuleMatch, s: SeriesFacts) -> str | None:
    if m.series_description and not re.search(
        m.series_description, s.series_description or "", re.IGNORECASE
    ):
        return f"SeriesDescription {s.series_description!r} does not match /{m.series_description}/"
    return None


def _aes(label: str, allowed: Sequence[str], seen: frozenset[str]) -> str | None:
    if allowed and not seen & set(allowed):
        return f"{label} {sorted(seen) or '(unknown)'} not in {list(allowed)}"
    return None


CHECKS: tuple[Callable[[RuleMatch, SeriesFacts], str | None], ...] = (
    lambda m, s: _any_of("Modality", m.modality, s.modality),
    lambda m, s: _any_of("SOP Class", m.sop_class, s.sop_class_uid),
    lambda m, s: _any_of("BodyPartExamined", m.body_part, s.body_part),
    _image_type,
    lambda m, s: _any_of("orientation", m.orientation, s.orientation),
    _description,
    lambda m, s: _range("slice count", m.min_slices, m.max_slices, s.instances),
    lambda m, s: _range(
        "SliceThickness", m.min_thickness_mm, m.max_thickness_mm, s.slice_thickness_mm
    ),
    lambda m, s: _aes("calling AE", m.calling_ae, s.calling_aes),
    lambda m, s: _aes("called AE", m.called_ae, s.called_aes),
)


def refusal(match: RuleMatch, series: SeriesFacts) -> str | None:
    """The first criterion ``series`` fails, or ``None`` if the rule may take it."""
    for check in CHECKS:
        if (reason := check(match, series)) is not None:
            return reason
    return None


def _select(rule: RuleSettings, candidates: list[SeriesFacts]) -> tuple[list[SeriesFacts], str]:
    if rule.select == "all" or len(candidates) <= 1:
        return candidates, ""
    if rule.select == "most_slices":
        best = max(candidates, key=lambda s: (s.instances, -(s.slice_thickness_mm or 1e9)))
        return [best], f"not chosen: {rule.select} took {best.series_uid} ({best.instances} slices)"
    best = min(candidates, key=lambda s: (s.slice_thickness_mm or 1e9, -s.instances))
    return [best], (
        f"not chosen: {rule.select} took {best.series_uid} ({best.slice_thickness_mm:g} mm)"
    )


def evaluate(rules: Sequence[RuleSettings], series: Sequence[SeriesFacts]) -> list[RuleOutcome]:
    outcomes = []
    for rule in rules:
        reasons: dict[str, str] = {}
        candidates = []
        for s in series:
            reason = refusal(rule.match, s)
            if reason is None:
                candidates.append(s)
            else:
                reasons[s.series_uid] = reason
        chosen, why_not = _select(rule, candidates)
        for s in candidates:
            if s not in chosen:
                reasons[s.series_uid] = why_not
        outcomes.append(
            RuleOutcome(
                rule.name, rule.models, rule.priority, tuple(s.series_uid for s in chosen), reasons
            )
        )
    return outcomes
