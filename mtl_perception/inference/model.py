"""Torch-free loader for exported models: read the contract, pick providers, run frames.

`load_model(path)` is what the node, bag evaluation and benchmarks call. It fails with one
`ModelError` line that names the file and the problem (missing, not ONNX, no metadata, a
malformed or wrongly typed field, a claim the graph contradicts: see
`mtl_perception.inference.contract_check`), never with a traceback wall. It also loads model
bundles (several contract files plus a manifest, `mtl_perception.inference.bundle`) behind the same interface.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from mtl_perception.contract import METADATA_KEY, ContractError, ModelMetadata
from mtl_perception.inference.contract_check import check_claims

LOG = logging.getLogger(__name__)

#: Preferred order when the user does not choose: fastest first.
DEFAULT_PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
#: Provider shared libraries that onnxruntime-gpu loads lazily; probing them first avoids
#: onnxruntime's multi-line fallback errors on machines without the CUDA/TensorRT libraries.
_PROVIDER_LIBRARIES = {
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
}


class ModelError(RuntimeError):
    """A model file cannot be used; str() is one line naming the file and the reason."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run a model: execution providers and their GPU settings."""

    providers: Optional[Sequence[str]] = None  # None: TensorRT -> CUDA -> CPU, whichever work
    fp16: bool = False  # TensorRT FP16 kernels
    trt_engine_cache_dir: Optional[str] = None  # reuse built TensorRT engines across starts
    intra_op_threads: int = 0  # 0: onnxruntime's default
    allow_spinning: bool = True  # False: onnxruntime's threads sleep between runs instead of
    #                              busy-waiting (steadier latency when the CPU is shared)


def normalise_provider_names(names: Sequence[str]) -> List[str]:
    """Accepts 'tensorrt', 'cuda', 'cpu' or onnxruntime's full names."""
    out = []
    for name in names:
        full = PROVIDER_ALIASES.get(name.strip().lower(), name.strip())
        if not full.endswith("ExecutionProvider"):
            raise ModelError(f"unknown execution provider {name!r} (use tensorrt, cuda, cpu or an onnxruntime name)")
        out.append(full)
    return out


#: What to install when no onnxruntime build is importable (setup.py's `gpu` / `cpu` extras).
ONNXRUNTIME_MISSING = (
    "onnxruntime is not installed: pip install 'mtl_perception[gpu]' (onnxruntime-gpu: x86-64 with NVIDIA), "
    "NVIDIA's JetPack onnxruntime-gpu wheel on a Jetson, or 'mtl_perception[cpu]' (onnxruntime, CPU only)"
)


def import_onnxruntime():
    """The onnxruntime module of whichever build is installed; a one-line ModelError naming the
    builds to choose from when none is (the runtime requires one but cannot pick it for you)."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(ONNXRUNTIME_MISSING) from None
    return onnxruntime


def usable_providers(requested: Optional[Sequence[str]] = None) -> List[str]:
    """The requested (or default) providers that onnxruntime has and whose libraries load."""
    ort = import_onnxruntime()

    available = set(ort.get_available_providers())
    wanted = normalise_provider_names(requested) if requested else list(DEFAULT_PROVIDER_ORDER)
    chosen = [p for p in wanted if p in available and _provider_library_loads(p)]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")  # always a safe last resort
    return chosen


def _provider_library_loads(provider: str) -> bool:
    library = _PROVIDER_LIBRARIES.get(provider)
    if library is None:
        return True
    ort = import_onnxruntime()

    capi = Path(ort.__file__).parent / "capi"
    if not (capi / library).exists():
        return True  # another platform's layout: let onnxruntime decide
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, where installed
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / library))
    except OSError:
        return False
    return True


def _provider_options(provider: str, options: RuntimeOptions) -> dict:
    if provider == "TensorrtExecutionProvider":
        opts = {"trt_fp16_enable": bool(options.fp16)}
        if options.trt_engine_cache_dir:
            os.makedirs(options.trt_engine_cache_dir, exist_ok=True)
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=options.trt_engine_cache_dir,
                        trt_timing_cache_enable=True, trt_timing_cache_path=options.trt_engine_cache_dir)
        return opts
    return {}


class ContractModel:
    """What every loaded model offers, read from its contract metadata (one ONNX file or a
    bundle of several): name, tasks, input size, and the input check `run` starts with."""

    metadata: ModelMetadata

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def tasks(self):
        return self.metadata.tasks

    @property
    def input_size(self) -> tuple:
        """(width, height) the model takes."""
        return self.metadata.input.width, self.metadata.input.height

    def check_image(self, image: np.ndarray) -> None:
        spec = self.metadata.input
        if image.shape != (spec.height, spec.width, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"expected a {spec.height}x{spec.width}x3 uint8 image, got {image.shape} {image.dtype}"
            )


class PerceptionModel(ContractModel):
    """One self-describing ONNX model: `run(image)` returns every task's decoded outputs."""

    def __init__(self, path: os.PathLike | str, options: RuntimeOptions = RuntimeOptions()):
        ort = import_onnxruntime()

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: model file not found")
        providers = usable_providers(options.providers)
        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3
        if options.intra_op_threads:
            session_options.intra_op_num_threads = options.intra_op_threads
        if not options.allow_spinning:
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                self.session = ort.InferenceSession(
                    str(self.path), session_options,
                    providers=[(p, _provider_options(p, options)) for p in providers],
                )
        except Exception as exc:  # onnxruntime raises several types; all mean "unusable file"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "Protobuf parsing failed" in reason or "INVALID_PROTOBUF" in reason:
                reason = "not an ONNX file (protobuf parsing failed)"
            raise ModelError(f"{self.path}: cannot load model: {reason}") from None
        self.providers: List[str] = self.session.get_providers()
        if options.providers and self.providers[0] != providers[0]:
            LOG.warning("%s: requested %s, running on %s", self.path.name, providers[0], self.providers[0])
        self.metadata = _read_metadata(self.path, self.session)
        self._check_io()
        self.input_name = self.metadata.input.name

    def run(self, image: np.ndarray) -> Dict[str, Dict[str, np.ndarray]]:
        """Runs one HxWx3 uint8 image (model size and colour order); outputs per task and role."""
        self.check_image(image)
        names = self.metadata.output_names()
        values = self.session.run(names, {self.input_name: image[None]})
        by_name = dict(zip(names, values))
        return {
            task: {role: by_name[tensor][0] for role, tensor in spec_.outputs.items()}
            for task, spec_ in self.metadata.tasks.items()
        }

    def _check_io(self) -> None:
        try:
            check_claims(self.metadata, self.session, self.path)
        except ContractError as exc:
            raise ModelError(f"{self.path}: {exc}") from None


def _read_metadata(path: Path, session) -> ModelMetadata:
    props: Mapping[str, str] = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ModelError(f"{path}: no '{METADATA_KEY}' metadata (not exported by mtl-train export?)")
    try:
        return ModelMetadata.from_json(props[METADATA_KEY])
    except ContractError as exc:
        raise ModelError(f"{path}: {exc}") from None
