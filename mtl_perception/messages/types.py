"""ROS message type names (as rosbag2 and `ros2 topic` spell them) of the topics this package
reads and writes; the ROS layer maps them to rclpy classes, the bag layer to rosbags types."""

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
DETECTIONS = "vision_msgs/msg/Detection2DArray"
LABEL_INFO = "vision_msgs/msg/LabelInfo"
DIAGNOSTICS = "diagnostic_msgs/msg/DiagnosticArray"
CLOCK = "rosgraph_msgs/msg/Clock"

__all__ = ["IMAGE", "COMPRESSED_IMAGE", "CAMERA_INFO", "POINTCLOUD2", "DETECTIONS", "LABEL_INFO", "DIAGNOSTICS",
           "CLOCK"]
