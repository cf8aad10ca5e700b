"""Runs with the inputs and outputs kept on the session's device (ONNX Runtime I/O binding): the batch is copied to
the GPU once, the outputs stay there until asked for, and nothing else crosses the bus. On the CPU provider the same
calls work (the "device" is host memory), so code written for a GPU runs anywhere.

    session = create_session("model.onnx", [CudaOptions(enable_cuda_graph=True), "cpu"],
                             fixed_batch_options(256))          # CUDA graphs need fixed shapes
    run = BoundRunner(session, batch=256)                       # inputs at fixed device addresses
    probs = run({"images": batch_uint8})["probs"]               # a smaller batch is padded, its rows cut back

``batch``: a fixed batch size. The inputs are then allocated once on the device and refreshed in place
(``OrtValue.update_inplace``), which CUDA graphs require (a captured graph replays on the same addresses); a
smaller batch is padded (the last batch of a stream) and its outputs cut to its rows. Without it every call binds a
new device copy of its inputs, any batch size.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vitlab_edge.providers import GPU_PROVIDERS
from vitlab_edge.session import import_onnxruntime

ORT_DTYPES = {"tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(float)": np.float32,
              "tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def session_device(session) -> tuple[str, int]:
    """``("cuda", device id)`` when the session's first provider runs on an NVIDIA GPU, else ``("cpu", 0)``."""
    first = session.get_providers()[0]
    if first in GPU_PROVIDERS:
        return "cuda", int(session.get_provider_options().get(first, {}).get("device_id", 0))
    return "cpu", 0


def fixed_batch_options(batch: int, options: Any | None = None, dim: str = "batch"):
    """SessionOptions (``options``, or new ones) with the graph's symbolic batch axis ``dim`` fixed to ``batch``
    (ONNX Runtime's free-dimension override: the shape arithmetic then folds into constants, and nothing is left on
    the CPU provider). vitlab's exported graphs name their batch axis ``batch``."""
    opts = options if options is not None else import_onnxruntime().SessionOptions()
    opts.add_free_dimension_override_by_name(dim, int(batch))
    return opts


