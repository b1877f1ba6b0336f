from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.domain import orientation_label
from dicom_node.jobs.rules import SeriesFacts, evaluate, refusal
from dicom_node.settings import RuleMatch, RuleSettings, SettingsError, load_settings

CT = "1.2.840.10008.5.1.4.1.1.2"


def series(uid: str, **kw: object) -> SeriesFacts:
    base: dict[str, object] = {
        "series_uid": uid,
        "modality": "CT",
        "sop_class_uid": CT,
        "series_description": "HEAD",
        "body_part": "HEAD",
        "image_type": ("ORIGINAL", "PRIMARY", "AXIAL"),
        "orientation": "AXIAL",
        "slice_thickness_mm": 2.5,
        "instances": 50,
        "calling_aes": frozenset({"CT1"}),
        "called_aes": frozenset({"DICOM_NODE"}),
    }
    base.update(kw)
    return SeriesFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("match", "facts", "reason"),
    [
        (RuleMatch(modality=("MR",)), {}, "Modality CT not in ['MR']"),
        (RuleMatch(), {"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")}, "is LOCALIZER"),
        (RuleMatch(), {"image_type": ("DERIVED", "SECONDARY")}, "is DERIVED/SECONDARY"),
        (RuleMatch(), {"orientation": "SAGITTAL"}, "orientation SAGITTAL not in ['AXIAL']"),
        (RuleMatch(min_slices=60), {}, "slice count 50 outside [60, ]"),
        (RuleMatch(max_thickness_mm=1.5), {}, "SliceThickness 2.5 outside [, 1.5]"),
        (RuleMatch(series_description="lung"), {}, "does not match /lung/"),
        (RuleMatch(body_part=("CHEST",)), {}, "BodyPartExamined HEAD not in ['CHEST']"),
        (RuleMatch(calling_ae=("PACS",)), {}, "calling AE ['CT1'] not in ['PACS']"),
        (RuleMatch(sop_class=("1.2.3",)), {}, f"SOP Class {CT} not in ['1.2.3']"),
        (RuleMatch(image_type=("AXIAL", "PRIMARY")), {"image_type": ("ORIGINAL",)}, "lacks"),
    ],
)
def test_each_criterion_explains_itself(
    match: RuleMatch, facts: dict[str, object], reason: str
) -> None:
    got = refusal(match, series("1.1", **facts))
    assert got is not None and reason in got


def test_matching_series_passes() -> None:
    assert (
        refusal(
            RuleMatch(modality=("ct",), series_description="^head$", min_slices=10), series("1.1")
        )
        is None
    )


def test_selection_most_slices_and_thinnest() -> None:
    facts = [
        series("1.1", instances=30, slice_thickness_mm=5.0),
        series("1.2", instances=120, slice_thickness_mm=1.25),
        series("1.3", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), instances=2),
    ]
    rule = RuleSettings(name="ct", models=("ct-tissue",), match=RuleMatch(modality=("CT",)))
    [out] = evaluate([rule], facts)
    assert out.chosen == ("1.2",)
    assert "most_slices took 1.2" in out.reasons["1.1"]
    assert "LOCALIZER" in out.reasons["1.3"]
    thin = rule.model_copy(update={"select": "thinnest_slices"})
    assert evaluate([thin], facts[:2])[0].chosen == ("1.2",)
    every = rule.model_copy(update={"select": "all"})
    assert evaluate([every], facts)[0].chosen == ("1.1", "1.2")


def test_rule_that_matches_nothing() -> None:
    rule = RuleSettings(name="mr", models=("m",), match=RuleMatch(modality=("MR",)))
    [out] = evaluate([rule], [series("1.1")])
    assert out.chosen == () and "Modality" in out.reasons["1.1"]


@pytest.mark.parametrize(
    ("iop", "label"),
    [
        ([1, 0, 0, 0, 1, 0], "AXIAL"),
        ([1, 0, 0, 0, 0.9483237, -0.3173047], "AXIAL"),  # the Philips CT, gantry tilt -18.5
        ([0, 1, 0, 0, 0, -1], "SAGITTAL"),
        ([1, 0, 0, 0, 0, -1], "CORONAL"),
        ([1, 0, 0, 0, 0.7071, -0.7071], "OBLIQUE"),
        (None, None),
        (["a", 0, 0, 0, 1, 0], None),
        ([0, 0, 0, 0, 0, 0], None),
    ],
)
def test_orientation_label(iop: object, label: str | None) -> None:
    assert orientation_label(iop) == label


def test_rules_from_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text("""
[[rules]]
name = "ct-head"
models = ["ct-tissue"]
priority = "stat"
[rules.match]
modality = ["CT"]
min_slices = 20
""")
    [rule] = load_settings(cfg).rules
    assert (rule.name, rule.models, rule.priority, rule.match.min_slices) == (
        "ct-head",
        ("ct-tissue",),
        "stat",
        20,
    )


def test_bad_rule_regex_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        '[[rules]]\nname = "x"\nmodels = ["m"]\n[rules.match]\nseries_description = "("\n'
    )
    with pytest.raises(SettingsError, match=r"invalid setting rules\.0\.match\.series_description"):
        load_settings(cfg)


def test_the_default_rule_sends_ct_series_to_the_shipped_reference_model() -> None:
    """No [[rules]] in the config: CT series of 10+ slices go to ct-tissue; MR, localizers and
    a 3-slice scout do not. A config with its own rules replaces the default entirely."""
    [rule] = load_settings().rules
    assert rule.models == ("ct-tissue",) and not rule.confidence_map
    assert refusal(rule.match, series("ct")) is None
    assert refusal(rule.match, series("mr", modality="MR")) == "Modality MR not in ['CT']"
    assert refusal(rule.match, series("few", instances=3)) == "slice count 3 outside [10, ]"
    assert "LOCALIZER" in str(
        refusal(rule.match, series("loc", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")))
    )
    [outcome] = evaluate(load_settings().rules, [series("ct"), series("mr", modality="MR")])
    assert outcome.models == ("ct-tissue",) and outcome.chosen == ("ct",)
    assert load_settings(rules=[]).rules == ()
