"""Inference backends behind one small protocol: uint8 batches in, the exported graph's named outputs out.

``TorchBackend`` runs a task's model (from a Lightning checkpoint) and returns what the ONNX graph of that task
returns (its ``TaskSpec.outputs``: classification ``probs``; detection ``boxes``, ``scores``, ``labels``,
``num_dets`` from the model's one ``postprocess`` with the checkpoint's thresholds; embedding ``embedding``);
``OrtBackend`` runs an exported ONNX model through the edge kit's session (CUDA when granted, else CPU). Both read
the same PreprocessCfg, so the Predictor prepares pixels identically for either, and the edge kit's record decoder
(``vitlab_edge.records``) reads both. On a GPU both also take the Predictor's pipelined path
(``vitlab.inference.gpu``): ``stage`` (pinned memory, asynchronous copy) and ``run_staged``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vitlab.errors import VitlabError
from vitlab.inference.threads import check_threads, torch_threads
from vitlab.preprocess import PreprocessCfg
from vitlab.tasks.spec import get_task, task_of_module


class Backend(Protocol):
    """What the Predictor runs. ``TorchBackend`` and ``OrtBackend`` also have ``threads`` (None: the runtime's
    default), ``on_cpu`` and ``with_threads(n)`` (the same model with ``n`` intra-op threads), which the Predictor's
    thread trial needs; a backend without them runs as it is."""

    preprocess: PreprocessCfg
    name: str

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """``uint8 [N, C, H, W]`` -> the task's named outputs (``vitlab_edge.records``: classification ``probs
        float32 [N, K]``; detection ``boxes [N, D, 4]``, ``scores [N, D]``, ``labels`` / ``num_dets`` int64)."""
        ...


def _outputs_of(model):
    """How ``model`` answers: its task's ``TaskSpec.outputs`` (by ``model.preprocess.task``)."""
    spec = get_task(model.preprocess.task)
    if spec.outputs is None:
        raise VitlabError(f"a {spec.name} model answers no images; {spec.instead}")
    return spec.outputs


def task_options(task) -> dict[str, Any]:
    """The inference options a trained task (LightningModule) keeps in its hyper-parameters, e.g. a detector's
    score / NMS thresholds and ``max_det`` (its ``TaskSpec.options``)."""
    return {k: task.hparams[k] for k in get_task(task.model.preprocess.task).options if k in task.hparams}


def inference_model(trained, task: str | None = None, what: str = "the model") -> tuple[Any, dict[str, Any]]:
    """(the model that answers, its options) for a trained task (``vitlab.load``) served as ``task`` (default: what
    its ``TaskSpec`` serves: itself, or an MAE's ``embedding``). ``embedding`` works for every task with a ViT
    backbone; a verb that does not apply raises one line naming ``what`` and what to use instead."""
    from vitlab.models.embed import create_embedder

    own = task_of_module(type(trained).__name__)
    want = get_task(task).name if task else own.served.name
    if want == "embedding":
        if not hasattr(getattr(trained, "model", None), "backbone"):
            raise own.refuse("embedding", what)
        return create_embedder(trained.model), {}
    if want != own.name:
        raise VitlabError(f"{what} is a {own.name} model; it answers {own.served.name} or embedding, not {want}")
    if own.outputs is None:
        raise own.refuse("predict", what)
    return trained.model, task_options(trained)


