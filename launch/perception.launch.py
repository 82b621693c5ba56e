r"""Starts perception_node with the package's parameter file.

    ros2 launch mtl_perception perception.launch.py model_path:=/path/to/model.onnx \
        image_topic:=/camera/image_raw namespace:=front use_sim_time:=false

Arguments: model_path (required), image_topic (default: image), camera_info_topic (default:
camera_info), params_file (default: the installed config/perception.yaml), namespace (default:
none; the node's output topics live in it), use_sim_time (default: false).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    default_params = PathJoinSubstitution([FindPackageShare("mtl_perception"), "config", "perception.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("model_path", description="exported ONNX model file, or a model bundle manifest / folder"),
        DeclareLaunchArgument("image_topic", default_value="image", description="camera image topic"),
        DeclareLaunchArgument("camera_info_topic", default_value="camera_info",
                              description="camera info topic (for super_resolution/camera_info)"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="node parameter YAML"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock"),
        Node(
            package="mtl_perception",
            executable="perception_node",
            name="perception_node",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[
                LaunchConfiguration("params_file"),
                {
                    "model_path": LaunchConfiguration("model_path"),
                    "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                },
            ],
            remappings=[
                ("image", LaunchConfiguration("image_topic")),
                ("camera_info", LaunchConfiguration("camera_info_topic")),
            ],
        ),
    ])