class BoundRunner:
    """One session run through I/O binding; ``outputs``: the outputs to bind (default all), ``batch``: fixed batch
    size (see the module docstring). ``__call__(feeds)`` copies ``feeds`` (name -> array, or one array for a
    one-input graph) to the device, runs, and returns the outputs on the host; ``put`` / ``run`` / ``host_outputs``
    do the same in steps (time ``run`` alone for the model's own speed)."""

    def __init__(self, session, outputs: list[str] | None = None, batch: int | None = None) -> None:
        self.ort = import_onnxruntime()
        self.session, self.batch, self.rows = session, batch, 0
        self.device, self.device_id = session_device(session)
        self.inputs = {i.name: ORT_DTYPES.get(i.type, np.float32) for i in session.get_inputs()}
        self.output_names = list(outputs or [o.name for o in session.get_outputs()])
        self.binding = session.io_binding()
        self._values: dict[str, Any] = {}
        self._staging: dict[str, np.ndarray] = {}
        self._outputs_bound: int | None = None  # the rows the outputs were bound for

    def put(self, feeds: dict[str, np.ndarray] | np.ndarray) -> None:
        """Copy ``feeds`` to the device and bind them (in place at a fixed batch size: same device addresses)."""
        if not isinstance(feeds, dict):
            if len(self.inputs) != 1:
                raise ValueError(f"this graph takes {list(self.inputs)}: pass a dict")
            feeds = {next(iter(self.inputs)): feeds}
        rows = {len(v) for v in feeds.values()}
        if len(rows) != 1:
            raise ValueError(f"inputs of different batch sizes: {sorted(rows)}")
        self.rows = rows.pop()
        for name, value in feeds.items():
            value = np.ascontiguousarray(value, dtype=self.inputs.get(name, value.dtype))
            if self.batch is None:
                ortvalue = self.ort.OrtValue.ortvalue_from_numpy(value, self.device, self.device_id)
                self.binding.bind_ortvalue_input(name, ortvalue)
                self._values[name] = ortvalue  # alive until the next put
                continue
            if self.rows > self.batch:
                raise ValueError(f"batch of {self.rows} rows for a runner fixed at {self.batch}")
            if name not in self._values:
                self._staging[name] = np.zeros((self.batch, *value.shape[1:]), value.dtype)
                self._values[name] = self.ort.OrtValue.ortvalue_from_numpy(self._staging[name], self.device,
                                                                           self.device_id)
                self.binding.bind_ortvalue_input(name, self._values[name])
            staging = self._staging[name]
            if self.rows == self.batch:
                staging = value
            else:
                staging[:self.rows] = value
            self._values[name].update_inplace(staging)
        self._bind_outputs()

    def bind_pointer(self, name: str, shape: tuple[int, ...] | list[int], pointer: int, dtype: Any = np.uint8
                     ) -> None:
        """Bind memory already on the session's device (a CUDA tensor's ``data_ptr()``, say) as input ``name``, no
        copy: it must hold its data when ``run`` starts and stay valid until it returns."""
        if self.batch is not None:
            raise ValueError("bind_pointer binds any batch size: use a runner without a fixed batch")
        self.binding.bind_input(name, self.device, self.device_id, dtype, list(shape), pointer)
        self.rows = int(shape[0])
        self._bind_outputs()

    def _bind_outputs(self) -> None:
        """Device outputs: preallocated once when their shape is static at the fixed batch size (what CUDA graphs
        want), else allocated by ONNX Runtime on the device, bound again when the batch size changes (a binding
        keeps the outputs of its last run, shape included)."""
        rows = self.batch if self.batch is not None else self.rows
        if self._outputs_bound == rows:
            return
        if self._outputs_bound is not None:
            self.binding.clear_binding_outputs()
        shapes = {o.name: (o.shape, o.type) for o in self.session.get_outputs()}
        for name in self.output_names:
            shape, kind = shapes[name]
            dims = [self.batch if k == 0 else d for k, d in enumerate(shape)] if self.batch is not None else None
            if dims is not None and all(isinstance(d, int) and d > 0 for d in dims):
                value = self.ort.OrtValue.ortvalue_from_shape_and_type(dims, ORT_DTYPES.get(kind, np.float32),
                                                                       self.device, self.device_id)
                self.binding.bind_ortvalue_output(name, value)
                self._values[f"output:{name}"] = value
            else:
                self.binding.bind_output(name, self.device, self.device_id)
        self._outputs_bound = rows

    def run(self, run_options: Any | None = None) -> None:
        """Run on the bound inputs; returns when the outputs are ready on the device."""
        self.session.run_with_iobinding(self.binding, run_options)

    def host_outputs(self) -> dict[str, np.ndarray]:
        """The outputs copied to the host, cut to the rows of the last ``put``."""
        arrays = self.binding.copy_outputs_to_cpu()
        rows = self.rows if self.batch is not None else None
        return {name: (a[:rows] if rows is not None and a.ndim and len(a) == self.batch else a)
                for name, a in zip(self.output_names, arrays)}

    def __call__(self, feeds: dict[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        self.put(feeds)
        self.run()
        return self.host_outputs()


def open_bound(path: str | os.PathLike, providers: Any = None, batch: int | None = None,
               options: Any | None = None, outputs: list[str] | None = None) -> BoundRunner:
    """A session on ``path`` (``create_session``; with ``batch``, its batch axis fixed: ``fixed_batch_options``) and
    its ``BoundRunner``: the one call for a CUDA-graph session, ``providers=[CudaOptions(enable_cuda_graph=True),
    "cpu"]``."""
    from vitlab_edge.session import create_session

    if batch is not None:
        options = fixed_batch_options(batch, options)
    return BoundRunner(create_session(path, providers, options), outputs, batch)
