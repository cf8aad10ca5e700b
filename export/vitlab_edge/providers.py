"""ONNX Runtime's GPU execution providers for serving: short names, the CUDA and TensorRT provider options (spelled as
ONNX Runtime spells them), and the one-line reason a provider cannot run on this machine, found before ONNX Runtime
is asked, so that a missing GPU, driver or library costs one log line instead of ONNX Runtime's error banners.

    EdgeModel("model.onnx", providers=["tensorrt"])                    # TensorRT (fp16, engine cache), CUDA, CPU
    EdgeModel("model.onnx", providers=[CudaOptions(prefer_nhwc=True), "cpu"])
    vitlab-edge predict model.onnx photos/ --out p.jsonl --providers tensorrt

Short names (any case): ``tensorrt`` (or ``trt``) is TensorRT, then CUDA, then CPU; ``cuda`` is CUDA then CPU;
``cpu`` is CPU. A list is tried in order: ``create_session`` drops what cannot run here and says why in one line.
Full ONNX Runtime names (``CUDAExecutionProvider``) and ``(name, options)`` pairs pass through unchanged.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
SHORT_NAMES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}
# what a short name asks for: the provider and the ones to fall back on, in order
FALLBACKS = {TENSORRT: (TENSORRT, CUDA, CPU), CUDA: (CUDA, CPU), CPU: (CPU,)}


@dataclass(frozen=True)
class CudaOptions:
    """Options of ONNX Runtime's CUDA execution provider (``CUDAExecutionProvider``). The defaults are ONNX
    Runtime's own, and only options that differ from them are passed (so older runtimes accept them).

    ``cudnn_conv_algo_search``: ``EXHAUSTIVE`` (benchmark every cuDNN algorithm once per input shape: the fastest
    convolutions, paid at the first run of each batch size), ``HEURISTIC`` (cuDNN's pick: cheap for a stream of
    changing batch sizes) or ``DEFAULT``. ``prefer_nhwc``: channels-last convolution kernels (the patch embedding;
    a detector's pyramid). ``enable_cuda_graph``: capture the whole run as one CUDA graph on the first run and
    replay it: fixed input shapes and inputs/outputs bound at fixed device addresses only (``vitlab_edge.binding``;
    ``fixed_batch_options``). ``do_copy_in_default_stream``: copies on the compute stream (ONNX Runtime warns that
    separate streams may race). ``use_tf32``: TF32 matmuls for fp32 graphs (ONNX Runtime's default; off for
    bit-closer fp32 parity with a PyTorch that does not use TF32)."""

    device_id: int = 0
    cudnn_conv_algo_search: str = "EXHAUSTIVE"
    prefer_nhwc: bool = False
    enable_cuda_graph: bool = False
    do_copy_in_default_stream: bool = True
    use_tf32: bool = True

    name = CUDA

    def provider(self) -> tuple[str, dict[str, str]] | str:
        """``(name, options)`` for ONNX Runtime, only the non-default options; the bare name when there are none."""
        if self.cudnn_conv_algo_search not in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"):
            raise ValueError(f"cudnn_conv_algo_search must be EXHAUSTIVE, HEURISTIC or DEFAULT, got "
                             f"{self.cudnn_conv_algo_search!r}")
        return _changed(self, CudaOptions())


@dataclass(frozen=True)
class TensorRTOptions:
    """Options of ONNX Runtime's TensorRT execution provider (``TensorrtExecutionProvider``; opt-in: it needs the
    TensorRT libraries, ``libnvinfer``, of the major version the onnxruntime-gpu wheel was built against, e.g. from
    the ``tensorrt-cu13`` / ``tensorrt-cu12`` wheels). Nodes TensorRT does not take run on the CUDA provider.

    ``fp16``: let TensorRT pick fp16 kernels (``trt_fp16_enable``). ``cache_dir``: where built engines and the
    timing cache are kept (``trt_engine_cache_path``; default ``$VITLAB_TRT_CACHE`` or
    ``~/.cache/vitlab_edge/tensorrt``): building an engine takes from seconds to minutes, the cache makes the next
    session start in seconds (one engine per model, precision and shape profile; delete the folder after upgrading
    TensorRT or the GPU). ``profile``: ``(min, opt, max)`` shapes, e.g. ``batch_profile("images", (3, 224, 224),
    1024, 256)``: one engine for every batch in that range (without it TensorRT rebuilds when a batch outgrows
    the shapes seen). ``cuda_graph``: TensorRT's own CUDA graph (``trt_cuda_graph_enable``), fixed shapes only."""

    device_id: int = 0
    fp16: bool = True
    cache_dir: str | None = None
    timing_cache: bool = True
    builder_optimization_level: int = 3
    cuda_graph: bool = False
    max_workspace_size: int | None = None
    profile: tuple[str, str, str] | None = None

    name = TENSORRT

    def provider(self) -> tuple[str, dict[str, str]]:
        """``(name, options)`` for ONNX Runtime; the cache folder is made when TensorRT is kept (``make_cache``)."""
        cache = Path(self.cache_dir or os.environ.get("VITLAB_TRT_CACHE") or
                     Path.home() / ".cache" / "vitlab_edge" / "tensorrt").expanduser()
        opts = {"device_id": self.device_id, "trt_fp16_enable": self.fp16, "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": self.timing_cache,
                "trt_timing_cache_path": str(cache), "trt_cuda_graph_enable": self.cuda_graph,
                "trt_builder_optimization_level": self.builder_optimization_level}
        if self.max_workspace_size is not None:
            opts["trt_max_workspace_size"] = self.max_workspace_size
        if self.profile is not None:
            opts.update(zip(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"),
                            self.profile))
        return TENSORRT, {k: _text(v) for k, v in opts.items()}


