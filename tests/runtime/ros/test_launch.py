"""The launch files and the parameter file (ros2 launch itself is not installable here).

`ros2 launch` hands a node every `name:=value` as a string, and launch_ros turns a parameter
given as an untyped substitution into a value with YAML rules (`launch_ros.utilities.
evaluate_parameters`), or with `launch.utilities.type_utils.coerce_to_type` when it is a
`ParameterValue(..., value_type=...)`. The fake `launch` / `launch_ros` modules below do exactly
that, so the launch files are run here the way `ros2 launch` runs them.
"""
from __future__ import annotations

import ast
import importlib.util
import itertools
import os
import re
import sys
import types
import typing
from pathlib import Path

import pytest
import yaml

from tests import REPO as ROOT

LAUNCH = ROOT / "launch" / "perception.launch.py"
MULTI = ROOT / "launch" / "multi_camera.launch.py"
PARAMS = ROOT / "config" / "perception.yaml"
ARGUMENTS = {"model_path", "image_topic", "camera_info_topic", "params_file", "namespace", "use_sim_time",
             "image_qos", "providers", "input_transport"}


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
    for name in ARGUMENTS:  # documented in the module docstring
        assert name in ast.get_docstring(tree), name
    (node,) = _calls(tree, "Node")
    keywords = {k.arg: k.value for k in node.keywords}
    assert keywords["package"].value == "mtl_perception"
    assert keywords["executable"].value == "perception_node"
    remapped = {e.elts[0].value for e in keywords["remappings"].elts}
    assert remapped == {"image", "camera_info"}
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert imports <= {"LaunchDescription", "DeclareLaunchArgument", "LaunchConfiguration", "OpaqueFunction",
                       "PathJoinSubstitution", "Node", "ParameterValue", "FindPackageShare", "List"}


# ----------------------------------------------------------------------------- fake launch
class LaunchError(Exception):
    """What `ros2 launch` reports and stops on."""


class _Substitution:
    def perform(self, context) -> str:
        raise NotImplementedError


class _LaunchConfiguration(_Substitution):
    def __init__(self, name, default=None):
        self.name = name

    def perform(self, context) -> str:
        if self.name not in context.configurations:
            raise LaunchError(f"launch configuration '{self.name}' does not exist")
        return context.configurations[self.name]


class _PathJoin(_Substitution):
    def __init__(self, parts):
        self.parts = parts

    def perform(self, context) -> str:
        return os.path.join(*(_text(context, p) for p in self.parts))


class _FindPackageShare(_Substitution):
    def __init__(self, package):
        self.package = package

    def perform(self, context) -> str:
        return str(ROOT)  # the source tree has share/'s layout: config/, launch/


class _Entity:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _ParameterValue:
    def __init__(self, value, *, value_type=None):
        self.value, self.value_type = value, value_type


def _text(context, value) -> str:
    if isinstance(value, _Substitution):
        return value.perform(context)
    if isinstance(value, (list, tuple)):
        return "".join(_text(context, v) for v in value)
    return str(value)


def _coerce(text: str, value_type):
    """launch.utilities.type_utils.coerce_to_type (Humble .. Kilted)."""
    def as_yaml():
        return yaml.safe_load(text) if text else text
    if value_type is None:
        return as_yaml()
    if typing.get_origin(value_type) is list:
        (item,) = typing.get_args(value_type)
        out = as_yaml()
        if not isinstance(out, list) or not all(isinstance(x, item) for x in out):
            raise LaunchError(f"Cannot convert value '{text}' to a list of '{item}'")
        return out
    if value_type is str:
        return text
    if value_type in (int, float):
        return value_type(text)
    out = as_yaml()
    if not isinstance(out, bool):
        raise LaunchError(f"Cannot convert value '{text}' to '{value_type}'")
    return out


def _untyped(text: str):
    """launch_ros.utilities.evaluate_parameters: a parameter given as a bare substitution."""
    value = yaml.safe_load(text if text else "''")
    if type(value) in (bool, int, float, str, bytes):
        return value
    if isinstance(value, list) and value and len({type(v) for v in value}) == 1:
        return tuple(value)
    raise LaunchError(f"Allowed value types are bytes, bool, int, float, str, Sequence[...]. Got {type(value)}")


class _Context:
    def __init__(self, arguments):
        self.configurations = dict(arguments)  # command line: every value a string
        self.nodes = []
        self.untyped = []  # parameters that went through YAML because nothing typed them


def _evaluate_parameter(context, name, value):
    if isinstance(value, _ParameterValue):
        return _coerce(_text(context, value.value), value.value_type)
    if isinstance(value, _Substitution):
        context.untyped.append(name)
        return _untyped(_text(context, value))
    return value


