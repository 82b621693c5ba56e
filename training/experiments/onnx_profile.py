"""Where a multi-task ONNX model's time goes, per task: onnxruntime's own profile of the graph
it runs, each node's time given to the task whose outputs alone depend on it.

"Single-task model minus trunk" prices a head by the difference of two noisy medians, each of a
different session. The profile prices it inside the multi-task model itself, from one session:
onnxruntime records every node it runs (after its fusions and layout changes, so the nodes are
those of the optimized graph it writes out), and a node belongs to a task when the only graph
outputs it feeds are that task's; a node that feeds outputs of two or more tasks (the encoder,
the pyramid, the input's normalisation) is `SHARED`. A task's decoding (argmax, the uint8 cast,
top-K) and the layout reorders onnxruntime adds in front of it count for that task.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Dict, Mapping, Set

import numpy as np

#: the group of nodes that feed the outputs of more than one task
SHARED = "shared"
#: the group of nodes no graph output depends on (onnxruntime still runs them)
UNUSED = "unused"


def node_groups(graph, output_groups: Mapping[str, str]) -> Dict[str, str]:
    """{node name: group} for every node of an ONNX graph: the group of the outputs it feeds
    (`output_groups`: output name -> group), `SHARED` when it feeds outputs of more than one
    group, `UNUSED` when it feeds none."""
    producer = {out: node for node in graph.node for out in node.output}
    reached: Dict[str, Set[str]] = defaultdict(set)
    for output, group in output_groups.items():
        stack = [output]
        while stack:
            node = producer.get(stack.pop())
            if node is None or group in reached[node.name]:
                continue
            reached[node.name].add(group)
            stack.extend(node.input)
    groups = {node.name: UNUSED for node in graph.node}
    groups.update({name: next(iter(found)) if len(found) == 1 else SHARED for name, found in reached.items()})
    return groups


def profile_by_group(path: Path, feed: Mapping[str, np.ndarray], output_groups: Mapping[str, str],
                     runs: int = 20) -> Dict[str, float]:
    """{group: ms per run} of the model at `path` on `feed`: every node's median kernel time over
    `runs` profiled runs (onnxruntime, CPU provider, one thread), summed by `node_groups`; nodes
    the optimized graph does not name (none expected) under "unattributed"."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="mtl-profile-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "profile")
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        options.log_severity_level = 3  # the note that a layout-optimized graph is machine specific
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(max(1, runs)):
            session.run(None, dict(feed))
        with open(session.end_profiling()) as f:
            events = json.load(f)
        groups = node_groups(onnx.load(options.optimized_model_filepath, load_external_data=False).graph,
                             output_groups)
    times: Dict[str, list] = defaultdict(list)
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            times[name[:-len("_kernel_time")]].append(event["dur"] / 1e3)
    totals: Dict[str, float] = defaultdict(float)
    for node, durations in times.items():
        totals[groups.get(node, "unattributed")] += statistics.median(durations)
    return dict(totals)