def batch_profile(input_name: str, chw: tuple[int, ...], max_batch: int, opt_batch: int | None = None
                  ) -> tuple[str, str, str]:
    """TensorRT ``(min, opt, max)`` shape strings for one input whose first axis is the batch, 1 to ``max_batch``."""
    dims = "x".join(str(int(d)) for d in chw)
    return tuple(f"{input_name}:{n}x{dims}" for n in (1, opt_batch or max_batch, max_batch))  # type: ignore[return-value]


def _text(value: Any) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


def _changed(options: CudaOptions, default: CudaOptions) -> tuple[str, dict[str, str]] | str:
    diff = {f.name: _text(getattr(options, f.name)) for f in fields(options)
            if getattr(options, f.name) != getattr(default, f.name)}
    return (options.name, diff) if diff else options.name


def provider_name(entry: Any) -> str:
    """The ONNX Runtime name of a provider entry: a name, a ``(name, options)`` pair or an options object."""
    if isinstance(entry, (CudaOptions, TensorRTOptions)):
        return entry.name
    return entry[0] if isinstance(entry, tuple) else entry


def expand(requested: Any) -> list[Any]:
    """Providers as ONNX Runtime takes them, in order, duplicates dropped: short names expanded with their fallbacks
    (``tensorrt`` -> TensorRT with ``TensorRTOptions()``, CUDA, CPU), options objects turned into ``(name,
    options)`` pairs, a comma-separated string split. Unknown names pass through (``resolve_providers`` skips them
    with a reason)."""
    if isinstance(requested, str):
        requested = [p.strip() for p in requested.split(",") if p.strip()]
    out: list[Any] = []
    for entry in requested:
        if isinstance(entry, str) and entry.lower() in SHORT_NAMES:
            chain = FALLBACKS[SHORT_NAMES[entry.lower()]]
            items: list[Any] = [TensorRTOptions() if p == TENSORRT else p for p in chain]
        else:
            items = [entry]
        for item in items:
            if isinstance(item, (CudaOptions, TensorRTOptions)):
                item = item.provider()
            if provider_name(item) not in [provider_name(o) for o in out]:
                out.append(item)
    return out


@functools.cache
def cuda_driver_present() -> bool:
    """True when the NVIDIA driver library loads: without it the CUDA and TensorRT providers can only fail."""
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def make_cache(provider: Any) -> str | None:
    """Create a TensorRT entry's engine cache folder; why it cannot be made (a read-only HOME), or None."""
    path = provider[1].get("trt_engine_cache_path") if isinstance(provider, tuple) else None
    if not path:
        return None
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"its engine cache folder {path} cannot be made: {e.strerror or e}; set VITLAB_TRT_CACHE"
    return None


def unavailable(name: str, available: list[str] | set[str], ort_dir: str | None = None) -> str | None:
    """Why provider ``name`` cannot run on this machine (one short phrase), or None when it may: not in this
    onnxruntime build, no NVIDIA driver, or (TensorRT) its libraries not found. What only ONNX Runtime can tell
    (a CUDA library missing, a GPU too old) ``create_session`` learns by trying."""
    if name == CPU:
        return None
    if name not in available:
        return f"this onnxruntime build has no {name}"
    if name in GPU_PROVIDERS and not cuda_driver_present():
        return "no NVIDIA driver found"
    if name == TENSORRT:
        return tensorrt_missing(ort_dir)
    return None


@functools.cache
def tensorrt_missing(ort_dir: str | None = None) -> str | None:
    """None when the TensorRT libraries that ONNX Runtime's TensorRT provider links (``libnvinfer.so.N``,
    ``libnvonnxparser.so.N``) load, from the system paths or a ``tensorrt*_libs`` wheel (loaded here, globally, so
    that the provider finds them); else why not, with what to install."""
    names = _tensorrt_sonames(ort_dir)
    dirs = [Path(spec.submodule_search_locations[0]) for mod in ("tensorrt_libs", "tensorrt_cu13_libs",
                                                                   "tensorrt_cu12_libs")
            if (spec := importlib.util.find_spec(mod)) and spec.submodule_search_locations]
    for soname in names:
        for candidate in [soname, *(str(d / soname) for d in dirs if (d / soname).is_file())]:
            try:
                ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
                break
            except OSError:
                continue
        else:
            major, cuda = soname.rsplit(".", 1)[-1], _built_cuda_major()
            which = f"TensorRT {major}.x for CUDA {cuda} (the tensorrt-cu{cuda} wheel, version {major}.*)" if cuda \
                else f"TensorRT {major}.x"
            return f"TensorRT library {soname} not found: install {which} or add it to LD_LIBRARY_PATH"
    return None


def _built_cuda_major() -> str | None:
    """The CUDA major version onnxruntime-gpu was built for (``build_and_package_info.cuda_version``)."""
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        return None
    version = getattr(info, "cuda_version", "") or ""
    return version.split(".")[0] or None


def _tensorrt_sonames(ort_dir: str | None) -> list[str]:
    """The TensorRT sonames the installed TensorRT provider library needs (read from its dynamic section's
    strings), ``libnvinfer.so.10`` and its parser when it cannot be read."""
    lib = Path(ort_dir or "") / "capi" / "libonnxruntime_providers_tensorrt.so"
    try:
        found = sorted(set(re.findall(rb"lib(?:nvinfer|nvonnxparser)\.so\.\d+", lib.read_bytes())))
    except OSError:
        found = []
    return [s.decode() for s in found] or ["libnvinfer.so.10", "libnvonnxparser.so.10"]