def _node(context, kwargs):
    params = {}
    files = []
    for item in kwargs.get("parameters", []):
        if isinstance(item, dict):
            params.update({k: _evaluate_parameter(context, k, v) for k, v in item.items()})
        else:
            files.append(Path(_text(context, item)))
    return {"namespace": _text(context, kwargs.get("namespace", "")), "name": kwargs.get("name"),
            "executable": kwargs["executable"], "parameters": params, "params_files": files,
            "remappings": {_text(context, a): _text(context, b) for a, b in kwargs.get("remappings", [])}}


def _visit(context, entities):
    for entity in entities:
        kind, args, kwargs = entity.kind, entity.args, entity.kwargs
        if kind == "DeclareLaunchArgument":
            name, default = args[0], kwargs.get("default_value")
            if name not in context.configurations:
                if default is None:
                    raise LaunchError(f"Required launch argument \"{name}\" was not provided.")
                context.configurations[name] = _text(context, default)
            choices = kwargs.get("choices")
            if choices and context.configurations[name] not in choices:
                raise LaunchError(f"Argument \"{name}\" provided value \"{context.configurations[name]}\" is not valid")
        elif kind == "OpaqueFunction":
            _visit(context, kwargs["function"](context) or [])
        elif kind == "GroupAction":
            saved = dict(context.configurations)
            _visit(context, args[0])
            if kwargs.get("scoped", True):
                context.configurations = saved
        elif kind == "IncludeLaunchDescription":
            values = [(_text(context, k), _text(context, v)) for k, v in kwargs.get("launch_arguments", [])]
            included = _load(Path(args[0].args[0])).generate_launch_description().args[0]
            for declared in included:  # launch insists on required arguments being passed on
                if declared.kind == "DeclareLaunchArgument" and declared.kwargs.get("default_value") is None:
                    if declared.args[0] not in dict(values):
                        raise LaunchError(f"Included launch description missing required argument "
                                          f"'{declared.args[0]}'")
            context.configurations.update(values)
            _visit(context, included)
        elif kind == "Node":
            context.nodes.append(_node(context, kwargs))
        else:
            raise AssertionError(f"the fake launch does not know {kind}")


_counter = itertools.count()


def _entity_class(kind):
    return type(kind, (_Entity,), {"kind": kind})


def _fake_modules():
    classes = {k: _entity_class(k) for k in ("LaunchDescription", "DeclareLaunchArgument", "OpaqueFunction",
                                            "GroupAction", "IncludeLaunchDescription", "Node",
                                            "PythonLaunchDescriptionSource")}
    layout = {
        "launch": {"LaunchDescription": classes["LaunchDescription"]},
        "launch.actions": {k: classes[k] for k in ("DeclareLaunchArgument", "OpaqueFunction", "GroupAction",
                                                   "IncludeLaunchDescription")},
        "launch.substitutions": {"LaunchConfiguration": _LaunchConfiguration, "PathJoinSubstitution": _PathJoin},
        "launch.launch_description_sources": {
            "PythonLaunchDescriptionSource": classes["PythonLaunchDescriptionSource"]},
        "launch_ros": {},
        "launch_ros.actions": {"Node": classes["Node"]},
        "launch_ros.parameter_descriptions": {"ParameterValue": _ParameterValue},
        "launch_ros.substitutions": {"FindPackageShare": _FindPackageShare},
    }
    modules = {}
    for name, members in layout.items():
        module = types.ModuleType(name)
        module.__dict__.update(members)
        modules[name] = module
    return modules


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"fake_launch_{next(_counter)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def ros2_launch(monkeypatch):
    """ros2_launch(path, name=value, ...) -> the context: .nodes (evaluated) and .untyped."""
    for name, module in _fake_modules().items():
        monkeypatch.setitem(sys.modules, name, module)

    def run(path: Path, **arguments):
        context = _Context(arguments)
        _visit(context, _load(path).generate_launch_description().args[0])
        return context
    return run


def _node_types():
    """Parameter types the node declares, as config/perception.yaml states them (a test below
    holds the file to the node's own declarations)."""
    params = yaml.safe_load(PARAMS.read_text())["/**"]["ros__parameters"]
    types_ = {name: type(value) for name, value in params.items()}
    types_.update(model_path=str, use_sim_time=bool, input_transport=str)  # not in the file
    return types_


# ----------------------------------------------------------------------------- launch tests
def test_yaml_is_why_untyped_launch_values_break(ros2_launch, tmp_path):
    assert yaml.safe_load("2024") == 2024 and yaml.safe_load("a #1.onnx") == "a"  # a folder name; a comment
    old = tmp_path / "old.launch.py"  # the launch file as it was: model_path untyped
    old.write_text(LAUNCH.read_text().replace(
        '{name: ParameterValue(LaunchConfiguration(name), value_type=value_type)\n'
        '                  for name, value_type in TYPED_PARAMETERS.items()}',
        '{"model_path": LaunchConfiguration("model_path")}'))
    assert old.read_text() != LAUNCH.read_text()
    (node,) = ros2_launch(old, model_path="2024").nodes
    assert node["parameters"]["model_path"] == 2024  # the node then fails: "Wrong parameter type"
    (node,) = ros2_launch(old, model_path="a #1.onnx").nodes
    assert node["parameters"]["model_path"] == "a"


