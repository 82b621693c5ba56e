"""The one interleaved timer: every runner in every round, in turn, after its warm-up; torch's
thread count set while timing and put back."""
import torch

from training.experiments.timing import round_ratios, time_interleaved


def test_rounds_interleave_the_runners_and_count_every_call():
    calls = []
    runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    timed = time_interleaved(runners, runs=6, rounds=3, warmup=2)
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up
    assert calls[4:] == ["a", "a", "b", "b"] * 3  # three rounds of ceil(6 / 3) calls each, in turn
    assert set(timed) == {"a", "b"} and all(len(t["rounds"]) == 3 and t["ms"] >= 0 for t in timed.values())


def test_ratios_are_per_round_and_exact_for_a_runner_against_itself():
    timed = {"ref": {"ms": 2.0, "rounds": [1.0, 2.0, 4.0]}, "x": {"ms": 6.0, "rounds": [3.0, 6.0, 12.0]}}
    assert round_ratios(timed, "ref") == {"ref": 1.0, "x": 3.0}  # a slow round slows both alike


def test_torch_threads_are_set_while_timing_and_restored():
    before = torch.get_num_threads()
    seen = []
    time_interleaved({"t": lambda: seen.append(torch.get_num_threads())}, runs=1, rounds=1, warmup=0)
    assert seen == [1] and torch.get_num_threads() == before
