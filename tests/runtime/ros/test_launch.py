"""The launch file and the parameter file (ros2 launch itself is not installable here)."""
from __future__ import annotations

import ast
import re

import pytest
import yaml

from tests import REPO as ROOT

LAUNCH = ROOT / "launch" / "perception.launch.py"
PARAMS = ROOT / "config" / "perception.yaml"
ARGUMENTS = {"model_path", "image_topic", "camera_info_topic", "params_file", "namespace", "use_sim_time"}


def _calls(tree: ast.AST, name: str):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def test_launch_file_parses_and_declares_the_documented_arguments():
    tree = ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))
    compile(tree, str(LAUNCH), "exec")
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    declared = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}
    assert declared == ARGUMENTS
    used = {c.args[0].value for c in _calls(tree, "LaunchConfiguration")}
    assert used == ARGUMENTS  # every argument is used, nothing undeclared is read
    (node,) = _calls(tree, "Node")
    keywords = {k.arg: k.value for k in node.keywords}
    assert keywords["package"].value == "mtl_perception"
    assert keywords["executable"].value == "perception_node"
    remapped = {e.elts[0].value for e in keywords["remappings"].elts}
    assert remapped == {"image", "camera_info"}
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert imports <= {"LaunchDescription", "DeclareLaunchArgument", "LaunchConfiguration",
                       "PathJoinSubstitution", "Node", "ParameterValue", "FindPackageShare"}


def test_launch_description_builds_where_launch_ros_exists():
    pytest.importorskip("launch_ros", reason="launch_ros is not installable here (no wheel)")
    import importlib.util

    spec = importlib.util.spec_from_file_location("perception_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert len(description.entities) == len(ARGUMENTS) + 1


def test_console_scripts_and_installed_data_files_are_declared():
    setup = (ROOT / "setup.py").read_text()
    assert re.search(r'"perception_node = mtl_perception\.ros\.node:main"', setup)
    assert re.search(r'"camera_source = mtl_perception\.ros\.camera_source:main"', setup)
    assert 'glob("launch/*.py")' in setup and 'glob("config/*.yaml")' in setup


def test_params_file_matches_the_parameters_the_node_declares():
    rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed")
    pytest.importorskip("vision_msgs.msg")
    from mtl_perception.ros.node import PerceptionNode

    doc = yaml.safe_load(PARAMS.read_text())
    assert list(doc) == ["/**"]
    params = doc["/**"]["ros__parameters"]
    context = rclpy.Context()
    rclpy.init(context=context, args=[])
    try:
        node = PerceptionNode(context=context)
        try:
            declared = {name: node.get_parameter(name).value for name in node._parameters}
        finally:
            node.destroy_node()
    finally:
        context.try_shutdown()
    for name, value in params.items():
        assert name in declared, f"{name} in config/perception.yaml is not a node parameter"
        default = declared[name]
        assert type(value) is type(default) or (isinstance(default, list) and isinstance(value, list)), name
        assert value == default, f"{name}: the file says {value!r}, the node's default is {default!r}"
    # every node parameter but model_path (and ROS's own ones) is documented in the file
    ros_own = {"use_sim_time", "start_type_description_service"}  # the latter: Iron and later
    assert set(declared) - set(params) - ros_own == {"model_path"}
