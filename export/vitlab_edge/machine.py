"""The machine a figure was measured on, as one JSON-ready dict: every benchmark writes it under ``"machine"``.

The same benchmark gives different ratios on machines of the same kind: ONNX Runtime's int8 speed-up over eager on
ViT-S was 2.84x on a Zen 4 (AVX-512) and 1.77x on a Zen 3 (AVX2), because MLAS picks its kernels by the ISA. So a
figure carries the CPU (model name, vendor family / model, an approximate micro-architecture), the cores this process
may use, the ISA flags that change kernels, the versions of torch and ONNX Runtime, and the GPU if there is one.

Standard library only (no torch, no onnxruntime import: versions come from the installed distributions), so that
anything can call it cheaply — vitlab's demo, the benchmarks (``benchmarks/machine.py`` loads this file by its path),
``export/check_cuda.py`` — and ``python -m vitlab_edge.machine`` prints it.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from importlib import metadata

# flags (as /proc/cpuinfo spells them) that select different GEMM / attention / quantisation kernels
KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
                "asimd", "asimddp", "sve", "sve2", "i8mm", "bf16")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux); empty elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


# Intel server cores by family 6 model number (Intel's SDM, "CPUID signature values")
_INTEL_SERVER = {85: "Skylake-SP / Cascade Lake", 106: "Ice Lake-SP", 108: "Ice Lake-SP", 143: "Sapphire Rapids",
                 207: "Emerald Rapids", 173: "Granite Rapids", 174: "Granite Rapids"}


def _uarch(vendor: str, family: int | None, model: int | None, flags: set[str]) -> str | None:
    """An approximate micro-architecture: AMD Zen generations (family 25 is Zen 3 and Zen 4: only Zen 4 has
    AVX-512) and Intel's server cores (the machines these figures come from); None otherwise."""
    if family is None:
        return None
    if vendor == "GenuineIntel":
        return _INTEL_SERVER.get(model) if family == 6 else None
    if vendor != "AuthenticAMD":
        return None
    if family == 23:
        return "Zen 2" if (model or 0) >= 0x30 else "Zen / Zen+"
    if family == 25:
        return "Zen 4" if "avx512f" in flags else "Zen 3"
    if family == 26:
        return "Zen 5"
    return None


def _version(module: str) -> str | None:
    """The version of the distribution that provides ``module`` (onnxruntime comes as onnxruntime-gpu, too)."""
    if module in sys.modules and getattr(sys.modules[module], "__version__", None):
        return str(sys.modules[module].__version__)
    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        pass
    for dist in metadata.packages_distributions().get(module, []):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _gpus() -> list[str]:
    """GPU names: from torch when it is already imported, else ``nvidia-smi`` when it is on PATH."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken CUDA setup means "no GPU" here, not a failed benchmark
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout
            return [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return []


def isa_level(flags: list[str] | set[str]) -> str:
    """The widest vector ISA among ``flags``: AMX, AVX-512, AVX2, AVX, SVE, NEON or scalar."""
    for flag, name in (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"),
                       ("sve", "SVE"), ("asimd", "NEON")):
        if flag in flags:
            return name
    return "no SIMD flags read"


def machine_info() -> dict:
    """CPU, cores, kernel-relevant ISA flags, torch / ONNX Runtime versions and GPUs of this machine."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    vendor = info.get("vendor_id", "")
    family = int(info["cpu family"]) if info.get("cpu family", "").isdigit() else None
    model = int(info["model"]) if info.get("model", "").isdigit() else None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "vendor": vendor or None,
        "family": family,
        "model": model,
        "uarch": _uarch(vendor, family, model, flags),
        "cores": usable,
        "cpu_count": os.cpu_count(),
        "isa": isa_level(flags),
        "flags": [f for f in KERNEL_FLAGS if f in flags],
        "hypervisor": "hypervisor" in flags,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "gpu": _gpus(),
    }


def run_info() -> dict:
    """The command that made a result (``python benchmarks/X.py ARGS``, as typed) and when (UTC)."""
    argv = [sys.argv[0] if not sys.argv[0].endswith(".py") else os.path.relpath(sys.argv[0]), *sys.argv[1:]]
    return {"command": shlex.join(["python", *argv]), "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())}


def machine_label(machine: dict) -> str:
    """One short line for tables: "AMD EPYC (Zen 3), 2 cores, AVX2", or the GPU, or what a transcribed block says."""
    if machine.get("label"):
        return str(machine["label"])
    if machine.get("gpu"):
        gpus = machine["gpu"]
        return f"{len(gpus)}x {gpus[0]}" if len(gpus) > 1 else str(gpus[0])
    uarch = f" ({machine['uarch']})" if machine.get("uarch") else ""
    cores = f", {machine['cores']} cores" if machine.get("cores") else ""
    return f"{machine.get('cpu') or 'CPU'}{uarch}{cores}, {machine.get('isa') or isa_level(machine.get('flags', []))}"


def main() -> None:
    block = machine_info()
    print(json.dumps(block, indent=2))
    print(machine_label(block), file=sys.stderr)


if __name__ == "__main__":
    main()
