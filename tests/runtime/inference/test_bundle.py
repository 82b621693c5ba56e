"""Model bundles (task grouping's output): several contract ONNX files plus a manifest, loaded and
served exactly like one model.

The members are `export_bright_box_model` split in two (segmentation + depth, detection +
super-resolution): the whole bright-box model is the independent reference, so a bundle of its
two halves must give exactly its outputs, its metrics and its node topics.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from mtl_perception.inference.bundle import FORMAT, ModelBundle, merge_metadata, read_manifest, write_bundle
from mtl_perception.inference.loader import load_model
from mtl_perception.inference.model import ModelError, PerceptionModel
from tests.runtime.model_factory import DETECTION, export_bright_box_model, write_bright_box_bag

MODEL_W, MODEL_H = 64, 48
SEG_DEPTH, DET_SR = ("segmentation", "depth"), ("detection", "super_resolution")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Member files (and the whole model as the reference) in one folder."""
    root = tmp_path_factory.mktemp("bundle_parts")
    export_bright_box_model(root / "full.onnx", (MODEL_W, MODEL_H))
    export_bright_box_model(root / "seg_depth.onnx", (MODEL_W, MODEL_H), tasks=SEG_DEPTH, name="seg-depth")
    export_bright_box_model(root / "det_sr.onnx", (MODEL_W, MODEL_H), tasks=DET_SR, name="det-sr")
    export_bright_box_model(root / "depth_only.onnx", (MODEL_W, MODEL_H), tasks=("depth",), name="depth-only")
    export_bright_box_model(root / "det_sr_small.onnx", (MODEL_W, 32), tasks=DET_SR, name="det-sr-small")
    export_bright_box_model(root / "det_sr_bgr.onnx", (MODEL_W, MODEL_H), tasks=DET_SR, color_order="bgr")
    (root / "garbage.onnx").write_bytes(b"\x08\x01this is not a model" * 10)
    data = (root / "det_sr.onnx").read_bytes()
    (root / "truncated.onnx").write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="module")
