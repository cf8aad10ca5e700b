"""Prediction writers: JSONL and CSV (atomic: temp file, then rename; a task's CSV columns are its record decoder's
``csv_fields``), COCO results JSON for detection (``write_coco``), resuming from an earlier output, and
Lightning's ``BasePredictionWriter`` for multi-device prediction, which writes one shard per rank keyed by sample
index and merges them on rank 0, checking that every input appears exactly once. (``trainer.predict`` shards
inputs with Lightning's ``UnrepeatedDistributedSamplerWrapper``: no padding, no repeats; a test runs it.)"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter
from vitlab_edge.files import CSV_FIELDS
from vitlab_edge.files import read_records as read_any
from vitlab_edge.files import write_coco as write_coco_any
from vitlab_edge.files import write_records as write_any

from vitlab.errors import VitlabError

FORMATS = (".jsonl", ".csv")


def check_output(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.suffix not in FORMATS:
        raise VitlabError(f"output {p}: use a .jsonl or .csv file name")
    return p


def write_records(records: Iterable[dict[str, Any]], path: str | os.PathLike,
                  fields: tuple[str, ...] | list[str] = CSV_FIELDS) -> int:
    """Write records as JSONL or CSV (by suffix; ``fields``: the CSV columns, e.g. ``decoder_for(task).csv_fields``);
    the file appears only once complete. Returns the count."""
    return write_any(records, check_output(path), fields)  # the edge kit's writers: same files from both CLIs


def write_coco(records: Iterable[dict[str, Any]], path: str | os.PathLike, annotations: str | os.PathLike,
               labels: list[str] | tuple[str, ...]) -> int:
    """Detection records -> a COCO results JSON (``image_id`` by file name from the ground truth ``annotations``,
    ``category_id`` by class name or position; see ``vitlab_edge.files.write_coco``); the count of records."""
    if not Path(annotations).is_file():
        raise VitlabError(f"--annotations {annotations} does not exist")
    try:
        return write_coco_any(records, path, annotations, list(labels))
    except (ValueError, KeyError) as e:
        raise VitlabError(f"COCO results for {annotations}: {e}") from None


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of an earlier JSONL/CSV output (for ``--resume``); a damaged line is an error naming the file."""
    try:
        return read_any(check_output(path))
    except ValueError as e:
        raise VitlabError(str(e)) from None


class ShardedPredictionWriter(BasePredictionWriter):
    """Each rank appends its batches' records to ``<out>.rank<R>.part``, flushed batch by batch; after the epoch,
    rank 0 checks that every sample index ``0..num_samples-1`` is there exactly once and writes ``out`` atomically
    in input order. Rank 0's verdict is broadcast, so on failure every rank raises the same ``VitlabError`` at once
    (none is left waiting at a barrier until the DDP timeout). ``vitlab predict`` names ``out`` as a journal file
    (``vitlab_edge.journal``), so the shards of a killed run are read by ``--resume``."""

    def __init__(self, out: str | os.PathLike, num_samples: int) -> None:
        super().__init__(write_interval="batch")
        self.out, self.num_samples = check_output(out), num_samples
        self._file = None

    def _shard(self, rank: int) -> Path:
        return self.out.with_name(f"{self.out.name}.rank{rank}.part")

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._shard(trainer.global_rank), "w")  # noqa: SIM115 - closed at epoch end

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        for rec in prediction:
            self._file.write(json.dumps(rec) + "\n")
        self._file.flush()  # a killed run keeps its finished batches (``--resume`` reads shards as journals)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self._file.close()
        trainer.strategy.barrier("vitlab-predict-shards")
        error = self._merge(trainer.world_size) if trainer.is_global_zero else None
        error = trainer.strategy.broadcast(error, src=0)
        if error is not None:
            raise VitlabError(error)

    def _merge(self, world_size: int) -> str | None:
        """Rank 0: shards -> ``out``; the one-line reason when that fails (every rank raises it), else None."""
        try:
            by_index, repeated = self._read_shards(world_size)
            missing = sorted(set(range(self.num_samples)) - set(by_index))
            wrong = []
            if missing:
                wrong.append(f"{len(missing)} of {self.num_samples} inputs got no answer (first: {missing[:5]})")
            if repeated:
                wrong.append(f"{len(repeated)} got more than one (first: {repeated[:5]})")
            if wrong:
                return f"distributed prediction: {'; '.join(wrong)}"
            write_records((by_index[i] for i in range(self.num_samples)), self.out)
            return None
        except (OSError, ValueError, KeyError) as e:
            return f"distributed prediction could not merge its shards into {self.out}: {type(e).__name__}: {e}"
        finally:
            for rank in range(world_size):
                self._shard(rank).unlink(missing_ok=True)

    def _read_shards(self, world_size: int) -> tuple[dict[int, dict[str, Any]], list[int]]:
        """Every rank's records by sample index, and the indices found more than once."""
        by_index: dict[int, dict[str, Any]] = {}
        repeated = set()
        for rank in range(world_size):
            with open(self._shard(rank)) as f:
                for rec in map(json.loads, f):
                    if rec["index"] in by_index:
                        repeated.add(rec["index"])
                    by_index[rec["index"]] = rec
        return by_index, sorted(repeated)


def write_embeddings(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> int:
    """Embedding records -> ``path`` (``.npy``: float32 ``[N, D]``, row i = input i; an input that could not be read
    is a row of NaN) and ``<stem>.sources.txt`` (row i's source, one per line), each written atomically; the count."""
    import numpy as np
    from vitlab_edge.files import atomic_write

    path = Path(path)
    sources, rows = [], []
    for rec in records:
        sources.append(str(rec["source"]))
        rows.append(None if rec.get("error") is not None else np.asarray(rec["embedding"], np.float32))
    dim = next((len(r) for r in rows if r is not None), 0)
    array = np.stack([r if r is not None else np.full(dim, np.nan, np.float32) for r in rows]) if rows \
        else np.zeros((0, 0), np.float32)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, save)
    atomic_write(path.with_suffix(".sources.txt"), lambda tmp: tmp.write_text("".join(f"{s}\n" for s in sources)))
    return len(rows)
