"""mtl_perception: the vehicle-side runtime (no torch).

Importing this package imports numpy only; onnxruntime, OpenCV and rclpy are imported by the
modules that need them.
"""
__version__ = "0.1.0"