def bundle_dir(parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "grouped"
    write_bundle(out, [parts / "seg_depth.onnx", parts / "det_sr.onnx"], name="grouped",
                 provenance={"grouping": {"method": "test", "budget": 2}})
    return out


def write_manifest(folder: Path, parts: Path, members, **fields) -> Path:
    """A hand-written manifest (bundle.json) in `folder`, with copies of `members` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    for m in members:
        if (parts / m).exists():
            shutil.copyfile(parts / m, folder / m)
    doc = {"format": FORMAT, "schema": 1, "name": "hand", "models": list(members)}
    doc.update(fields)
    path = folder / "bundle.json"
    path.write_text(json.dumps(doc))
    return path


def frames():
    rng = np.random.default_rng(3)
    bright = np.zeros((MODEL_H, MODEL_W, 3), np.uint8)
    bright[10:30, 20:40] = (255, 0, 0)
    return [bright, rng.integers(0, 256, (MODEL_H, MODEL_W, 3), dtype=np.uint8)]


# ------------------------------------------------------------------------- loading, running
def test_bundle_equals_its_members_and_the_whole_model(parts, bundle_dir):
    manifest = bundle_dir / "bundle.json"
    doc = json.loads(manifest.read_text())
    assert doc == {"format": FORMAT, "schema": 1, "name": "grouped", "models": ["seg_depth.onnx", "det_sr.onnx"],
                   "provenance": {"grouping": {"method": "test", "budget": 2}}}
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["bundle.json", "det_sr.onnx", "seg_depth.onnx"]

    whole = load_model(parts / "full.onnx")
    members = [load_model(parts / "seg_depth.onnx"), load_model(parts / "det_sr.onnx")]
    for path in (bundle_dir, manifest):  # the folder or the manifest itself
        bundle = load_model(path)
        assert isinstance(bundle, ModelBundle) and bundle.path == manifest
        assert (bundle.name, bundle.input_size, bundle.providers) == ("grouped", (MODEL_W, MODEL_H),
                                                                      ["CPUExecutionProvider"])
        assert bundle.tasks == whole.tasks  # the same contract: kinds, classes, ranges, top-K, scale
        assert list(bundle.tasks) == ["depth", "segmentation", "detection", "super_resolution"]  # member order
        assert bundle.metadata.input == whole.metadata.input
        bundle.metadata.validate()
        assert bundle.metadata.provenance["grouping"] == {"method": "test", "budget": 2}
        assert [m["file"] for m in bundle.metadata.provenance["bundle"]["members"]] == doc["models"]
        for image in frames():
            got = bundle.run(image)
            alone = {**members[0].run(image), **members[1].run(image)}
            reference = whole.run(image)
            assert got.keys() == alone.keys() == reference.keys()
            for task, roles in got.items():
                assert roles.keys() == alone[task].keys() == reference[task].keys()
                for role, value in roles.items():
                    assert value.dtype == alone[task][role].dtype
                    np.testing.assert_array_equal(value, alone[task][role])
                    np.testing.assert_array_equal(value, reference[task][role])
        with pytest.raises(ValueError, match="expected a 48x64x3 uint8 image"):
            bundle.run(np.zeros((32, 64, 3), np.uint8))

    # a manifest under another name, in another folder, naming members by relative path
    other = bundle_dir.parent / "elsewhere"
    other.mkdir()
    (other / "grouping.json").write_text(json.dumps(
        {"format": FORMAT, "schema": 1, "models": ["../grouped/seg_depth.onnx", "../grouped/det_sr.onnx"]}))
    renamed = load_model(other / "grouping.json")
    assert renamed.name == "grouping" and list(renamed.tasks) == list(bundle.tasks)
    assert isinstance(load_model(parts / "full.onnx"), PerceptionModel)  # single files load as before


def test_merged_metadata_qualifies_clashing_tensor_names_and_merges_metrics(parts):
    a = load_model(parts / "seg_depth.onnx").metadata
    b = load_model(parts / "det_sr.onnx").metadata
    a = dataclasses.replace(a, provenance={"metrics": {"val/depth/abs_rel": 0.1, "val/loss": 1.0}})
    b = dataclasses.replace(b, provenance={"metrics": {"val/detection/map50": 0.5, "val/loss": 2.0}})
    # b's SR tensor renamed to a name a already uses: kept distinct in the merged metadata
    b.tasks["super_resolution"] = dataclasses.replace(b.tasks["super_resolution"], outputs={"image": "depth"})
    merged = merge_metadata([("a.onnx", a), ("b.onnx", b)], "m")
    assert merged.tasks["depth"].outputs == {"depth": "depth"}
    assert merged.tasks["super_resolution"].outputs == {"image": "b.onnx/depth"}
    assert merged.provenance["metrics"] == {"val/depth/abs_rel": 0.1, "val/detection/map50": 0.5}  # loss: ambiguous
    merged.validate()

    # the same kind under two task names: refused (the node publishes one topic per kind)
    renamed = dataclasses.replace(a, tasks={"depth_near": a.tasks["depth"]})
    with pytest.raises(ModelError, match=r"members a.onnx \('depth'\) and c.onnx \('depth_near'\) both serve a depth"):
        merge_metadata([("a.onnx", a), ("c.onnx", renamed)], "m", where="x.json")


# ------------------------------------------------------------------------------------ errors
ERROR_CASES = {
    # case: (members copied, manifest fields or raw text, expected message fragment, names a member)
    "missing_member": (["seg_depth.onnx", "nowhere.onnx"], {}, "member nowhere.onnx: model file not found", True),
    "corrupt_member": (["seg_depth.onnx", "garbage.onnx"], {}, "member garbage.onnx: cannot load model", True),
    "truncated_member": (["seg_depth.onnx", "truncated.onnx"], {}, "member truncated.onnx: cannot load model", True),
    "same_task_twice": (["seg_depth.onnx", "depth_only.onnx"], {},
                        "members seg_depth.onnx and depth_only.onnx both serve task 'depth'", True),
    "different_input_size": (["seg_depth.onnx", "det_sr_small.onnx"], {},
                             "member det_sr_small.onnx takes 64x32 rgb input but seg_depth.onnx takes 64x48 rgb", True),
    "different_colour_order": (["seg_depth.onnx", "det_sr_bgr.onnx"], {},
                               "member det_sr_bgr.onnx takes 64x48 bgr input", True),
    "listed_twice": (["seg_depth.onnx", "seg_depth.onnx"], {}, "member seg_depth.onnx is listed twice", True),
    "empty": ([], {}, "bundle lists no models", False),
    "models_not_a_list": ([], {"models": "seg_depth.onnx"}, "'models' must be a list", False),
    "wrong_format": (["seg_depth.onnx"], {"format": "something.else"}, "not a model bundle manifest", False),
    "future_schema": (["seg_depth.onnx"], {"schema": 2}, "bundle schema is 2; this runtime reads schema 1", False),
    "not_json": (["seg_depth.onnx"], "{not json", "bundle manifest is not valid JSON", False),
    "not_an_object": (["seg_depth.onnx"], "[1, 2]", "bundle manifest is not a JSON object", False),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_bundles_are_one_line_errors_naming_manifest_and_member(parts, tmp_path, case):
    members, fields, fragment, names_member = ERROR_CASES[case]
    folder = tmp_path / case
    if isinstance(fields, str):
        manifest = write_manifest(folder, parts, members)
        manifest.write_text(fields)
    else:
        manifest = write_manifest(folder, parts, members, **fields)
    with pytest.raises(ModelError) as info:
        load_model(folder)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"{manifest}: "), message
    assert fragment in message, message
    if names_member:
        assert members[-1] in message


def test_missing_manifest_and_folder_without_manifest(tmp_path):
    with pytest.raises(ModelError, match="bundle manifest not found"):
        load_model(tmp_path / "nope.json")
    with pytest.raises(ModelError, match=f"{tmp_path}: folder has no bundle.json"):
        load_model(tmp_path)


def test_write_bundle_refuses_members_that_do_not_combine_and_writes_nothing(parts, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(ModelError) as info:
        write_bundle(out, [parts / "seg_depth.onnx", parts / "depth_only.onnx"])
    assert "both serve task 'depth'" in str(info.value) and "\n" not in str(info.value)
    assert not out.exists()
    with pytest.raises(ModelError, match="member missing.onnx: model file not found"):
        write_bundle(out, [parts / "seg_depth.onnx", parts / "missing.onnx"])
    with pytest.raises(ModelError, match="bundle lists no models"):
        write_bundle(out, [])
    with pytest.raises(ModelError, match="two members are named seg_depth.onnx"):
        write_bundle(out, [parts / "seg_depth.onnx", tmp_path / "x" / "seg_depth.onnx"])
    assert not out.exists()

    # members already in place (the manifest beside them) are not copied; link mode works
    manifest = write_bundle(parts / "in_place.json", [parts / "seg_depth.onnx", parts / "det_sr.onnx"], link=True)
    assert manifest == parts / "in_place.json" and read_manifest(manifest)["name"] == "in_place"
    linked = write_bundle(tmp_path / "linked", [parts / "seg_depth.onnx", parts / "det_sr.onnx"], link=True)
    assert (linked.parent / "det_sr.onnx").read_bytes() == (parts / "det_sr.onnx").read_bytes()
    assert not list(linked.parent.glob(".*"))  # no temporary files left behind
    manifest.unlink()


# ------------------------------------------------------------------ CLI, evaluate, eval-bag
def test_cli_bundle_and_info(parts, tmp_path, capsys):
    from mtl_perception.cli import main

    out = tmp_path / "cli" / "grouped.json"
    assert main(["bundle", str(out), str(parts / "seg_depth.onnx"), str(parts / "det_sr.onnx"), "--name", "g2",
                 "--provenance", '{"grouping": {"budget": 2}}']) == 0
    text = capsys.readouterr().out
    assert f"bundle: {out}" in text and "name: g2" in text
    assert json.loads(out.read_text())["provenance"] == {"grouping": {"budget": 2}}

    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"model: {out}" in text and "input: 64x48 rgb" in text
    assert "member seg_depth.onnx: name seg-depth, tasks depth (depth), segmentation (segmentation)" in text
    assert "member det_sr.onnx: name det-sr, tasks detection (detection), super_resolution (super_resolution)" in text
    for task in ("segmentation", "depth", "detection", "super_resolution"):
        assert f"task {task} ({task})" in text

    assert main(["bundle", str(tmp_path / "bad.json"), str(parts / "seg_depth.onnx"),
                 str(parts / "depth_only.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mtl-perception: error:") and "\n" not in err and "both serve task 'depth'" in err
    assert main(["info", str(tmp_path / "cli")]) == 2  # a folder without bundle.json
    assert "folder has no bundle.json" in capsys.readouterr().err


def test_evaluate_and_eval_bag_score_a_bundle_like_the_whole_model(parts, bundle_dir, tmp_path, capsys):
    from mtl_perception.cli import main
    from mtl_perception.data.dataset import DatasetWriter
    from tests.runtime.model_factory import bright_box_frame

    # evaluate: a two-frame dataset of the bright-box scene
    rgb, seg, depth, boxes, names = bright_box_frame()
    keep = [i for i, n in enumerate(names) if n in DETECTION]
    frame = type("Frame", (), dict(image=rgb, semantic=seg, depth=depth, boxes=boxes[keep].astype(np.float32),
                                   labels=np.array([DETECTION.index(names[i]) for i in keep]), night=False))
    with DatasetWriter(tmp_path / "ds", semantic_classes=["background", "bright"], detection_classes=DETECTION) as w:
        w.add(frame)
        w.add(frame)
    reports = {}
    for label, model in (("whole", parts / "full.onnx"), ("bundle", bundle_dir)):
        assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "ds"), "--no-progress",
                     "--json", str(tmp_path / f"{label}.json")]) == 0
        reports[label] = json.loads((tmp_path / f"{label}.json").read_text())
    capsys.readouterr()
    assert reports["bundle"]["model"] == str(bundle_dir / "bundle.json") and reports["bundle"]["frames"] == 2
    assert reports["bundle"]["tasks"] == reports["whole"]["tasks"]
    assert reports["bundle"]["tasks"]["super_resolution"]["psnr"] == 100.0

    # eval-bag: same metrics, same output topics
    write_bright_box_bag(tmp_path / "bag", "mcap", frames=3)
    for label, model in (("whole", parts / "full.onnx"), ("bundle", bundle_dir / "bundle.json")):
        assert main(["eval-bag", str(tmp_path / "bag"), "--model", str(model), "--out", str(tmp_path / f"r_{label}"),
                     "--no-progress", "--samples", "0", "--output-bag", str(tmp_path / f"o_{label}")]) == 0
        reports[label] = json.loads((tmp_path / f"r_{label}" / "metrics.json").read_text())
    assert "3 of 3 frames" in capsys.readouterr().out
    assert reports["bundle"]["tasks"] == reports["whole"]["tasks"]
    assert reports["bundle"]["tasks"]["detection"]["map50"] == 1.0
    assert reports["bundle"]["model"]["name"] == "grouped"

    from mtl_perception.bags.io import open_bag

    topics = []
    for label in ("whole", "bundle"):
        with open_bag(tmp_path / f"o_{label}") as reader:
            topics.append({name: info.count for name, info in reader.topics.items()})
    assert topics[0] == topics[1] and len(topics[1]) == 6 and set(topics[1].values()) == {3}


def test_benchmark_runs_a_bundle(bundle_dir, tmp_path, monkeypatch, capsys):
    """`mtl-perception benchmark` on a bundle: model alone, ROS floor, end to end through the node
    (short run: its structure, not its timings)."""
    pytest.importorskip("rclpy", reason="rclpy is not installed (see scripts/setup_ros.sh)")
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not installed")
    from mtl_perception.cli import main

    for name in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):  # the benchmark sets them
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--model", str(bundle_dir), "--width", "160", "--height", "120", "--frames", "8",
                 "--rate", "20", "--json", str(out)]) == 0
    capsys.readouterr()
    result = json.loads(out.read_text())
    assert result["model"]["name"] == "grouped" and result["model"]["path"] == str(bundle_dir / "bundle.json")
    assert result["outputs"] == ["segmentation", "segmentation/color", "depth", "detections", "super_resolution",
                                 "super_resolution/camera_info"]
    assert result["end_to_end"]["frames_published"] == 20 and result["end_to_end"]["count"] > 0  # one block of 20
    assert result["model_only"]["count"] > 0


# --------------------------------------------------------------------------- the ROS 2 node
def test_node_serves_every_output_of_a_bundle(bundle_dir):
    """perception_node in its own process with the bundle's manifest: all outputs of both members
    with the types, sizes and closed-form content of the whole model (tests/runtime/ros/test_node.py helpers)."""
    from tests.runtime.ros.test_node import (  # skips without rclpy / vision_msgs
        BRIGHT_BOX_CLASSES,
        FIXED_BOX,
        IMAGE_H,
        IMAGE_W,
        RECT,
        SX,
        SY,
        NodeProcess,
        Probe,
        header_ok,
        image_to_array,
        scene,
    )

    ns = "/bundle_node_test"
    manifest = bundle_dir / "bundle.json"
    node = NodeProcess("-r", f"__ns:={ns}", "-p", f"model_path:={manifest}", "-p", "diagnostics_period:=0.5")
    probe = Probe(ns)
    try:
        frame = scene("bgr8")
        out = probe.outputs_for(frame)
        assert node.alive(), node.log()
        for topic, msg in out.items():
            assert header_ok(msg, frame), topic
        seg = out["segmentation"]
        assert (seg.encoding, seg.width, seg.height) == ("mono8", MODEL_W, MODEL_H)
        expected = np.zeros((MODEL_H, MODEL_W), np.uint8)
        expected[int(RECT[1] / SY):int(RECT[3] / SY), int(RECT[0] / SX):int(RECT[2] / SX)] = 1
        np.testing.assert_array_equal(image_to_array(seg), expected)
        assert (out["segmentation/color"].encoding, out["segmentation/color"].width) == ("bgr8", MODEL_W)
        depth = out["depth"]
        assert (depth.encoding, depth.width, depth.height) == ("32FC1", MODEL_W, MODEL_H)
        np.testing.assert_allclose(image_to_array(depth)[expected == 1], 255 / 32.0)
        sr = out["super_resolution"]
        assert (sr.encoding, sr.width, sr.height) == ("bgr8", 2 * MODEL_W, 2 * MODEL_H)
        info = out["super_resolution/camera_info"]
        assert (info.width, info.height) == (2 * MODEL_W, 2 * MODEL_H)
        dets = out["detections"].detections
        assert [d.results[0].hypothesis.class_id for d in dets] == [DETECTION[0], DETECTION[1]]
        x1, y1, x2, y2 = RECT
        assert (dets[0].bbox.center.position.x, dets[0].bbox.center.position.y) == (
            pytest.approx((x1 + x2) / 2), pytest.approx((y1 + y2) / 2))
        assert (dets[0].bbox.size_x, dets[0].bbox.size_y) == (pytest.approx(x2 - x1), pytest.approx(y2 - y1))
        assert dets[1].bbox.size_x == pytest.approx((FIXED_BOX[2] - FIXED_BOX[0]) * SX)
        assert (IMAGE_W, IMAGE_H) == (640, 360)

        deadline = time.monotonic() + 10
        status = labels = None
        while time.monotonic() < deadline and (status is None or not labels):
            with probe.lock:
                labels = list(probe.labels)
                status = next((s for s in reversed(probe.diagnostics)
                               if int({v.key: v.value for v in s.values}["frames_processed"]) > 0), None)
            time.sleep(0.1)
        assert labels and [(c.class_id, c.class_name) for c in labels[-1].class_map] == list(
            enumerate(BRIGHT_BOX_CLASSES))
        assert status is not None, "no diagnostics from the node"
        values = {v.key: v.value for v in status.values}
        assert (values["model"], values["model_path"], values["provider"]) == (
            "grouped", str(manifest), "CPUExecutionProvider")
        assert "model 'grouped' 64x48 rgb" in node.log()
    finally:
        probe.close()
        assert node.stop() == 0


def test_node_refuses_a_bad_bundle_in_one_line(parts, tmp_path):
    from tests.runtime.ros.test_node import _run_node  # skips without rclpy / vision_msgs

    manifest = write_manifest(tmp_path / "bad", parts, ["seg_depth.onnx", "depth_only.onnx"])
    result = _run_node("-r", "__ns:=/bundle_bad", "-p", f"model_path:={manifest.parent}")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and str(manifest) in errors[0] and "both serve task 'depth'" in errors[0], output
    assert "Traceback" not in output
