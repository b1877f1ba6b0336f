"""The one loop guard (``dicom_node.loops``) and the status vocabulary (``dicom_node.statuses``)."""

from __future__ import annotations

import threading

import pytest

from dicom_node import statuses
from dicom_node.loops import Loop, guarded


def test_a_failed_step_waits_one_interval_and_the_loop_goes_on() -> None:
    calls: list[int] = []
    done = threading.Event()

    def step() -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("one bad row")
        if len(calls) >= 3:
            done.set()
        return True  # more to do: no wait

    loop = Loop("test-loop", step, 0.05, event="step_failed")
    loop.start()
    assert done.wait(10), "the loop stopped after the failed step"
    loop.stop()
    loop.join(10)
    assert not loop.is_alive() and len(calls) >= 3


def test_wake_cuts_the_wait_short_and_stop_ends_it() -> None:
    ran = threading.Semaphore(0)
    loop = Loop("test-wake", ran.release, 3600.0, event="x", wait_first=True)
    loop.start()
    assert not ran.acquire(timeout=0.2)  # waits first, for an hour
    loop.wake()
    assert ran.acquire(timeout=10)
    loop.stop()
    loop.join(10)
    assert not loop.is_alive()


def test_guarded_returns_the_step_s_value_or_none() -> None:
    assert guarded(lambda: 7, "x") == 7
    assert guarded(lambda: 1 / 0, "x") is None


@pytest.mark.parametrize(
    ("status", "meaning"),
    [
        (0x0000, "Success"),
        (0x0210, "Failure: duplicate invocation (Message ID already in use)"),
        (0x0213, "Failure: resource limitation"),
        (0xA7FE, "Out of Resources"),
        (0xA9FF, "Error: Data Set does not match SOP Class"),
        (0xC123, "Error: Cannot understand"),
        (0xB123, "Warning"),
        (0x0001, "Failure"),
    ],
)
def test_a_peer_status_is_read_by_the_standard(status: int, meaning: str) -> None:
    assert statuses.meaning(status) == meaning


def test_the_node_s_own_answers_all_have_names() -> None:
    own = [v for k, v in vars(statuses).items() if k.isupper() and isinstance(v, int)]
    assert all(statuses.NAMES.get(v) or statuses.STANDARD_NAMES.get(v) for v in own)
