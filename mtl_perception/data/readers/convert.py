"""Write any reader's samples in the project's own format (``mtl-perception convert``).

Labels a sample lacks are left out of its files (no ``semantic_file`` / ``depth_file``), crowd
regions become ``iscrowd: 1`` annotations, and each ``images`` entry records the sample's
``labelled_tasks`` as the format's ``"labelled"`` list (read back by ``MultiTaskDataset``), so
that "not labelled for detection" survives the conversion instead of turning into "no objects"."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from mtl_perception.data.dataset import METADATA_FILE, DatasetWriter, write_frame_files
from mtl_perception.data.readers.base import DatasetReader, ReaderSample


def frame_of(sample: ReaderSample) -> SimpleNamespace:
    """The frame-like object :func:`~mtl_perception.data.dataset.write_frame_files` takes; unlabelled
    kinds are None so that no file is written for them."""
    tasks = sample.labelled_tasks
    return SimpleNamespace(
        image=sample.image,
        semantic=sample.semantic if "segmentation" in tasks else None,
        depth=sample.depth if "depth" in tasks else None,
        boxes=sample.boxes, labels=sample.labels, night=sample.night, camera=sample.camera,
    )


def crowd_annotations(sample: ReaderSample, image_id: int) -> list[dict]:
    """COCO ``iscrowd: 1`` annotations of the sample's crowd regions (category id = label + 1)."""
    out = []
    for (x1, y1, x2, y2), label in zip(sample.crowd_boxes.tolist(), sample.crowd_labels.tolist()):
        w, h = x2 - x1, y2 - y1
        out.append({"image_id": image_id, "category_id": int(label) + 1,
                    "bbox": [round(x1, 4), round(y1, 4), round(w, 4), round(h, 4)],
                    "area": round(w * h, 4), "iscrowd": 1})
    return out


def convert(reader: DatasetReader, out: str | os.PathLike, limit: int | None = None, progress: bool = True) -> Path:
    """Writes the first ``limit`` (default all) samples of ``reader`` under ``out``; returns ``out``.
    A folder that already holds a dataset is refused (convert into a fresh one)."""
    out = Path(out)
    if (out / METADATA_FILE).exists():
        raise ValueError(f"{out / METADATA_FILE}: exists already (convert into a new folder)")
    count = len(reader) if limit is None else min(int(limit), len(reader))
    indices = range(count)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, unit="frame", desc=f"convert {reader.format}", dynamic_ncols=True)
    info = {**reader.info, "labelled_tasks": sorted(reader.labelled_tasks)}
    with DatasetWriter(out, reader.semantic_classes, reader.detection_classes, reader.depth_scale, info) as writer:
        for index in indices:
            sample = reader.load(index)
            entry, anns = write_frame_files(out, index, frame_of(sample), writer.depth_scale, writer.digits)
            entry["source_file"] = sample.file_name
            entry["labelled"] = sorted(sample.labelled_tasks)  # the format's key (dataset.labelled_tasks)
            writer.add_record(entry, anns + crowd_annotations(sample, index))
    return out
