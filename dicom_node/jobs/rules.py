"""Routing rules: a pure function from a complete study's stacks to the models that run on them.

Rules select stacks, not series: a series is split first (``dicom_node.jobs.stacks``), and each
stack is a candidate with its own orientation, ImageType, SliceThickness and slice count. A stack
that matches a rule but cannot be one volume (slices missing, two frames at one position, a
mosaic) is *refused*: it gets its own FAILED job that says why, and does not stop another stack
from running. Every stack a rule does not take gets the reason, in the standard's words, so an
admin can ask ``dicom-node rules test STUDY_UID`` why a model did or did not run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from dicom_node.domain import orientation_label
from dicom_node.jobs.stacks import GeometryError, Stack, layout
from dicom_node.settings import RuleMatch, RuleSettings


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    """What the index knows of one series (attributes of its first instance, and counts), or,
    with ``stack``, of one stack of it (its own orientation, ImageType, thickness and frames)."""

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
    stack: Stack | None = field(default=None, compare=False, repr=False)
    stacks_in_series: int = 1

    @property
    def key(self) -> str:
        """How outcomes name the candidate: the series UID, plus the stack when it has several."""
        if self.stack is None or self.stacks_in_series == 1:
            return self.series_uid
        return f"{self.series_uid} stack {self.stack.number}"


def stack_facts(series: SeriesFacts, stacks: Sequence[Stack]) -> list[SeriesFacts]:
    """One candidate per stack of ``series``, each with the stack's own geometry."""
    out = []
    for stack in stacks:
        first = stack.frames[0]
        out.append(
            replace(
                series,
                image_type=first.image_type or series.image_type,
                orientation=orientation_label(first.orientation),
                slice_thickness_mm=first.thickness,
                instances=len(stack.frames),
                stack=stack,
                stacks_in_series=len(stacks),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class StackVerdict:
    """One candidate as a rule saw it: what it is, and why it was or was not chosen."""

    key: str
    series_uid: str
    stack: int | None  # the stack number within its series; None = the series as a whole
    label: str  # e.g. "stack 2, axial, 512x512, 42 frames"
    slices: int
    spacing: str | None  # e.g. "23 x 4.00 mm + 1 x 5.10 mm + 17 x 7.00 mm"
    verdict: str  # "chosen", "refused" or "not chosen"
    why: str


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    rule: str
    models: tuple[str, ...]
    priority: str
    chosen: tuple[str, ...]  # candidate keys the models run on; empty = nothing to run
    reasons: dict[str, str] = field(default_factory=dict)  # candidate key -> why not chosen
    refused: dict[str, str] = field(default_factory=dict)  # matched, not one volume: FAILED jobs
    stacks: tuple[StackVerdict, ...] = ()  # every candidate, in the study's order


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
        return [best], f"not chosen: {rule.select} took {best.key} ({best.instances} slices)"
    best = min(candidates, key=lambda s: (s.slice_thickness_mm or 1e9, -s.instances))
    thickness = "unknown" if best.slice_thickness_mm is None else f"{best.slice_thickness_mm:g} mm"
    return [best], f"not chosen: {rule.select} took {best.key} ({thickness})"


def _geometry(rule: RuleSettings, s: SeriesFacts) -> tuple[str | None, str | None]:
    """The stack's spacing summary under the rule's gap settings, and its refusal if any."""
    if s.stack is None:
        return None, None
    try:
        found = layout(
            s.stack, gap_tolerance=rule.gap_tolerance, interpolate_gaps_mm=rule.interpolate_gaps_mm
        )
    except GeometryError as exc:
        return None, str(exc)
    return found.spacing, None


def evaluate(rules: Sequence[RuleSettings], series: Sequence[SeriesFacts]) -> list[RuleOutcome]:
    """Each rule's outcome on the study's candidates: the stacks chosen, and why the others were
    not."""
    outcomes = []
    for rule in rules:
        reasons: dict[str, str] = {}
        refused: dict[str, str] = {}
        spacing: dict[str, str | None] = {}
        candidates = []
        for s in series:
            spacing[s.key], problem = _geometry(rule, s)
            reason = refusal(rule.match, s)
            if reason is not None:
                reasons[s.key] = reason
            elif problem is not None:
                refused[s.key] = reasons[s.key] = f"refused: {problem}"
            else:
                candidates.append(s)
        chosen, why_not = _select(rule, candidates)
        keys = [s.key for s in chosen]
        for s in candidates:
            if s.key not in keys:
                reasons[s.key] = why_not
        verdicts = tuple(
            StackVerdict(
                key=s.key,
                series_uid=s.series_uid,
                stack=None if s.stack is None else s.stack.number,
                label=s.stack.label if s.stack is not None else "the series as a whole",
                slices=s.instances,
                spacing=spacing[s.key],
                verdict="chosen"
                if s.key in keys
                else "refused"
                if s.key in refused
                else "not chosen",
                why=reasons.get(s.key, "chosen"),
            )
            for s in series
        )
        outcomes.append(
            RuleOutcome(
                rule.name,
                rule.models,
                rule.priority,
                tuple(keys),
                reasons,
                {k: v.removeprefix("refused: ") for k, v in refused.items()},
                verdicts,
            )
        )
    return outcomes
