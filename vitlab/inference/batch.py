"""``vitlab predict``'s run: the inputs a command line names -> one record per input in ``--out``, in input order.

Every check that can fail runs before any image is predicted (the options, the output name, the inputs, the model,
the output format against the model's task, a COCO ground truth against the inputs), so a long run cannot fail at
its end. The run is resumable (``vitlab_edge.journal``): finished records are journaled beside ``--out`` as they
come, ``--out`` appears only complete, and ``--resume`` predicts only what an interrupted run left. One process
runs the ``Predictor``; ``--devices N`` runs Lightning's processes (``predict_distributed``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vitlab_edge.journal import JournalError, ResumableRun
from vitlab_edge.sources import expand_inputs
from vitlab_edge.tasks import decoder_for

from vitlab.errors import VitlabError
from vitlab.inference.writers import check_output, read_records, write_coco, write_embeddings, write_records


def output_of(a: argparse.Namespace) -> tuple[Path, str]:
    """(``--out``, its kind: ``records`` (JSONL/CSV), ``coco`` or ``npy``), or one line on what does not fit."""
    out = Path(a.out)
    if a.format == "npy" or (a.format is None and out.suffix == ".npy"):
        if out.suffix != ".npy":
            raise VitlabError("--format npy writes X.npy (--out X.npy)")
        return out, "npy"
    if a.format == "coco":
        if out.suffix != ".json" or a.annotations is None:
            raise VitlabError("--format coco writes a .json (--out X.json) for the --annotations GT.json")
        return out, "coco"
    out = check_output(out)
    if a.format is not None and out.suffix != f".{a.format}":
        raise VitlabError(f"--format {a.format} needs an --out name ending in .{a.format}, got {out}")
    return out, "records"


def check_options(a: argparse.Namespace) -> bool:
    """One line for an option out of range, or one that multi-device prediction does not take; True when the run
    is multi-device."""
    if a.batch_size < 1:
        raise VitlabError(f"--batch-size must be >= 1, got {a.batch_size}")
    if a.workers is not None and a.workers < 0:
        raise VitlabError(f"--workers must be >= 0, got {a.workers}")
    distributed = str(a.devices) != "1" or a.num_nodes > 1
    if distributed:
        if Path(a.model).suffix == ".onnx":
            raise VitlabError("multi-device prediction runs checkpoints; an .onnx model runs in one process")
        if a.threads is not None:
            raise VitlabError("--threads is for one process; each of Lightning's processes takes OMP_NUM_THREADS")
        if a.overlays is not None or a.explain:
            raise VitlabError("--overlays and --explain run in one process: drop --devices (or draw the overlays "
                              "of the images you want in a second, single-process run)")
    return distributed


def launching_process() -> bool:
    """False in the processes Lightning starts for a multi-device run (they re-run the same command line, with
    ``LOCAL_RANK`` set), on the other nodes and in the other processes a cluster launcher starts (``RANK``,
    ``SLURM_PROCID``): those read the resume state but change no file; global rank 0 writes."""
    return all(os.environ.get(k, "0") == "0" for k in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


class _Model:
    """The model of the run: its task, labels and backend name, and ``records(todo)``, the records of the inputs
    ``todo`` in order (one process: the Predictor's stream; several: ``predict_distributed``'s merged shards)."""

    def __init__(self, a: argparse.Namespace, out: Path, distributed: bool) -> None:
        self.a, self.distributed = a, distributed
        if distributed:
            from vitlab.inference.backends import inference_model
            from vitlab.tasks import load_task

            self.model, self.options = inference_model(load_task(a.model), a.task, a.model)
            pre = self.model.preprocess
            self.backend = f"torch x {a.devices} devices x {a.num_nodes} nodes"
            self.part = out.with_name(f".{out.name}.partial.ddp.jsonl")  # a journal file too (journal_files)
        else:
            from vitlab.inference import Predictor

            self.predictor = Predictor.load(a.model, device=a.device, threads=a.threads, task=a.task,
                                            providers=a.providers.split(",") if a.providers else None)
            pre, self.backend = self.predictor.preprocess, self.predictor.backend.name
        self.task, self.labels = pre.task, list(pre.labels)

    def records(self, todo: list[Any], indices: list[int]) -> Iterator[dict[str, Any]]:
        """The records of ``todo``, numbered (and their overlay files named) by ``indices`` in the whole input."""
        a = self.a
        if not self.distributed:  # progress=None: a bar on a terminal, nothing in a pipe
            for p in self.predictor.stream(todo, a.batch_size, a.workers, a.topk, a.overlays, a.explain,
                                           progress=None, indices=indices):
                yield p.to_dict()
            return
        if self.run_distributed(todo):  # rank 0: every rank's records, merged in input order
            yield from read_records(self.part)

    def run_distributed(self, todo: list[Any]) -> bool:
        from vitlab.inference.distributed import predict_distributed

        a = self.a
        devices = int(a.devices) if str(a.devices).isdigit() else a.devices
        return predict_distributed(self.model, todo, self.part, devices, a.num_nodes, a.strategy, a.accelerator,
                                   a.batch_size, a.workers, a.topk, progress=None, options=self.options)


def _check_task(a: argparse.Namespace, kind: str, model: _Model, items: list[str]) -> None:
    """The output format against the model's task, and a COCO ground truth against the inputs and classes."""
    fields = decoder_for(model.task).fields
    if kind == "coco" and "boxes" not in fields:
        raise VitlabError(f"--format coco writes detections; {a.model} is a {model.task} model")
    if kind == "npy" and "embedding" not in fields:
        raise VitlabError(f"--format npy writes embeddings; {a.model} is a {model.task} model (pass --task embedding)")
    if kind == "coco":
        from vitlab_edge.files import check_coco_inputs

        try:
            check_coco_inputs(items, a.annotations, model.labels)
        except ValueError as e:
            raise VitlabError(str(e)) from None