class TorchBackend:
    """A task's model (classifier, detector) on ``device`` (default: CUDA when available, else CPU), fp32, no
    autograd; ``options``: its post-processing options (``task_options``). ``autocast``: ``"float16"`` or
    ``"bfloat16"`` runs the model under ``torch.autocast`` (CUDA only; outputs come back as float32)."""

    def __init__(self, model, device: str | None = None, options: dict[str, Any] | None = None,
                 threads: int | None = None, autocast: str | None = None) -> None:
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if autocast not in (None, "float16", "bfloat16"):
            raise VitlabError(f"autocast must be float16 or bfloat16, got {autocast!r}")
        if autocast is not None and self.device.type != "cuda":
            raise VitlabError(f"autocast={autocast} is for CUDA devices; this model runs on {self.device}")
        self.model = model.eval().to(self.device)
        self.preprocess = model.preprocess
        self.options = dict(options or {})
        self.threads = check_threads(threads)
        self.autocast = autocast
        _outputs_of(model)
        self.name = f"torch[{self.device}{', ' + autocast if autocast else ''}]"
        self._stager = self._stream = None

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def with_threads(self, threads: int) -> TorchBackend:
        """The same model (shared, not copied) run with ``threads`` intra-op threads."""
        return TorchBackend(self.model, str(self.device), self.options, threads, self.autocast)

    def stage(self, images: np.ndarray):
        """The batch copied toward the GPU through pinned memory, asynchronously (``gpu.PinnedStager``)."""
        from vitlab.inference.gpu import PinnedStager

        if self._stager is None:
            self._stager = PinnedStager(self.device)
        return self._stager.stage(images)

    def run_staged(self, staged) -> tuple[dict[str, np.ndarray], float]:
        """The outputs of a staged batch and the model's device seconds (CUDA events around it on its own stream,
        which waits for the batch's copy only)."""
        import torch

        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(staged.ready)
            staged.images.record_stream(self._stream)
            start.record(self._stream)
            out = model_outputs(self.model, staged.images, self.options, self.autocast, to_host=False)
            end.record(self._stream)
            host = {k: v.cpu().numpy() for k, v in out.items()}
        return host, start.elapsed_time(end) / 1000

    @classmethod
    def from_task(cls, trained, device: str | None = None, threads: int | None = None, task: str | None = None,
                  what: str = "the model") -> TorchBackend:
        """The backend of a trained task (``vitlab.load``) served as ``task`` (see ``inference_model``)."""
        model, options = inference_model(trained, task, what)
        return cls(model, device, options, threads)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch_threads(self.threads):
            return torch_outputs(self.model, batch, self.device, self.options, self.autocast)

    def attention_maps(self, batch: np.ndarray) -> np.ndarray:
        """Attention rollout per image, ``[N, h, w]`` in 0..1 (see ``vitlab.inference.explain``)."""
        from vitlab.inference.explain import attention_rollout

        with torch_threads(self.threads):
            return attention_rollout(self.model, batch, self.device)


def torch_outputs(model, batch: np.ndarray, device, options: dict[str, Any] | None = None,
                  autocast: str | None = None) -> dict[str, np.ndarray]:
    """``uint8 [N, C, H, W]`` numpy -> the named outputs of ``model`` on ``device`` as numpy (floats as float32,
    integers kept int64), as its task's ONNX graph gives them."""
    import torch

    return model_outputs(model, torch.from_numpy(batch).to(device, non_blocking=True), options, autocast)


def model_outputs(model, x, options: dict[str, Any] | None = None, autocast: str | None = None,
                  to_host: bool = True) -> dict[str, Any]:
    """The task's named outputs of ``model`` for the uint8 tensor ``x`` (on the model's device), floats as float32;
    ``autocast``: a dtype name for ``torch.autocast`` on CUDA; ``to_host``: as numpy (else tensors where they are)."""
    import torch

    run = _outputs_of(model)
    dtype = getattr(torch, autocast) if autocast else None
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        out = {k: (v.float() if v.is_floating_point() else v) for k, v in run(model, x, **(options or {})).items()}
        return {k: v.cpu().numpy() for k, v in out.items()} if to_host else out