@pytest.mark.parametrize("model_path", ["2024", "a #1.onnx", "/models/m.onnx", "true", "[a, b]", "007"])
def test_model_path_reaches_the_node_exactly_as_given(ros2_launch, model_path):
    context = ros2_launch(LAUNCH, model_path=model_path)
    (node,) = context.nodes
    assert node["parameters"]["model_path"] == model_path
    assert context.untyped == []


def test_every_parameter_is_typed_as_the_node_declares_it(ros2_launch):
    context = ros2_launch(LAUNCH, model_path="m.onnx", image_qos="best_effort", providers="[cuda, cpu]",
                          input_transport="compressed", use_sim_time="true", namespace="front",
                          image_topic="/front/image_raw")
    (node,) = context.nodes
    assert context.untyped == []
    params = node["parameters"]
    assert params == {"model_path": "m.onnx", "image_qos": "best_effort", "providers": ["cuda", "cpu"],
                      "input_transport": "compressed", "use_sim_time": True}
    declared = _node_types()
    for name, value in params.items():
        assert isinstance(value, declared[name]), f"{name}: {value!r} is not {declared[name].__name__}"
    assert node["namespace"] == "front" and node["executable"] == "perception_node"
    assert node["remappings"] == {"image": "/front/image_raw", "camera_info": "camera_info"}
    assert node["params_files"] == [PARAMS]  # the installed parameter file by default


def test_unset_optional_arguments_leave_the_params_file_in_charge(ros2_launch):
    (node,) = ros2_launch(LAUNCH, model_path="m.onnx").nodes
    assert set(node["parameters"]) == {"model_path", "use_sim_time", "input_transport"}
    assert node["parameters"]["input_transport"] == "raw" and node["parameters"]["use_sim_time"] is False


def test_bad_launch_values_are_refused_before_the_node_starts(ros2_launch):
    with pytest.raises(LaunchError, match="model_path"):
        ros2_launch(LAUNCH)
    with pytest.raises(LaunchError, match="input_transport"):
        ros2_launch(LAUNCH, model_path="m.onnx", input_transport="h264")
    with pytest.raises(LaunchError, match="list"):
        ros2_launch(LAUNCH, model_path="m.onnx", providers="cuda")  # a list is written [cuda]


def test_multi_camera_starts_one_node_per_camera_namespace(ros2_launch):
    context = ros2_launch(MULTI, model_path="2024", cameras="[front, rear/left]", image_qos="best_effort")
    assert context.untyped == []
    front, rear = context.nodes
    assert (front["namespace"], rear["namespace"]) == ("front", "rear/left")
    assert front["remappings"] == {"image": "/front/image_raw", "camera_info": "/front/camera_info"}
    assert rear["remappings"] == {"image": "/rear/left/image_raw", "camera_info": "/rear/left/camera_info"}
    for node in (front, rear):
        assert node["parameters"]["model_path"] == "2024" and node["parameters"]["image_qos"] == "best_effort"
    # a camera's arguments stay inside its group: the templates are back for the next one
    assert context.configurations["namespace"] == "{camera}"
    custom = ros2_launch(MULTI, model_path="m.onnx", cameras="left,right", namespace="{camera}/perception",
                         image_topic="/{camera}/color/image_raw")
    assert [n["namespace"] for n in custom.nodes] == ["left/perception", "right/perception"]
    assert custom.nodes[1]["remappings"]["image"] == "/right/color/image_raw"


@pytest.mark.parametrize("cameras", ["", "[]", "[front, front]", "[front, 2nd]", "[front cam]"])
def test_multi_camera_rejects_a_bad_camera_list_in_one_line(ros2_launch, cameras):
    with pytest.raises(ValueError, match="cameras: expected distinct camera names") as info:
        ros2_launch(MULTI, model_path="m.onnx", cameras=cameras)
    assert "\n" not in str(info.value)


def test_launch_description_builds_where_launch_ros_exists():
    pytest.importorskip("launch_ros", reason="launch_ros is not installable here (no wheel)")

    spec = importlib.util.spec_from_file_location("perception_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert len(description.entities) == len(ARGUMENTS) + 1  # the arguments and the node's OpaqueFunction


def test_console_scripts_and_installed_data_files_are_declared():
    setup = (ROOT / "setup.py").read_text()
    assert re.search(r'"perception_node = mtl_perception\.ros\.node:main"', setup)
    assert re.search(r'"camera_source = mtl_perception\.ros\.camera_source:main"', setup)
    assert 'glob("launch/*.py")' in setup and 'glob("config/*.yaml")' in setup  # multi_camera installed too


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
