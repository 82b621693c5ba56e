r"""One perception_node per camera, each in its own namespace, all from perception.launch.py.

    ros2 launch mtl_perception multi_camera.launch.py model_path:=/models/m.onnx \
        cameras:="[front, rear]" image_qos:=best_effort

starts /front/perception_node on /front/image_raw (outputs /front/segmentation, /front/depth, ...)
and /rear/perception_node on /rear/image_raw. Arguments: cameras (required: a list "[a, b]" or
"a,b" of camera names), namespace, image_topic and camera_info_topic as templates in which
{camera} is each camera's name (defaults {camera}, /{camera}/image_raw, /{camera}/camera_info),
and every other argument of perception.launch.py (model_path, params_file, image_qos, providers,
input_transport, use_sim_time), which applies to all cameras.
"""
import re
from pathlib import Path

from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription

#: Installed beside this file (share/mtl_perception/launch), in the source tree too.
SINGLE = str(Path(__file__).resolve().with_name("perception.launch.py"))
#: Per-camera arguments of perception.launch.py, as templates of {camera}.
TEMPLATES = {"namespace": "{camera}", "image_topic": "/{camera}/image_raw",
             "camera_info_topic": "/{camera}/camera_info"}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*")


def camera_names(text: str) -> list:
    """'[front, rear]' or 'front,rear' -> ['front', 'rear']; a one-line error for a bad list."""
    names = [n.strip().strip("'\"") for n in text.strip().strip("[]").split(",") if n.strip()]
    bad = [n for n in names if not _NAME.fullmatch(n)]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"cameras: expected distinct camera names like \"[front, rear]\" (letters, digits, _ and /), "
                         f"got {text!r}")
    return names


def _cameras(context):
    """A scoped group per camera, so one camera's arguments never leak into the next. The other
    arguments reach the included file through the launch context (launch's forwarding)."""
    groups = []
    for camera in camera_names(LaunchConfiguration("cameras").perform(context)):
        arguments = {name: LaunchConfiguration(name).perform(context).replace("{camera}", camera)
                     for name in TEMPLATES}
        arguments["model_path"] = LaunchConfiguration("model_path")  # required: launch wants it passed on
        groups.append(GroupAction([IncludeLaunchDescription(PythonLaunchDescriptionSource(SINGLE),
                                                            launch_arguments=list(arguments.items()))]))
    return groups


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("model_path",
                              description="exported ONNX model file, or a model bundle manifest / folder"),
        DeclareLaunchArgument("cameras", description="camera names, e.g. \"[front, rear]\"; one node per camera"),
        DeclareLaunchArgument("namespace", default_value=TEMPLATES["namespace"],
                              description="namespace of each node and its outputs ({camera} = the camera's name)"),
        DeclareLaunchArgument("image_topic", default_value=TEMPLATES["image_topic"],
                              description="each camera's image topic ({camera} = its name)"),
        DeclareLaunchArgument("camera_info_topic", default_value=TEMPLATES["camera_info_topic"],
                              description="each camera's camera_info topic ({camera} = its name)"),
        OpaqueFunction(function=_cameras),
    ])
