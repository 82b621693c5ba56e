"""`mtl-train cost --sharing`: the N-task model against its single-task models and the trunk, all
exported and timed through the runtime in the same rounds; the summary's ratios and head costs
follow from the rows."""
import statistics

import pytest

from training.experiments.sharing_cost import markdown, sharing_cost, summarise
from training.recipe.core import load_recipe


def _row(model, ms, rounds, flops=1.0, params=1.0):
    components = {} if model in ("all", "trunk") else {f"head:{model}": {"flops": flops, "params": params}}
    return {"head": "depthwise", "model": model, "onnx_latency_ms": ms, "onnx_latency_ms_rounds": rounds,
            "flops": flops, "params": params, "components": components}


def test_per_round_ratio_is_taken_within_each_round():
    """The machine halves its speed in the last round: the ratio of medians moves, the per-round
    ratio does not (every round's ratio is 0.3)."""
    rows = [_row("all", 3.0, [3.0, 3.0, 6.0]), _row("a", 5.0, [5.0, 5.0, 10.0]),
            _row("b", 5.0, [5.0, 5.0, 10.0]), _row("trunk", 2.0, [2.0, 2.0, 4.0])]
    rows[0]["onnx_latency_ms"] = 4.5  # medians over all runs need not follow the rounds
    s = summarise(rows)
    assert s["onnx_latency_ms_round_ratio"] == pytest.approx(0.3)
    assert s["onnx_latency_ms_round_ratio_quartiles"] == pytest.approx([0.3, 0.3])
    assert s["onnx_latency_ms_ratio"] == pytest.approx(0.45)
    assert s["heads"]["a"]["ms"] == pytest.approx(3.0) and s["trunk_ms"] == 2.0
    assert "shared_profile_ms" not in s and "profile_ms" not in s["heads"]["a"]
    rows[0]["profile_ms"] = {"shared": 2.5, "a": 0.25}  # b ran nothing of its own
    s = summarise(rows)
    assert s["shared_profile_ms"] == 2.5
    assert s["heads"]["a"]["profile_ms"] == 0.25 and s["heads"]["b"]["profile_ms"] == 0.0


def test_sharing_cost_exports_times_and_summarises_every_model():
    recipe = load_recipe("config/quick.yaml", ["data.input_size=[96,64]"])
    result = sharing_cost(recipe, heads=("depthwise",), runs=3, rounds=3)
    rows = result["rows"]
    tasks = result["tasks"]
    assert [r["model"] for r in rows] == ["all", *tasks, "trunk"]
    assert all(len(r["onnx_latency_ms_rounds"]) == 3 and r["onnx_latency_ms"] > 0 for r in rows)
    s = result["summary"]["depthwise"]
    singles = [r for r in rows if r["model"] in tasks]
    per_round = [a / sum(b) for a, *b in zip(rows[0]["onnx_latency_ms_rounds"],
                                             *(r["onnx_latency_ms_rounds"] for r in singles))]
    assert s["onnx_latency_ms_round_ratio"] == pytest.approx(statistics.median(per_round))
    assert s["flops_ratio"] == pytest.approx(rows[0]["flops"] / sum(r["flops"] for r in singles))
    # one network with four heads costs less than four networks: more than 1/4, less than 1
    assert 0.25 < s["flops_ratio"] < 1.0 and 0.25 < s["params_ratio"] < 1.0
    assert set(s["heads"]) == set(tasks)
    # the N-task model's own profile prices every head and the shared trunk
    assert s["shared_profile_ms"] > 0 and all(s["heads"][t]["profile_ms"] > 0 for t in tasks)
    assert set(rows[0]["profile_ms"]) <= {*tasks, "shared", "unused"}
    text = markdown(result)
    assert "**" in text and "per round" in text and "ms in the N-task model (profile)" in text