class OrtBackend:
    """An exported vitlab ONNX model; ``providers`` default to CUDA then CPU (what was granted is in ``name``).

    The session's intra-op threads do not spin-wait between operators: the Predictor's decode workers share the
    cores with them, and spinning took the cycles decoding needed (the demo model over 28x28 PNGs on 2 cores:
    1.3x the images/s without it; vit_small within the noise). ``threads``: ONNX Runtime's intra-op thread count
    (default: one per core)."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None,
                 threads: int | None = None) -> None:
        from vitlab_edge import EdgeModel, ModelFormatError
        from vitlab_edge.session import import_onnxruntime

        self.path, self.threads = Path(path), check_threads(threads)
        options = import_onnxruntime().SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.edge = EdgeModel(path, providers=providers, session_options=options)
        except ModelFormatError as e:
            raise VitlabError(str(e)) from None
        meta = self.edge.metadata
        fields = ("input_size", "mean", "std", "interpolation", "resize", "crop_pct", "labels")
        self.preprocess = PreprocessCfg.from_dict({**{k: meta[k] for k in fields if k in meta},
                                                   "task": self.edge.task})
        self.name = f"onnxruntime[{self.edge.providers[0]}]"
        self._outputs = list(self.edge.decoder.outputs)

        self._stager = self._runner = None

    @property
    def on_cpu(self) -> bool:
        return self.edge.providers[0] == "CPUExecutionProvider"

    @property
    def on_gpu(self) -> bool:
        from vitlab_edge.providers import GPU_PROVIDERS

        return self.edge.providers[0] in GPU_PROVIDERS

    def with_threads(self, threads: int) -> OrtBackend:
        """A second session of the same file with ``threads`` intra-op threads (a session's count is fixed)."""
        return OrtBackend(self.path, self.edge.providers, threads)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.edge.run(np.ascontiguousarray(batch), self._outputs)  # what the records need only

    def stage(self, images: np.ndarray):
        """The batch on its way to the GPU: through pinned memory and torch's copy stream when torch has CUDA, else
        left on the host for the I/O binding's own copy."""
        import torch

        from vitlab.inference.gpu import PinnedStager, Staged

        if not torch.cuda.is_available():
            return Staged(np.ascontiguousarray(images), len(images))
        if self._stager is None:
            from vitlab_edge.binding import session_device

            self._stager = PinnedStager(f"cuda:{session_device(self.edge.session)[1]}")
        return self._stager.stage(images)

    def run_staged(self, staged) -> tuple[dict[str, np.ndarray], float]:
        """The outputs of a staged batch (inputs bound on the GPU by I/O binding) and the seconds of the run, which
        returns when the GPU is done."""
        from vitlab_edge.binding import BoundRunner

        if self._runner is None:
            self._runner = BoundRunner(self.edge.session, self._outputs)
        runner = self._runner
        if staged.ready is None:
            runner.put(staged.images)
        else:  # a CUDA tensor: bound where it is, once its copy is done
            staged.ready.synchronize()
            runner.bind_pointer(self.edge.metadata["inputs"][0], tuple(staged.images.shape),
                                staged.images.data_ptr())
        t = time.perf_counter()
        runner.run()
        seconds = time.perf_counter() - t
        return runner.host_outputs(), seconds


def load_backend(path: str | os.PathLike, device: str | None = None, providers: list[str] | None = None,
                 threads: int | None = None, task: str | None = None, pretrained: bool | str | None = None
                 ) -> Backend:
    """A backend for a ``.onnx`` file, a vitlab Lightning checkpoint, or a model name (a vitlab variant or timm ViT:
    its embeddings; ``pretrained`` as for ``create_backbone``). ``task``: serve a checkpoint as another task
    (``embedding``: any checkpoint with a ViT backbone); an ONNX file answers the task it was exported for.
    ``threads``: the model's intra-op threads on CPU (default: the runtime's, one per core)."""
    p = Path(path)
    if not p.is_file():
        if _is_model_name(str(path)):
            from vitlab.models.embed import create_embedder

            if task is not None and get_task(task).name != "embedding":
                raise VitlabError(f"{path} is a bare backbone: it answers embedding, not {task}")
            return TorchBackend(create_embedder(str(path), pretrained=pretrained), device, threads=threads)
        raise VitlabError(f"model file {p} does not exist")
    if p.suffix == ".onnx":
        backend = OrtBackend(p, providers, threads)
        if task is not None and get_task(task).name != backend.preprocess.task:
            raise VitlabError(f"{p} was exported as a {backend.preprocess.task} model; for {task} export the "
                              f"checkpoint with `vitlab export CKPT --task {task}`")
        return backend
    from vitlab.tasks import load_task

    return TorchBackend.from_task(load_task(p), device, threads, task, str(p))


def _is_model_name(name: str) -> bool:
    """A registered vitlab variant or a timm ViT-family name (``arch`` or ``arch.tag``), not a path."""
    from vitlab.registry import list_models

    if os.sep in name or "/" in name or Path(name).suffix in (".ckpt", ".onnx", ".pt", ".pth", ".safetensors"):
        return False
    return name.split(".")[0] in set(list_models())
