"""Model bundles: several self-describing ONNX files served as one model.

Task grouping trains one network per group of tasks; each group's network is exported as an
ordinary contract model (one ONNX file with its own metadata), and a small JSON manifest names
them. `load_model` accepts the manifest (or the folder holding `bundle.json`) wherever it accepts
an ONNX file and returns a `ModelBundle`, which has the same interface as `PerceptionModel`:
`metadata` (the union of the members' tasks, valid under the same contract), `run(image)`,
`providers`, `input_size`, `name`, `tasks`, `path`.

Manifest (schema 1), member paths relative to the manifest's folder:

    {"format": "mtl_perception.inference.bundle", "schema": 1, "name": "grouped",
     "models": ["seg_depth.onnx", "det_sr.onnx"],
     "provenance": {"grouping": {"method": "tag", "budget": 2}}}

Rules (each violation is one `ModelError` line naming the manifest and, where it applies, the
member file): the manifest exists and is a JSON object with this format and schema; `models`
is a non-empty list of distinct file names; every member loads as a contract model; no task name
and no task kind is served by two members (the node publishes one set of topics per kind); all
members take the same input (width, height, colour order), so one preprocessed frame feeds them
all and every member's pixel coordinates mean the same thing.

`run` runs the members one after another on the same frame (latency is the sum of the members'),
and merges their outputs.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mtl_perception.contract import ContractError, ModelMetadata, TaskSpec
from mtl_perception.inference.model import ContractModel, ModelError, PerceptionModel, RuntimeOptions

MANIFEST_NAME = "bundle.json"
FORMAT = "mtl_perception.inference.bundle"
SCHEMA = 1


def is_bundle_path(path: os.PathLike | str) -> bool:
    """True for a folder, a `.json` file, or a file whose content starts like a JSON object
    (an ONNX file, a protobuf message, never starts with '{')."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() == ".json":
        return True
    if p.is_file():
        try:
            with p.open("rb") as handle:
                return handle.read(64).lstrip().startswith(b"{")
        except OSError:
            return False
    return False


def manifest_path(path: os.PathLike | str) -> Path:
    """The manifest file for `path`: the file itself, or `bundle.json` inside a folder."""
    p = Path(path)
    return p / MANIFEST_NAME if p.is_dir() else p


def _default_name(manifest: Path) -> str:
    return manifest.resolve().parent.name if manifest.name == MANIFEST_NAME else manifest.stem


def read_manifest(path: os.PathLike | str) -> Dict[str, Any]:
    """Reads and checks a manifest; returns {"name", "models" (Paths), "files" (as written),
    "provenance"}. Raises a one-line ModelError naming the manifest."""
    given = Path(path)
    manifest = manifest_path(given)
    if given.is_dir() and not manifest.is_file():
        raise ModelError(f"{given}: folder has no {MANIFEST_NAME} (a model bundle folder holds its manifest)")
    if not manifest.is_file():
        raise ModelError(f"{manifest}: bundle manifest not found")
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModelError(f"{manifest}: bundle manifest is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{manifest}: bundle manifest is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{manifest}: bundle manifest is not a JSON object")
    if doc.get("format") != FORMAT:
        raise ModelError(f"{manifest}: not a model bundle manifest (format is {doc.get('format')!r}, "
                         f"expected {FORMAT!r})")
    if type(doc.get("schema")) is not int or doc.get("schema") != SCHEMA:  # true and 1.0 are not schema 1
        raise ModelError(f"{manifest}: bundle schema is {doc.get('schema')!r}; this runtime reads schema {SCHEMA}")
    files = doc.get("models")
    if not isinstance(files, list) or not all(isinstance(f, str) and f.strip() for f in files):
        raise ModelError(f"{manifest}: 'models' must be a list of ONNX file names (relative to the manifest)")
    if not files:
        raise ModelError(f"{manifest}: bundle lists no models")
    seen = set()
    for f in files:
        if f in seen:
            raise ModelError(f"{manifest}: member {f} is listed twice")
        seen.add(f)
    name = doc.get("name", _default_name(manifest))
    if not isinstance(name, str) or not name:
        raise ModelError(f"{manifest}: 'name' must be a non-empty string")
    provenance = doc.get("provenance", {})
    if not isinstance(provenance, dict):
        raise ModelError(f"{manifest}: 'provenance' must be a JSON object")
    base = manifest.parent
    return {"manifest": manifest, "name": name, "files": list(files),
            "models": [base / f for f in files], "provenance": provenance}


