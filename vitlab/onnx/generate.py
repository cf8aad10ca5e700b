"""The generation piece of the exporter: ONE guided denoiser step of a ``DiffusionTask``'s EMA weights as ONNX, and
the sample-parity gate.

The graph is ``Denoiser.guided``: inputs ``x`` float32 ``[N, C, H, W]``, ``t`` float32 ``[N]``, ``y`` int64 ``[N]``,
``guidance`` float32 ``[N]`` (N dynamic; both halves of classifier-free guidance run inside as one batch of 2N),
output ``v`` float32 ``[N, C, H, W]``. The sampling loop stays outside, in numpy (``vitlab_edge.sampling``), so the
gate compares what users get: images sampled from the same seed by the torch EMA model (``task.sample``) and by the
ONNX file through the edge kit's loop, ``PER_CLASS`` per class at the task's default steps, guidance and method.
A variant passes when the mean |difference| of their uint8 pixels is at most ``MAX_MEAN_ABS_DIFF`` (1/255 of the
range); the report adds the max.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from vitlab_edge.sampler import session_step
from vitlab_edge.sampling import sample
from vitlab_edge.tasks import EDGE_TASKS

from vitlab.errors import VitlabError

OUTPUTS, INPUTS = list(EDGE_TASKS["generation"].outputs), EDGE_TASKS["generation"].inputs
PER_CLASS, SEED = 2, 0
MAX_MEAN_ABS_DIFF = 1.0  # uint8 levels: 1/255 of the pixel range, for every precision


class GuidedStep(nn.Module):
    """``(x [N, C, H, W], t [N], y [N] int64, guidance [N]) -> v [N, C, H, W]``: ``Denoiser.guided`` as the module
    the exporter traces (positional inputs, named as the graph's)."""

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        return self.denoiser.guided(x, t, y, guidance)


def step_examples(input_size: tuple[int, int, int], num_classes: int, n: int = 3) -> dict[str, torch.Tensor]:
    """Example inputs (batch ``n``) for tracing, named as the graph's inputs."""
    g = torch.Generator().manual_seed(0)
    values = (torch.randn(n, *input_size, generator=g), torch.rand(n, generator=g),
              torch.randint(0, num_classes, (n,), generator=g), torch.full((n,), 2.0))
    return dict(zip(INPUTS, values))


class GenerationExport:
    """A DiffusionTask's step graph, sample references and parity gate (``TaskSpec.exporter``
    of generation); it takes the task itself: the EMA weights and the sampling defaults."""

    outputs = OUTPUTS

    def __init__(self, task: Any, options: dict[str, Any]) -> None:
        self.task = task.eval()
        self.denoiser = task.ema.eval()
        self.depth = self.denoiser.cfg.depth
        self.labels: np.ndarray | None = None
        self.ref: np.ndarray | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        """The task's sampling defaults, as the metadata stores them."""
        h = self.task.hparams
        return {"steps": int(h.sample_steps), "guidance": float(h.guidance), "sampler": h.sampler}

    def graph(self, opset: int):
        from vitlab.onnx.graph import export_module

        size = self.task.preprocess.input_size
        return export_module(GuidedStep(self.denoiser), size, OUTPUTS, opset, "Denoiser",
                             examples=step_examples(size, self.denoiser.null_class))

    def prepare(self, eval_data: Any, num_eval: int) -> str:
        """Sample the torch references: ``PER_CLASS`` images per class (at most ``num_eval``) from ``SEED``."""
        if eval_data is not None:
            raise VitlabError("a generation export is gated on sample parity with the checkpoint; it takes no "
                              "eval data")
        self.labels = np.repeat(np.arange(self.denoiser.null_class), PER_CLASS)[:num_eval]
        self.ref = self.task.sample(self.labels, seed=SEED, progress=None)
        d = self.defaults
        return (f"{len(self.labels)} samples ({PER_CLASS} per class, seed {SEED}, {d['steps']} {d['sampler']} "
                f"steps, guidance {d['guidance']:g})")

    def calibration(self, calib_data: Any, num_calib: int) -> np.ndarray:
        raise VitlabError("static int8 (calibration data) is not supported for generation models")

    def metadata(self) -> dict[str, Any]:
        return {"inputs": list(INPUTS), "input_dtype": "float32", "arch": "dit", "depth": self.depth,
                "objective": "rectified_flow", **self.defaults, "null_class": self.denoiser.null_class,
                "pixel_scale": 127.5}

    def fp32_nodes(self, model) -> list[str]:
        """None: ``to_fp16`` keeps fp32 only nodes at the end of a graph (a detector's post-processing); the time
        features at the start run fp16 too, which the parity gate measures."""
        return []

    def evaluate(self, session, precision: str) -> dict[str, Any]:
        """Sample with ``session`` as the torch references were; ``passed`` when the mean |Δ| of the pixels (uint8
        levels) is within ``MAX_MEAN_ABS_DIFF``."""
        assert self.labels is not None and self.ref is not None
        d = self.defaults
        out = sample(session_step(session), self.labels, self.task.preprocess.input_size, d["steps"], d["guidance"],
                     SEED, d["sampler"], progress=None)
        diff = np.abs(out.astype(np.int16) - self.ref.astype(np.int16))
        mean = float(diff.mean())
        return {"eval_samples": len(self.labels), "samples_per_class": PER_CLASS, "seed": SEED, **d,
                "mean_abs_diff_px": round(mean, 5), "max_abs_diff_px": int(diff.max()),
                "pixels_differing_pct": round(float((diff > 0).mean() * 100), 3),
                "passed": bool(mean <= MAX_MEAN_ABS_DIFF), "gate": "sample mean |Δ|", "gate_drop_pp": round(mean, 5),
                "gate_budget_pp": MAX_MEAN_ABS_DIFF, "gate_unit": "uint8 levels"}

    @staticmethod
    def summary(rep: dict[str, Any]) -> str:
        return (f"samples vs torch: mean |Δ| {rep['mean_abs_diff_px']:.3f}, max {rep['max_abs_diff_px']} "
                f"(uint8 levels, {rep['eval_samples']} images)")
