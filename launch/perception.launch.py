r"""Starts perception_node with the package's parameter file.

    ros2 launch mtl_perception perception.launch.py model_path:=/path/to/model.onnx \
        image_topic:=/camera/image_raw namespace:=front image_qos:=best_effort \
        providers:="[tensorrt, cuda, cpu]"

Arguments: model_path (required), image_topic (default: image), camera_info_topic (default:
camera_info), params_file (default: the installed config/perception.yaml), namespace (default:
none; the node's output topics live in it), use_sim_time (default: false), image_qos and
providers (default: '', i.e. whatever params_file or the node says), input_transport (raw |
compressed, default raw: compressed subscribes to <image>/compressed, as image_transport does).

`ros2 launch` hands a parameter an untyped `name:=value` through YAML, so `model_path:=2024`
would reach the node as an integer and `model_path:="a #1.onnx"` as 'a'. Every value given
here is therefore typed (ParameterValue with value_type).
"""
from typing import List

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

#: Parameters always set from their launch argument, with the type the node declares.
TYPED_PARAMETERS = {"model_path": str, "use_sim_time": bool, "input_transport": str}
#: Parameters set only when their argument is not empty (else params_file / node default wins).
OPTIONAL_PARAMETERS = {"image_qos": str, "providers": List[str]}


def _perception_node(context):
    """The node, with each launch argument typed and optional ones passed only when given."""
    parameters = {name: ParameterValue(LaunchConfiguration(name), value_type=value_type)
                  for name, value_type in TYPED_PARAMETERS.items()}
    for name, value_type in OPTIONAL_PARAMETERS.items():
        if LaunchConfiguration(name).perform(context).strip():
            parameters[name] = ParameterValue(LaunchConfiguration(name), value_type=value_type)
    return [Node(
        package="mtl_perception",
        executable="perception_node",
        name="perception_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), parameters],
        remappings=[
            ("image", LaunchConfiguration("image_topic")),
            ("camera_info", LaunchConfiguration("camera_info_topic")),
        ],
    )]


def generate_launch_description():
    default_params = PathJoinSubstitution([FindPackageShare("mtl_perception"), "config", "perception.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("model_path",
                              description="exported ONNX model file, or a model bundle manifest / folder"),
        DeclareLaunchArgument("image_topic", default_value="image", description="camera image topic"),
        DeclareLaunchArgument("camera_info_topic", default_value="camera_info",
                              description="camera info topic (for super_resolution/camera_info)"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="node parameter YAML"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock"),
        DeclareLaunchArgument("image_qos", default_value="",
                              description="image subscription QoS (reliable | best_effort); '' = params_file"),
        DeclareLaunchArgument("providers", default_value="",
                              description="execution providers as a YAML list, e.g. \"[tensorrt, cuda, cpu]\"; "
                                          "'' = params_file"),
        DeclareLaunchArgument("input_transport", default_value="raw", choices=["raw", "compressed"],
                              description="raw: sensor_msgs/Image on image; compressed: CompressedImage on "
                                          "image/compressed (decoded with OpenCV)"),
        OpaqueFunction(function=_perception_node),
    ])
