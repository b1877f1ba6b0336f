"""What the rules see of a study (``dicom_node.jobs.facts``): series facts from the index, and
one candidate per stack from the stored files' headers. Real slices go in through the intake,
as the SCP would store them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import Engine, insert

from dicom_node.db.models import Association, utcnow
from dicom_node.jobs import facts
from dicom_node.jobs.facts import study_series_facts, study_stack_facts
from dicom_node.storage.index import AssociationCache
from tests.recompose import new_series, straight, with_localizer
from tests.rows import make_intake, request, sqlite_index


@pytest.fixture
def site(tmp_path: Path, testdata: Path) -> tuple[Engine, Path, str]:
    """One study: the straight CT (28 x 5 mm) as one series, sent by CT1, and the same slices
    with the localizer among them as a second series, sent by CT2."""
    engine = sqlite_index(tmp_path)
    root = tmp_path / "storage"
    intake = make_intake(engine, root)
    study = generate_uid()
    plain = new_series(straight(testdata), "plain")
    mixed = with_localizer(testdata)
    with engine.begin() as conn:
        for name, ae in (("a1", "CT1"), ("a2", "CT2")):
            conn.execute(
                insert(Association),
                {
                    "id": name,
                    "calling_ae": ae,
                    "called_ae": "NODE",
                    "peer_host": "127.0.0.1",
                    "peer_port": 1,
                    "pid": 1,
                    "started_at": utcnow(),
                },
            )
    for series, association, number in ((plain, "a1", 2), (mixed, "a2", 3)):
        for ds in series:
            ds.StudyInstanceUID = study
            ds.SeriesNumber = number
            req = replace(request(ds), association_id=association)
            intake.accept(req, AssociationCache())
    return engine, root, study


def test_series_facts_come_from_the_index(site: tuple[Engine, Path, str]) -> None:
    engine, _root, study = site
    with engine.connect() as conn:
        found = study_series_facts(conn, study)
        assert study_series_facts(conn, "1.2.3.4") is None
    assert found is not None
    assert [s.instances for s in found] == [28, 29]  # by series number
    assert [s.calling_aes for s in found] == [frozenset({"CT1"}), frozenset({"CT2"})]
    assert {s.called_aes for s in found} == {frozenset({"NODE"})}
    assert {s.modality for s in found} == {"CT"}
    assert found[0].orientation == "AXIAL"
    assert found[0].slice_thickness_mm == pytest.approx(5.0)


def test_each_stack_is_its_own_candidate(site: tuple[Engine, Path, str]) -> None:
    engine, root, study = site
    with engine.connect() as conn:
        candidates = study_stack_facts(conn, study, root)
    assert candidates is not None
    plain, *mixed = candidates
    assert (plain.instances, plain.stacks_in_series) == (28, 1)
    assert plain.key == plain.series_uid
    assert sorted(c.instances for c in mixed) == [1, 28]  # the localizer, and the axial stack
    assert {c.stacks_in_series for c in mixed} == {2}
    by_size = {c.instances: c for c in mixed}
    assert by_size[28].orientation == "AXIAL"
    assert "LOCALIZER" in by_size[1].image_type
    assert len({c.key for c in mixed}) == 2  # the outcomes can tell them apart


def test_stacks_are_cached_until_the_series_changes(
    site: tuple[Engine, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, root, study = site
    calls: list[str] = []
    real = facts.series_stacks

    def counting(paths: list[Path]) -> object:
        calls.append(str(paths[0]))
        return real(paths)

    monkeypatch.setattr(facts, "series_stacks", counting)
    monkeypatch.setattr(facts, "_CACHE", facts._StackCache(size=8))
    with engine.connect() as conn:
        first = study_stack_facts(conn, study, root)
        again = study_stack_facts(conn, study, root)
    assert len(calls) == 2  # two series, read once each
    assert first == again


def test_a_series_whose_files_cannot_be_split_is_one_candidate(
    site: tuple[Engine, Path, str],
) -> None:
    engine, root, study = site
    with engine.connect() as conn:
        series = study_series_facts(conn, study)
    assert series is not None
    mixed = series[1].series_uid
    next((root / "instances" / study / mixed).glob("*.dcm")).write_bytes(b"edited on disk")
    with engine.connect() as conn:
        candidates = study_stack_facts(conn, study, root)
    assert candidates is not None
    assert [(c.series_uid, c.instances, c.stack is None) for c in candidates] == [
        (series[0].series_uid, 28, False),
        (mixed, 29, True),  # the rules see it whole; the worker says why it cannot be read
    ]


def test_the_cache_keeps_the_newest_entries() -> None:
    cache = facts._StackCache(size=2)
    for n in range(3):
        cache.put(("r", "s", n, n), None)
    assert cache.get(("r", "s", 0, 0)) == (False, None)
    assert cache.get(("r", "s", 2, 2)) == (True, None)
