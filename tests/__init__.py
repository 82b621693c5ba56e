"""The test suite, mirroring the packages: tests/runtime/ (mtl_perception) and tests/train/ (training).

A package, so that test files with the same name in different folders do not clash and helpers
are imported by their full name (`from tests.runtime.model_factory import ...`); pytest puts the
repository root on sys.path, so the real `mtl_perception` and `training` are the ones imported.
"""
from pathlib import Path

#: The repository root (launch/, config/, scripts/ are read from there).
REPO = Path(__file__).resolve().parent.parent