def merge_metadata(members: Sequence[Tuple[str, ModelMetadata]], name: str,
                   provenance: Optional[Mapping[str, Any]] = None, where: str = "bundle") -> ModelMetadata:
    """The bundle's contract metadata: the union of the members' tasks, checked like a single
    model's. `members` are (file label, metadata) in manifest order. Output tensor names are
    kept; one that an earlier member already uses is qualified as `<file label>/<tensor>` (the
    names are only descriptive here: each member runs its own graph)."""
    if not members:
        raise ModelError(f"{where}: bundle lists no models")
    first_label, first = members[0]
    tasks: Dict[str, TaskSpec] = {}
    owner: Dict[str, str] = {}  # task name -> member label
    kind_owner: Dict[str, Tuple[str, str]] = {}  # kind -> (member label, task name)
    tensors = set()
    for label, meta in members:
        spec, ref = meta.input, first.input
        if (spec.width, spec.height, spec.color_order) != (ref.width, ref.height, ref.color_order):
            raise ModelError(
                f"{where}: member {label} takes {spec.width}x{spec.height} {spec.color_order} input but "
                f"{first_label} takes {ref.width}x{ref.height} {ref.color_order}; all members of a bundle "
                f"must take the same input size and colour order")
        if spec.resize != ref.resize:
            raise ModelError(f"{where}: member {label} resizes frames by {spec.resize!r} but {first_label} by "
                             f"{ref.resize!r}; all members of a bundle must take the same input")
        for task_name, task in meta.tasks.items():
            if task_name in owner:
                raise ModelError(f"{where}: members {owner[task_name]} and {label} both serve task {task_name!r}")
            if task.kind in kind_owner:
                other_label, other_task = kind_owner[task.kind]
                raise ModelError(
                    f"{where}: members {other_label} ({other_task!r}) and {label} ({task_name!r}) both serve a "
                    f"{task.kind} task; the node publishes one {task.kind} output")
            outputs = {}
            for role, tensor in task.outputs.items():
                merged = tensor if tensor not in tensors else f"{label}/{tensor}"
                tensors.add(merged)
                outputs[role] = merged
            tasks[task_name] = replace(task, outputs=outputs)
            owner[task_name] = label
            kind_owner[task.kind] = (label, task_name)
    merged_provenance = dict(provenance or {})
    merged_provenance["bundle"] = {"members": [
        {"file": label, "name": meta.name, "tasks": list(meta.tasks), "provenance": meta.provenance}
        for label, meta in members]}
    metrics = _merge_metrics(members)
    if metrics and "metrics" not in merged_provenance:
        merged_provenance["metrics"] = metrics
    meta = ModelMetadata(name=name, input=first.input, tasks=tasks, provenance=merged_provenance)
    try:
        meta.validate()
    except ContractError as exc:
        raise ModelError(f"{where}: merged metadata is invalid: {exc}") from None
    return meta


def _merge_metrics(members: Sequence[Tuple[str, ModelMetadata]]) -> Dict[str, float]:
    """Training metrics of all members: a key only one member reports is kept; a key several
    report (e.g. a total loss) is kept from the member serving the task it names, else dropped."""
    by_key: Dict[str, List[Tuple[ModelMetadata, Any]]] = {}
    for _, meta in members:
        for key, value in dict(meta.provenance.get("metrics", {}) or {}).items():
            by_key.setdefault(key, []).append((meta, value))
    merged = {}
    for key, entries in by_key.items():
        if len(entries) == 1:
            merged[key] = entries[0][1]
            continue
        parts = set(key.split("/"))
        owners = [value for meta, value in entries if parts & set(meta.tasks)]
        if len(owners) == 1:
            merged[key] = owners[0]
    return merged


def _member_error(manifest: Path, label: str, member_path: Path, exc: ModelError) -> ModelError:
    message = str(exc)
    prefix = f"{member_path}: "
    if message.startswith(prefix):
        message = message[len(prefix):]
    return ModelError(f"{manifest}: member {label}: {message}")


