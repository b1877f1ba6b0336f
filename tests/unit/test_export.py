"""The outbox's pure parts: DIMSE status classification, backoff, destination settings."""

from __future__ import annotations

import pytest

from dicom_node.export.outbox import backoff_s
from dicom_node.export.scu import classify
from dicom_node.settings import DestinationSettings, SettingsError, load_settings

PACS = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}


@pytest.mark.parametrize(
    ("status", "delivered", "transient", "warning"),
    [
        (0x0000, True, False, False),
        (0xB000, True, False, True),  # coercion: delivered, the warning recorded
        (0xB007, True, False, True),
        (0xA700, False, True, False),  # out of resources: try again later
        (0xA7FF, False, True, False),
        (0x0213, False, True, False),
        (0x0210, False, True, False),  # duplicate invocation: a new association starts afresh
        (0x0122, False, False, False),  # SOP Class not supported: the same bytes will not pass
        (0xA900, False, False, False),
        (0xC000, False, False, False),
        (None, False, True, False),  # no response
    ],
)
def test_statuses_are_classified(
    status: int | None, delivered: bool, transient: bool, warning: bool
) -> None:
    outcome = classify(status)
    assert (outcome.delivered, outcome.warning is not None) == (delivered, warning)
    if not delivered:
        assert outcome.transient is transient


def test_a_refusal_is_labelled_by_the_standard_not_by_the_node_own_low_bytes() -> None:
    assert "duplicate invocation" in classify(0x0210).message
    assert "out of resources" not in classify(0x0210).message.lower()
    assert classify(0xA700).message == "refused for now: 0xA700 (Out of Resources)"
    assert (
        classify(0xA701, "disk full").message
        == "refused for now: 0xA701 disk full (Out of Resources)"
    )
    assert classify(0xB006).warning == "0xB006 (Warning: elements discarded)"
    assert classify(0x0122).message == "refused: 0x0122 (Failure: SOP Class not supported)"


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    dest = DestinationSettings(**PACS, backoff_initial_s=10, backoff_max_s=60)
    for attempt, base in [(1, 10), (2, 20), (3, 40), (4, 60), (9, 60)]:
        delays = [backoff_s(dest, attempt, 0.2) for _ in range(200)]
        assert base * 0.8 <= min(delays) and max(delays) <= base * 1.2
        assert max(delays) - min(delays) > 0  # jitter spreads senders out


def test_destinations_profiles_and_rules_must_resolve() -> None:
    with pytest.raises(SettingsError, match="no profile 'nope'"):
        load_settings(destinations=[{**PACS, "profile": "nope"}])
    with pytest.raises(SettingsError, match="no destination 'elsewhere'"):
        load_settings(
            destinations=[PACS],
            rules=[{"name": "r", "models": ["m"], "destinations": ["elsewhere"]}],
        )
    with pytest.raises(SettingsError, match="distinct"):
        load_settings(destinations=[PACS, PACS])
    with pytest.raises(SettingsError, match="sr = true needs seg = true"):
        load_settings(profiles={"bad": {"seg": False}})


def test_a_rule_without_destinations_sends_everywhere() -> None:
    other = {**PACS, "name": "archive", "profile": "legacy"}
    settings = load_settings(
        destinations=[PACS, other],
        rules=[
            {"name": "all", "models": ["m"]},
            {"name": "one", "models": ["m"], "destinations": ["archive"]},
        ],
    )
    assert [d.name for d in settings.destinations_for("all")] == ["pacs", "archive"]
    assert [d.name for d in settings.destinations_for("one")] == ["archive"]
    assert settings.all_profiles["legacy"].key_images == 3
