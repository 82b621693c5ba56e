"""mtl_perception.ros.watchdog: the "no frames" decision counts from when a publisher appeared
(or the last frame), not from the node's activation."""
from __future__ import annotations

from mtl_perception.ros.watchdog import InputWatch, input_state


def test_a_camera_starting_late_does_not_warn_at_start_up():
    watch = InputWatch(timeout=5.0)
    # Node active at t=0; no publisher for 10 s (longer than the timeout): waiting, no warning.
    for t in range(0, 11):
        assert watch.poll(0, float(t)).status == "waiting"
    # The camera appears at t=10 and its first frame arrives at t=12 (2 s late).
    assert watch.poll(1, 10.0).status == "ok"
    assert watch.poll(1, 12.0).silent_for == 2.0
    watch.frame(12.0)
    assert watch.poll(1, 16.9).status == "ok"
    state = watch.poll(1, 17.0)
    assert state.status == "silent" and state.silent_for == 5.0 and state.publishers == 1


def test_a_publisher_that_never_sends_warns_after_the_timeout_from_its_appearance():
    watch = InputWatch(timeout=3.0)
    watch.poll(0, 0.0)
    watch.poll(2, 50.0)
    assert watch.poll(2, 52.9).status == "ok"
    assert watch.poll(2, 53.0).status == "silent"


def test_a_publisher_that_goes_away_and_comes_back_restarts_the_count():
    watch = InputWatch(timeout=3.0)
    watch.poll(1, 0.0)
    watch.frame(1.0)
    assert watch.poll(0, 2.0).status == "waiting"
    assert watch.poll(1, 20.0).status == "ok"  # old last frame (t=1) is before the new publisher
    assert watch.poll(1, 22.0).silent_for == 2.0


def test_input_state_closed_form():
    assert input_state(0, 10.0, None, None, 1.0).status == "waiting"
    assert input_state(1, 10.0, 4.0, None, 5.0).status == "silent"
    assert input_state(1, 10.0, 4.0, 6.0, 5.0).status == "ok"
    assert input_state(1, 10.0, 6.0, 4.0, 5.0).silent_for == 4.0