def predict_files(a: argparse.Namespace) -> None:
    """Run ``vitlab predict`` with its parsed arguments ``a``; prints one summary line."""
    distributed = check_options(a)
    out, kind = output_of(a)
    items = expand_inputs(a.sources, error=VitlabError)  # a folder/glob/list that names nothing: one line
    if not items:
        raise VitlabError(f"no inputs: {' '.join(a.sources)} matched no image files")
    owner = launching_process() if distributed else True
    try:
        run = ResumableRun(out, [str(it) for it in items], a.resume, read_records if kind == "records" else None,
                           owner=owner)
    except JournalError as e:
        raise VitlabError(str(e)) from None
    t0 = time.perf_counter()
    model = _Model(a, out, distributed)
    _check_task(a, kind, model, items)
    todo = [items[i] for i in run.todo]
    if not owner:  # another process of a multi-device run: its share; rank 0 writes
        if todo:
            model.run_distributed(todo)
        return
    if todo and run.record_or_report(model.records(todo, run.todo), "vitlab"):
        sys.exit(130)  # Ctrl-C: what was finished is kept for --resume
    if kind == "coco":
        n = write_coco(run.merged(), out, a.annotations, model.labels)
    elif kind == "npy":
        n = write_embeddings(run.merged(), out)
    elif out.suffix == ".jsonl":
        n = run.write_jsonl()  # this run's journal lines as they are: no second pass through JSON
    else:
        n = write_records(run.merged(), out, decoder_for(model.task).csv_fields)
    run.finish()
    skipped = f", {run.unreadable} unreadable journal lines skipped" if run.unreadable else ""
    print(f"vitlab: {n} records ({run.errors} errors, {run.earlier} from the earlier output{skipped}) -> {out} "
          f"[{model.backend}] in {time.perf_counter() - t0:.1f} s")

