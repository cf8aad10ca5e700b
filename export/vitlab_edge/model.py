"""EdgeModel: a vitlab ONNX model served with ONNX Runtime, numpy, Pillow and tqdm only.

    model = EdgeModel("model.onnx")
    records = model.predict(["shoe.jpg", pil_image, hwc_uint8_array], topk=3)

Each input gets exactly one record, in input order: ``{"index", "source", <the task's fields>, "error"}``, where
the fields come from the task's decoder in ``vitlab_edge.records`` (chosen by the metadata's ``task``):
classification ``label``, ``class_id``, ``prob``, ``topk``; detection ``boxes`` (in the original image's pixels),
``scores``, ``labels``, ``class_ids``. An unreadable input gets ``error`` (the reason) and no prediction, and the
batch goes on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vitlab_edge.imaging import DEFAULT_MAX_PIXELS, ImageReadError, draft_request, resize, to_hwc_uint8, to_layout
from vitlab_edge.metadata import METADATA_KEY, ModelFormatError, parse_metadata
from vitlab_edge.progress import Progress
from vitlab_edge.records import RecordDecoder, RowContext, topk_record
from vitlab_edge.session import RuntimeMissingError, create_session
from vitlab_edge.sources import iter_inputs
from vitlab_edge.tasks import decoder_for


class ExportedModel:
    """A vitlab ONNX file opened with ONNX Runtime, any task: ``session``, the validated ``metadata``, and what
    every task reads from them. ``providers`` defaults to CUDA then CPU; ``.providers`` says what ran."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None,
                 session_options: Any | None = None) -> None:
        self.path = Path(path)
        self.session, self.metadata = open_model(self.path, providers, session_options)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    @property
    def labels(self) -> list[str]:
        return list(self.metadata["labels"])

    @property
    def input_size(self) -> tuple[int, int, int]:
        c, h, w = self.metadata["input_size"]
        return int(c), int(h), int(w)


class EdgeModel(ExportedModel):
    """One exported vitlab classifier or detector, fed images."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, session_options: Any | None = None) -> None:
        super().__init__(path, providers, session_options)
        if self.metadata["task"] == "generation":
            raise ModelFormatError(f"{self.path}: a generation model takes no images; sample it with "
                                   "vitlab_edge.Sampler or `vitlab-edge sample`")
        try:
            self.decoder: RecordDecoder = decoder_for(self.metadata["task"])
        except ValueError as e:
            raise ModelFormatError(f"{self.path}: {e}; upgrade vitlab-edge") from None
        self.max_pixels = max_pixels

    @property
    def task(self) -> str:
        return self.decoder.task

    def preprocess(self, image: Any) -> np.ndarray:
        """A path, PIL image or HWC/HW uint8 array -> the model's CHW uint8 input, as the metadata says."""
        return self.prepare(image)[0]

    def prepare(self, image: Any) -> tuple[np.ndarray, tuple[int, int]]:
        """``preprocess`` plus the decoded image's ``(h, w)`` (EXIF applied), which detection boxes map back to."""
        m = self.metadata
        c, h, w = self.input_size
        array = to_hwc_uint8(image, self.max_pixels, draft_request((h, w), m["resize"], float(m["crop_pct"])))
        hw = (int(array.shape[0]), int(array.shape[1]))
        array = resize(array, (h, w), m["resize"], m["interpolation"], float(m["crop_pct"]))
        return to_layout(array, c), hw

    def run(self, batch: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Raw outputs (all, or the ``outputs`` named) for a ready ``[N, C, H, W]`` uint8 batch."""
        if batch.dtype != np.uint8 or batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_size:
            raise ValueError(f"{self.path.name} takes uint8 [N, {', '.join(map(str, self.input_size))}] "
                             f"batches, got {batch.dtype} {list(batch.shape)}; use predict() to resize images")
        names = outputs or [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {self.metadata["inputs"][0]: batch})))

    def predict(self, images: Iterable[Any] | Any, batch_size: int = 32, topk: int = 5,
                progress: bool | None = False) -> list[dict[str, Any]]:
        """One record per input, in order; see the module docstring and ``stream``."""
        return list(self.stream(images, batch_size=batch_size, topk=topk, progress=progress))

    def stream(self, images: Iterable[Any] | Any, batch_size: int = 32, topk: int = 5,
               progress: bool | None = False) -> Iterator[dict[str, Any]]:
        """``predict`` as a generator: batches are decoded, run and yielded one at a time.

        ``images``: one str/path names a file, folder, glob or .txt/.lst list (expanded; one that names nothing
        raises ``EmptySourceError``); a list or other iterable holds the inputs themselves, one record each.
        ``progress``: True: a bar on stderr (count, rate, ETA) on a terminal, one summary line otherwise; None: the
        bar on a terminal, silence otherwise (the CLI's choice); False: silent."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        images = iter_inputs(images)
        total = len(images) if hasattr(images, "__len__") else None
        with Progress(total, "predict", progress=progress) as bar:
            chunk: list[tuple[int, Any]] = []
            for i, image in enumerate(images):
                chunk.append((i, image))
                if len(chunk) == batch_size:
                    yield from self._predict_chunk(chunk, topk, bar)
                    chunk = []
            if chunk:
                yield from self._predict_chunk(chunk, topk, bar)

    def _predict_chunk(self, chunk: list[tuple[int, Any]], topk: int, bar: Progress) -> list[dict[str, Any]]:
        records, ready, arrays, sizes = [], [], [], []
        for i, image in chunk:
            rec = {"index": i, "source": describe_input(image, i), **self.decoder.empty(), "error": None}
            try:
                array, hw = self.prepare(image)
                arrays.append(array)
                sizes.append(hw)
                ready.append(rec)
            except ImageReadError as e:
                rec["error"] = e.reason
            except Exception as e:  # noqa: BLE001 - never stop the batch (as vitlab's Predictor does)
                rec["error"] = f"{type(e).__name__}: {e}"
            records.append(rec)
        if arrays:
            outputs = self.run(np.stack(arrays), list(self.decoder.outputs))
            input_hw = self.input_size[1:]
            for row, (rec, hw) in enumerate(zip(ready, sizes)):
                rec.update(self.decoder.decode(outputs, row, RowContext(self.labels, topk, hw, input_hw)))
        bar.update(len(records))
        return records


def open_model(path: str | os.PathLike, providers: list[str] | None = None, session_options: Any | None = None
               ) -> tuple[Any, dict[str, Any]]:
    """An ONNX Runtime session on a vitlab model file and its validated metadata (``vitlab_edge.metadata``), for
    any task; a missing, unloadable or undescribed file is a ModelFormatError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such model file")
    try:
        session = create_session(path, providers, session_options)
    except RuntimeMissingError:
        raise
    except Exception as e:  # InvalidProtobuf, Fail, NoSuchFile, ... from onnxruntime
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelFormatError(f"{path}: not a loadable ONNX model ({first[:200]})") from None
    metadata = parse_metadata(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), str(path))
    names = [i.name for i in session.get_inputs()]
    if names != list(metadata["inputs"]):
        raise ModelFormatError(f"{path}: graph inputs {names} differ from the metadata's {metadata['inputs']}")
    return session, metadata


# topk_record: re-exported from vitlab_edge.records
__all__ = ["EdgeModel", "ExportedModel", "describe_input", "open_model", "topk_record"]


def describe_input(image: Any, index: int) -> str:
    """A record's ``source``: the path, or ``<type index>`` for an in-memory image."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return f"<{type(image).__name__} {index}>"
