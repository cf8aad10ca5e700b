"""Prediction writers: JSONL and CSV (atomic: temp file, then rename), resuming from an earlier output, and
Lightning's ``BasePredictionWriter`` for multi-device prediction, which writes one shard per rank keyed by sample
index and merges them on rank 0 so that every input appears exactly once (DistributedSampler pads the last
batches with repeated samples; cf. Lightning issue 10782)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter
from vitlab_edge.files import write_jsonl

from vitlab._fs import atomic_write
from vitlab.errors import VitlabError

FORMATS = (".jsonl", ".csv")
CSV_FIELDS = ("index", "source", "label", "class_id", "prob", "topk", "error")


def check_output(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.suffix not in FORMATS:
        raise VitlabError(f"output {p}: use a .jsonl or .csv file name")
    return p


def write_records(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> int:
    """Write records as JSONL or CSV (by suffix); the file appears only once complete. Returns the count."""
    path = check_output(path)
    if path.suffix == ".jsonl":
        return write_jsonl(records, path)
    n = 0

    def write(tmp: Path) -> None:
        nonlocal n
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            for rec in records:
                w.writerow({**rec, "topk": json.dumps(rec.get("topk", []))})
                n += 1

    atomic_write(path, write)
    return n


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of an earlier JSONL/CSV output (for ``--resume``); a damaged line is an error naming the file."""
    path = check_output(path)
    out = []
    with open(path, newline="") as f:
        if path.suffix == ".csv":
            for row in csv.DictReader(f):
                out.append({**row, "topk": json.loads(row.get("topk") or "[]"), "error": row.get("error") or None})
        else:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise VitlabError(f"{path}:{i} is not a JSON record; cannot resume from it") from None
    return out


class ShardedPredictionWriter(BasePredictionWriter):
    """Each rank appends its batches' records to ``<out>.rank<R>.part``; after the epoch, rank 0 keeps one record
    per sample index, checks that all ``num_samples`` are there, and writes ``out`` atomically in input order."""

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

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self._file.close()
        trainer.strategy.barrier("vitlab-predict-shards")
        if trainer.is_global_zero:
            by_index: dict[int, dict[str, Any]] = {}
            for rank in range(trainer.world_size):
                shard = self._shard(rank)
                with open(shard) as f:
                    for line in f:
                        rec = json.loads(line)
                        by_index.setdefault(rec["index"], rec)  # padding repeats a sample: keep the first
            missing = sorted(set(range(self.num_samples)) - set(by_index))
            if missing:
                raise VitlabError(f"distributed prediction lost {len(missing)} inputs (first: {missing[:5]})")
            write_records((by_index[i] for i in range(self.num_samples)), self.out)
            for rank in range(trainer.world_size):
                self._shard(rank).unlink(missing_ok=True)
        trainer.strategy.barrier("vitlab-predict-merged")
