"""Robot install: onnxruntime as a chosen build (extras), rosdep keys in package.xml that cover
what the runtime imports, colcon's script folder, and the one-line error without onnxruntime."""
from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mtl_perception.inference.model import ONNXRUNTIME_MISSING

ROOT = Path(__file__).resolve().parents[1]

#: Third-party modules the runtime imports -> the rosdep key that provides them on a robot.
ROSDEP_KEY = {"numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml",
              "tqdm": "python3-tqdm", "matplotlib": "python3-matplotlib"}
#: ... or the pip distribution (no rosdep key on every distro; README "On the vehicle").
PIP_ONLY = {"rosbags": "rosbags", "pycocotools": "pycocotools"}
#: Optional imports (guarded where they are imported) and the extra that brings each.
OPTIONAL = {"h5py": ("nyu", "h5py"), "scipy": ("nyu", "scipy"), "onnx": ("checks", "onnx")}
#: ROS packages whose Python module has the package's name (rclpy, message packages).
ROS_PACKAGES = {"rclpy", "rcl_interfaces", "rosgraph_msgs", "std_msgs", "sensor_msgs", "vision_msgs",
                "diagnostic_msgs", "lifecycle_msgs"}


def _setup_requirements():
    """install_requires and extras_require, read from setup.py's literal (nothing is run)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"]
    keywords = {k.arg: k.value for k in call.keywords}
    return ast.literal_eval(keywords["install_requires"]), ast.literal_eval(keywords["extras_require"])


def _names(requirements):
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def test_onnxruntime_is_an_extra_in_one_build_each_never_both():
    install, extras = _setup_requirements()
    assert not {n for n in _names(install) if n.startswith("onnxruntime")}, "a hard onnxruntime build breaks aarch64"
    assert _names(extras["gpu"]) == {"onnxruntime-gpu"}
    assert _names(extras["cpu"]) == {"onnxruntime"}
    for name, requirements in extras.items():
        builds = {n for n in _names(requirements) if n.startswith("onnxruntime")}
        assert len(builds) <= 1, f"extra {name!r} installs {builds}, which overwrite each other"
    # the development environment keeps exactly one build: onnxruntime-gpu (runs on CPU here)
    lines = [ln for ln in (ROOT / "scripts" / "setup_env.sh").read_text().splitlines()
             if "install -e" in ln and not ln.lstrip().startswith("#")]
    (line,) = lines
    chosen = set(re.search(r'"\.\[([^\]]*)\]"', line).group(1).split(","))
    assert "gpu" in chosen and "cpu" not in chosen and {"training", "test"} <= chosen


def _package_xml():
    catkin_pkg = pytest.importorskip("catkin_pkg.package", reason="catkin_pkg (rosdep's parser) not installed")
    package = catkin_pkg.parse_package(str(ROOT / "package.xml"))
    package.validate()  # what rosdep and colcon run on it
    return package


def test_package_xml_is_format_3_ament_python_with_rosdep_keys():
    package = _package_xml()
    assert package.package_format == 3 and package.name == "mtl_perception"
    assert [e.content for e in package.exports if e.tagname == "build_type"] == ["ament_python"]
    exec_keys = {d.name for d in package.exec_depends}
    assert exec_keys >= set(ROSDEP_KEY.values()) | ROS_PACKAGES | {"launch", "launch_ros"}
    assert not {k for k in exec_keys if "onnx" in k or "torch" in k}, "onnxruntime's build and torch are pip choices"
    assert {d.name for d in package.test_depends} == {"python3-pytest"}
    (resource,) = (ROOT / "resource").iterdir()  # ament index marker installed by setup.py
    assert resource.name == "mtl_perception"


def _third_party_imports():
    """Top-level modules imported anywhere in the runtime package (not the stdlib, not itself)."""
    found = {}
    for path in sorted((ROOT / "mtl_perception").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("mtl_perception", "__future__"):
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_runtime_import_has_a_rosdep_key_or_a_pip_requirement():
    exec_keys = {d.name for d in _package_xml().exec_depends}
    install, extras = _setup_requirements()
    pip = _names(install)
    for module, where in _third_party_imports().items():
        if module == "onnxruntime":
            assert {"onnxruntime", "onnxruntime-gpu"} <= _names(extras["cpu"] + extras["gpu"])
        elif module in OPTIONAL:
            extra, dist = OPTIONAL[module]
            assert dist in _names(extras[extra]), f"{module} ({where}) is not in the {extra!r} extra"
        elif module in PIP_ONLY:
            assert PIP_ONLY[module] in pip, f"{module} ({where}) is not in install_requires"
        else:
            key = ROSDEP_KEY.get(module, module)
            assert key in exec_keys, f"{module} (imported in {where}) has no <exec_depend>{key}</exec_depend>"


def test_colcon_installs_executables_where_ros2_run_finds_them():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["develop"]["script_dir"] == "$base/lib/mtl_perception"
    assert cfg["install"]["install_scripts"] == "$base/lib/mtl_perception"


def test_loading_a_model_without_onnxruntime_says_which_build_to_install(tmp_path):
    code = ("import sys; sys.modules['onnxruntime'] = None\n"  # import onnxruntime -> ImportError
            "from mtl_perception.cli import main\n"
            f"sys.exit(main(['info', {str(tmp_path / 'm.onnx')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and ONNXRUNTIME_MISSING in lines[0], lines
    assert "mtl_perception[gpu]" in lines[0] and "mtl_perception[cpu]" in lines[0] and "Jetson" in lines[0]
