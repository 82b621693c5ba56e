"""pip and colcon (ament_python) install of mtl_perception.

The runtime (`mtl_perception`) needs no torch; the offline trainer (`training`) is installed
with it and needs the `training` extra. ROS 2 (rclpy, message packages) is never a pip
requirement: on a robot it comes from the distro.

onnxruntime is required in one of its builds, which cannot be installed side by side, so it is
an extra rather than a requirement: `gpu` (onnxruntime-gpu: x86-64 with NVIDIA, TensorRT/CUDA,
also runs on CPU), `cpu` (plain onnxruntime), or neither on a Jetson, where the JetPack build
comes from NVIDIA's Jetson wheels. Loading a model without any says which to install.
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "mtl_perception"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Real-time multi-task perception for ROS 2 with an offline multi-task trainer",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*", "training", "training.*"]),
    package_data={PACKAGE: ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=[
        "setuptools",
        "numpy>=1.21",
        "opencv-python-headless>=4.5",
        "pyyaml>=5.4",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "pycocotools>=2.0.6",
        "rosbags>=0.11",
    ],
    extras_require={
        "gpu": ["onnxruntime-gpu>=1.16"],
        "cpu": ["onnxruntime>=1.16"],
        "checks": ["onnx>=1.16"],  # the loader also checks class counts against the graph (skipped without)
        "training": ["torch>=2.5", "torchvision", "timm>=1.0", "kornia>=0.7", "onnx>=1.16", "onnxscript>=0.1"],
        "nyu": ["h5py>=3", "scipy"],  # NYUv2: h5py for the labeled .mat (HDF5), scipy for the v5 mapping/split files
        "test": ["pytest>=7", "faster-coco-eval>=1.6", "ruff>=0.6", "import-linter>=2.0", "h5py>=3",
                 "scikit-image>=0.22"],
    },
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "mtl-train = training.cli:main",
            "mtl-perception = mtl_perception.cli:main",
            "perception_node = mtl_perception.ros.node:main",
            "camera_source = mtl_perception.ros.camera_source:main",
        ],
    },
)