class ModelBundle(ContractModel):
    """Several contract models served as one: same interface as `PerceptionModel`."""

    def __init__(self, path: os.PathLike | str, options: RuntimeOptions = RuntimeOptions()):
        manifest = read_manifest(path)
        self.path: Path = manifest["manifest"]
        self.manifest = {k: manifest[k] for k in ("name", "files", "provenance")}
        self.members: List[PerceptionModel] = []
        self.member_files: List[str] = manifest["files"]
        for label, member_path in zip(manifest["files"], manifest["models"]):
            try:
                self.members.append(PerceptionModel(member_path, options))
            except ModelError as exc:
                raise _member_error(self.path, label, member_path, exc) from None
        self.metadata: ModelMetadata = merge_metadata(
            [(label, m.metadata) for label, m in zip(self.member_files, self.members)],
            manifest["name"], manifest["provenance"], where=str(self.path))
        self.member_providers: List[List[str]] = [list(m.providers) for m in self.members]
        # Providers every member runs with, in the first member's order: element 0 is then the
        # least capable provider in use anywhere (what diagnostics should report).
        self.providers: List[str] = [p for p in self.member_providers[0]
                                     if all(p in other for other in self.member_providers[1:])]
        if not self.providers:
            self.providers = list(self.member_providers[0])

    def run(self, image: np.ndarray) -> Dict[str, Dict[str, np.ndarray]]:
        """Runs every member, one after another, on the same HxWx3 uint8 image; merged outputs."""
        self.check_image(image)
        out: Dict[str, Dict[str, np.ndarray]] = {}
        for member in self.members:
            out.update(member.run(image))
        return out

    def describe_members(self) -> List[Dict[str, Any]]:
        """One entry per member: file, model name, tasks, providers (for `info` and reports)."""
        return [{"file": label, "name": m.metadata.name, "tasks": {n: t.kind for n, t in m.metadata.tasks.items()},
                 "providers": list(m.providers)} for label, m in zip(self.member_files, self.members)]


def write_bundle(out: os.PathLike | str, onnx_paths: Sequence[os.PathLike | str], name: Optional[str] = None,
                 provenance: Optional[Mapping[str, Any]] = None, link: bool = False) -> Path:
    """Writes a bundle: copies (or, with `link`, hard-links where possible) each member next to
    the manifest and writes the manifest atomically, after checking that the members load and
    combine (on CPU) and, once written, that the bundle loads. `out` is the manifest path
    (`*.json`) or a folder (the manifest is then `out/bundle.json`). Returns the manifest path.
    Nothing is written when the members do not combine; raises a one-line ModelError."""
    out = Path(out)
    manifest = out if out.suffix.lower() == ".json" else out / MANIFEST_NAME
    folder = manifest.parent
    sources = [Path(p) for p in onnx_paths]
    if not sources:
        raise ModelError(f"{manifest}: bundle lists no models")
    names = [p.name for p in sources]
    for n in names:
        if names.count(n) > 1:
            raise ModelError(f"{manifest}: two members are named {n}; member file names must differ")
    if name is not None and (not isinstance(name, str) or not name):
        raise ModelError(f"{manifest}: name must be a non-empty string")
    name = name or _default_name(manifest)
    try:
        provenance_json = json.loads(json.dumps(dict(provenance or {})))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{manifest}: provenance is not JSON-serialisable ({exc})") from None

    cpu = RuntimeOptions(providers=["cpu"])
    loaded = []
    for label, source in zip(names, sources):  # check before anything is written
        try:
            loaded.append((label, PerceptionModel(source, cpu).metadata))
        except ModelError as exc:
            raise _member_error(manifest, label, source, exc) from None
    merge_metadata(loaded, name, provenance_json, where=str(manifest))

    folder.mkdir(parents=True, exist_ok=True)
    for source in sources:
        dest = folder / source.name
        if dest.exists() and dest.resolve() == source.resolve():
            continue
        _place(source, dest, link)
    doc = {"format": FORMAT, "schema": SCHEMA, "name": name, "models": names}
    if provenance_json:
        doc["provenance"] = provenance_json
    fd, tmp = tempfile.mkstemp(prefix=f".{manifest.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=2)
            handle.write("\n")
        ModelBundle(tmp, cpu)  # the written files, read back exactly as a user will
        os.replace(tmp, manifest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return manifest


def _place(source: Path, dest: Path, link: bool) -> None:
    """Copies (or hard-links) `source` to `dest` through a temporary name, so `dest` is never
    half-written."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        if tmp.exists():
            tmp.unlink()
        if link:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
        else:
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


__all__ = ["MANIFEST_NAME", "FORMAT", "SCHEMA", "ModelBundle", "is_bundle_path", "manifest_path", "merge_metadata",
           "read_manifest", "write_bundle"]
