"""Where the Lightning training path spends its time (issue 26), for the diffusion demo and the classification demo,
and what the cheap speed levers pay. Every figure is a ratio measured side by side in one process: the variants run
in short interleaved segments whose order rotates every round, and medians are reported, because the 2-core
machines this project runs on are shared (print ``uptime`` beside every result).

Modes:
  train     steps/s of a bare PyTorch loop (in-memory tensors, as ``probe_diffusion.py``'s) against ``vitlab fit``'s
            own objects (``VitlabCLI(run=False)`` from the config: its Trainer, loggers, checkpoint callbacks,
            progress bar, task and datamodule), with the step split into forward / backward / optimiser / the rest
            (the task's ``on_train_batch_end``: EMA, data fetch, logging, bar). Variants (``--variants``):
              bare               the bare loop
              bare_docs          ``probe_diffusion.py``'s loop itself, for ``--bare-seconds`` (diffusion only)
              lightning          the config as ``vitlab fit`` runs it (progress bar on)
              lightning_nobar    the same, ``enable_progress_bar=False``
              lightning_sample   the per-sample data path forced (Albumentations + PreprocessCfg per image: the
                                 path before ``ArrayBatches``), no bar
              lightning_workers  per-sample data path in ``--workers`` DataLoader workers, no bar
              lightning_tuned    with ``vitlab.callbacks.ThreadTuner`` (one thread tried when the step slows down by
                                 30 %, all threads re-tried every ``--tuner-period`` steps), no bar
              lightning_head     the path before issue 26's changes: per-sample data, the EMA as a loop of
                                 ``lerp_``, AdamW's CPU default (a for-loop), no bar; compare with
                                 ``lightning_nobar`` on a checkout with the patches
  parts     the pieces one at a time: the loader per batch (per sample vs ``ArrayBatches``, workers), the EMA update
            (a loop of ``lerp_`` vs ``_foreach_lerp_``), one validation epoch (loss batches, sample grid, checkpoint),
            the time before the first step (``startup``, in a fresh process)
  levers    step levers on a bare loop (``--levers``, ``--model`` vitlab_fmnist or dit_fmnist_s), the variants
            alternating step by step: fp32 (AdamW's CPU default: a for-loop), ``foreach``, ``fused``, channels_last,
            bf16 autocast, ``compile`` (``torch.compile``; its compile time reported apart)
  startup   (used by ``parts``) timestamps from process start to the first training step of ``vitlab fit``

On a shared machine, ``--threads 1 --clock cpu`` (this process's CPU time) gives steadier figures than wall time,
and ``--cli-args=--data.init_args.batch_size=2`` leaves only the per-step overhead (the step's compute ~0).

    python benchmarks/probe_train_speed.py train --config configs/generate/fmnist_diffusion_demo.yaml \\
        --variants bare_docs lightning_head lightning_nobar
    python benchmarks/probe_train_speed.py train --config configs/classify/fmnist_demo.yaml --threads 1 \\
        --clock cpu --variants lightning_head lightning_nobar bare --cli-args=--data.init_args.batch_size=2
    python benchmarks/probe_train_speed.py parts --config configs/generate/fmnist_diffusion_demo.yaml
    python benchmarks/probe_train_speed.py levers --model vitlab_fmnist --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
T_PROCESS = time.perf_counter()  # as early as this script can take it; ``startup`` adds the interpreter's own start

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vitlab.callbacks import ThreadTuner  # noqa: E402

T_IMPORTED = time.perf_counter()


def clock() -> float:
    """The probe's clock: wall time, or with ``--clock cpu`` this process's CPU time (all its threads), which a
    shared machine's other jobs disturb far less: with ``--threads 1`` it is the work a step costs."""
    return CLOCK()


CLOCK = time.perf_counter
CLI_ARGS: list[str] = []  # --cli-args: appended to every config (e.g. a tiny batch, to isolate per-step overhead)


def log(record: dict) -> None:
    print(json.dumps(record), flush=True)


def load() -> str:
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


# --- the objects `vitlab fit` builds -----------------------------------------------------------------------------
def cli_objects(config: str, extra: list[str]):
    """Trainer, task and datamodule exactly as ``vitlab fit --config config *extra`` builds them."""
    from vitlab.cli import VitlabCLI

    cli = VitlabCLI(args=["--config", config, *extra, *CLI_ARGS], run=False)
    return cli.trainer, cli.model, cli.datamodule


def is_diffusion(task) -> bool:
    return type(task).__name__ == "DiffusionTask"


@contextlib.contextmanager
def per_sample_data():
    """The data path before ``ArrayBatches``: every image through Albumentations and PreprocessCfg, then collate."""
    from vitlab.data import datamodules

    saved = datamodules.ArrayBatches.for_samples
    datamodules.ArrayBatches.for_samples = classmethod(lambda cls, *a: None)
    try:
        yield
    finally:
        datamodules.ArrayBatches.for_samples = saved


class _ForLoopAdamW(torch.optim.AdamW):
    """AdamW as torch defaults it on CPU (a for-loop over the tensors), whatever the task asks for."""

    def __init__(self, params, *args, fused=None, foreach=None, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)


@contextlib.contextmanager
def head_path(task):
    """``lightning_head``: the path before issue 26's changes, whatever this checkout has: per-sample data, the EMA
    as a loop of ``lerp_`` (DiffusionTask's before the patch), AdamW's CPU default (no fused / foreach)."""
    if is_diffusion(task):
        def on_train_batch_end(outputs, batch, batch_idx):
            step = task.global_step
            decay = min(task.hparams.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in zip(task.ema.parameters(), task.model.parameters(), strict=True):
                    e.lerp_(p, 1 - decay)

        task.on_train_batch_end = on_train_batch_end
    saved = torch.optim.AdamW
    torch.optim.AdamW = _ForLoopAdamW
    try:
        with per_sample_data():
            yield
    finally:
        torch.optim.AdamW = saved


class Phases:
    """Per-step timestamps inside Lightning's loop: batch start (after the fetch), before / after backward, batch
    end (callbacks run before the task's own ``on_train_batch_end``), and the next batch start."""

    def __init__(self) -> None:
        self.marks: list[dict[str, float]] = []

    def hook(self, name: str):
        def mark(*_args, **_kwargs):
            if name == "start":
                self.marks.append({})
            if self.marks:
                self.marks[-1][name] = clock()
        return mark

    def callback(self):
        import lightning as L

        phases = self

        class _Cb(L.Callback):
            on_train_batch_start = staticmethod(phases.hook("start"))
            on_before_backward = staticmethod(phases.hook("backward"))
            on_after_backward = staticmethod(phases.hook("backward_done"))
            on_train_batch_end = staticmethod(phases.hook("end"))

        return _Cb()

    def summary(self, warmup: int, extra: dict[str, list[float]]) -> dict:
        m = self.marks[warmup:]
        period = [b["start"] - a["start"] for a, b in zip(m, m[1:])]
        out = {"steps_per_s": len(period) / sum(period), "ms_step": 1000 * statistics.median(period)}
        for name, (a, b) in {"fwd": ("start", "backward"), "bwd": ("backward", "backward_done"),
                             "opt": ("backward_done", "end")}.items():
            out[f"ms_{name}"] = 1000 * statistics.median([x[b] - x[a] for x in m[:-1]])
        out["ms_after"] = 1000 * statistics.median([b["start"] - a["end"] for a, b in zip(m, m[1:])])
        for key, values in extra.items():
            vals = values[warmup:warmup + len(period)]
            if vals:
                out[f"ms_{key}"] = 1000 * statistics.median(vals)
        return out


def timed(fn, sink: list[float]):
    def wrapper(*args, **kwargs):
        t = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            sink.append(clock() - t)
    return wrapper


def lightning_run(args, variant: str) -> dict:
    """``max_steps = warmup + steps`` of the config's own Trainer (no validation), timed per step."""
    extra = [f"--trainer.max_steps={args.warmup + args.steps + 1}", "--trainer.limit_val_batches=0",
             "--trainer.num_sanity_val_steps=0", f"--trainer.default_root_dir={args.root}/{variant}",
             f"--trainer.enable_progress_bar={'true' if variant == 'lightning' else 'false'}",
             "--trainer.enable_model_summary=false"]
    if variant == "lightning_workers":
        extra.append(f"--data.init_args.num_workers={args.workers}")
    trainer, task, dm = cli_objects(args.config, extra)
    ctx = per_sample_data() if variant in ("lightning_sample", "lightning_workers") else \
        head_path(task) if variant == "lightning_head" else contextlib.nullcontext()
    with ctx:  # the datamodule's setup (ArrayBatches or not) and configure_optimizers run inside fit
        # `vitlab fit` adds a ThreadTuner on CPU; only the lightning_tuned variant keeps one (with the probe's settings)
        trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ThreadTuner)]
        tuner = ThreadTuner(period=args.tuner_period, trial=args.tuner_trial) if variant == "lightning_tuned" \
            else None
        if tuner:
            trainer.callbacks.append(tuner)
        phases, sinks = Phases(), {"ema_hook": [], "data": [], "collate": []}
        trainer.callbacks.append(phases.callback())
        task.on_train_batch_end = timed(task.on_train_batch_end, sinks["ema_hook"])
        setup = dm.setup

        def setup_and_time(stage):  # the fetch: the dataset's batched hook (or per-sample list) + collate
            setup(stage)
            ds = dm._sets["train"]
            if "data" in sinks:
                ds.__getitems__ = timed(ds.__getitems__, sinks["data"])

        dm.setup = setup_and_time
        if variant == "lightning_workers":  # fetched in the workers: not seen here
            sinks.pop("data"), sinks.pop("collate")
        else:
            dm.collate_fn = timed(dm.collate_fn, sinks["collate"])
        trainer.fit(task, datamodule=dm)
    out = phases.summary(args.warmup, sinks)
    if tuner:
        out["tuner_trials"] = [list(t) for t in tuner.trials]
        out["tuner_final_threads"] = float(tuner.threads)
    return out


def bare_run(args, variant: str) -> dict:
    """The loop a user writes: in-memory tensors, random batches with replacement, the task's own model, loss and
    optimiser (``build_optimizer``: AdamW + warmup-cosine), EMA as DiffusionTask's, no logging."""
    from vitlab.data.datasets import fashion_mnist_arrays

    _, task, dm = cli_objects(args.config, [f"--trainer.default_root_dir={args.root}/bare"])
    images, labels = fashion_mnist_arrays("train")
    x_all, y_all = torch.from_numpy(images)[:, None], torch.from_numpy(labels)
    flips = dm.augment is not None
    opt, sched = task.build_optimizer(total_steps=10_000, steps_per_epoch=459)
    g = torch.Generator().manual_seed(0)
    diffusion = is_diffusion(task)
    if diffusion:
        ema_params, params = list(task.ema.parameters()), list(task.model.parameters())
    task.train()
    stamps = []
    for step in range(args.warmup + args.steps + 1):
        stamps.append(clock())
        idx = torch.randint(0, len(x_all), (dm.batch_size,), generator=g)
        x, y = x_all[idx], y_all[idx]
        if flips:
            flip = torch.rand(len(x), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if diffusion:
            loss = task._loss(task.model, {"image": x, "target": y}, drop_labels=True)
        else:
            loss = F.cross_entropy(task(x.float()), y, label_smoothing=task.hparams.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if diffusion:
            decay = min(task.hparams.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in zip(ema_params, params, strict=True):
                    e.lerp_(p, 1 - decay)
    period = np.diff(stamps[args.warmup:])
    return {"steps_per_s": len(period) / period.sum(), "ms_step": 1000 * float(np.median(period))}


def bare_docs_run(args) -> dict:
    """``probe_diffusion.py``'s own loop (the docs' "bare loop": constant LR after 200 warm-up steps, AdamW's CPU
    default, EMA loop) for ``--bare-seconds``; steps/s over its whole run (its first steps included)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import probe_diffusion

    from vitlab.data.datasets import fashion_mnist_arrays
    from vitlab.models.diffusion import Denoiser, denoiser_cfg

    images, labels = fashion_mnist_arrays("train")
    torch.manual_seed(0)
    _, steps = probe_diffusion.train(Denoiser(denoiser_cfg("dit_fmnist_s")), probe_diffusion.RectifiedFlow(), images,
                                     labels, args.bare_seconds / 60, 128, seed=0)
    return {"steps_per_s": steps / args.bare_seconds, "ms_step": 1000 * args.bare_seconds / steps}


def rotate(names: list[str], r: int) -> list[str]:
    return names[r % len(names):] + names[:r % len(names)]


def train_mode(args) -> None:
    runs = {v: (lambda v=v: bare_run(args, v) if v == "bare" else bare_docs_run(args) if v == "bare_docs"
                else lightning_run(args, v)) for v in args.variants}
    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    for r in range(args.rounds):
        for name in rotate(args.variants, r):
            load_before = load()
            res = runs[name]()
            results[name].append(res)
            log({"round": r, "variant": name, "load": load_before,
                 **{k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}})
    base = statistics.median(x["steps_per_s"] for x in results[args.variants[0]])
    summary = {}
    for name, rs in results.items():
        med = {k: round(statistics.median(x[k] for x in rs if k in x), 2) for k in rs[0]
               if isinstance(rs[0][k], float)}
        summary[name] = {**med, f"ratio_to_{args.variants[0]}": round(med["steps_per_s"] / base, 3)}
    log({"summary": summary, "config": args.config, "threads": torch.get_num_threads(), "clock": args.clock,
         "load_end": load()})


# --- parts ------------------------------------------------------------------------------------------------------
def loader_ms(dm, n: int, workers: int = 0) -> float:
    dm.num_workers = workers
    dl = dm.train_dataloader()
    it = iter(dl)
    next(it)
    t = clock()
    for _ in range(n):
        next(it)
    ms = 1000 * (clock() - t) / n
    del it
    return ms


def parts_mode(args) -> None:
    trainer, task, dm = cli_objects(args.config, [f"--trainer.default_root_dir={args.root}/parts"])
    dm.preprocess = task.preprocess
    # the loader per batch: per sample (Albumentations + PreprocessCfg + collate) vs ArrayBatches, and workers
    if "loader" in args.parts:
        parts_loader(args, dm)
    if "ema" in args.parts and is_diffusion(task):
        parts_ema(task, args.rounds)
    if "val" in args.parts:
        parts_val(args)
    if "startup" in args.parts:
        parts_startup(args)


def parts_loader(args, dm) -> None:
    dm.setup("fit")
    fast = dm._sets["train"].batches
    times: dict[str, list[float]] = {"loader_batched": [], "loader_per_sample": [], "loader_per_sample_1worker": [],
                                     "loader_per_sample_2workers": []}
    for r in range(args.rounds):
        for name in rotate(list(times), r):
            dm._sets["train"].batches = fast if name == "loader_batched" else None
            workers = {"loader_per_sample_1worker": 1, "loader_per_sample_2workers": 2}.get(name, 0)
            times[name].append(loader_ms(dm, 40 if workers == 0 else 80, workers))
    dm.num_workers = 0
    log({"part": "loader_ms_per_batch", "batch": dm.batch_size, "augment": bool(dm.augment), "load": load(),
         **{k: round(statistics.median(v), 3) for k, v in times.items()}})


def parts_ema(task, rounds: int) -> None:
    """DiffusionTask's EMA update: its loop of ``lerp_`` against one ``_foreach_lerp_`` (and that both agree)."""
    ema_params, params = list(task.ema.parameters()), list(task.model.parameters())
    ema_copy = [p.detach().clone() for p in ema_params]
    for p in params:
        p.data.add_(torch.randn_like(p) * 0.01)
    loop_t, foreach_t = [], []
    for _ in range(5 * rounds):
        with torch.no_grad():
            t = clock()
            for e, p in zip(ema_params, params):
                e.lerp_(p, 0.005)
            loop_t.append(clock() - t)
            t = clock()
            torch._foreach_lerp_(ema_copy, params, 0.005)
            foreach_t.append(clock() - t)
    same = all(torch.equal(a, b) for a, b in zip(ema_params, ema_copy))
    log({"part": "ema_update_ms", "tensors": len(params), "loop": round(1000 * statistics.median(loop_t), 3),
         "foreach": round(1000 * statistics.median(foreach_t), 3), "bit_identical": same, "load": load()})


def parts_val(args) -> None:
    """One validation epoch and the checkpoints, beside the training steps of the same run."""
    trainer, task, dm = cli_objects(args.config, [
        f"--trainer.default_root_dir={args.root}/val", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
        f"--trainer.limit_train_batches={args.steps}", "--trainer.enable_model_summary=false",
        "--trainer.profiler=simple"])
    trainer.fit(task, datamodule=dm)
    d = trainer.profiler.recorded_durations
    name = type(task).__name__

    def total(key):
        return sum(d.get(key, []))

    steps = d.get("run_training_batch", [])
    ms_step = 1000 * statistics.median(steps[5:] or steps)
    val_steps = d.get("[Strategy]SingleDeviceStrategy.validation_step", [])
    sanity = int(trainer.num_sanity_val_steps or 0)
    val_loss_s = sum(val_steps[sanity:])
    grid_s = d.get(f"[LightningModule]{name}.on_validation_epoch_end", [0, 0])[-1]
    ckpt_s = total("save_checkpoint")
    per_epoch = len(dm.train_dataloader())
    epoch_s = per_epoch * ms_step / 1000
    log({"part": "validation_epoch", "load": load(), "ms_train_step": round(ms_step, 1),
         "steps_per_epoch": per_epoch, "train_epoch_s_at_this_rate": round(epoch_s, 1),
         "val_loss_batches_s": round(val_loss_s, 2), "sample_grid_s": round(grid_s, 2),
         "checkpoints_s": round(ckpt_s, 3), "sanity_check_s": round(sum(val_steps[:sanity]), 2),
         "val_share_of_epoch_pct": round(100 * (val_loss_s + grid_s + ckpt_s) / epoch_s, 2),
         "train_dataloader_next_ms": round(1000 * statistics.median(d.get("[_TrainingEpochLoop].train_dataloader_next",
                                                                            [0])), 3)})


def parts_startup(args) -> None:
    """The time before the first step, in a fresh process (imports included)."""
    t = time.perf_counter()
    threads = ["--threads", str(args.threads)] if args.threads else []
    out = subprocess.run([sys.executable, __file__, "startup", "--config", args.config, "--root", args.root, *threads],
                         capture_output=True, text=True)
    wall = time.perf_counter() - t
    rec = next((json.loads(x) for x in out.stdout.splitlines() if x.startswith('{"part": "startup"')), None)
    log({**(rec or {"part": "startup", "error": out.stderr[-2000:]}), "subprocess_wall_s": round(wall, 2)})


def startup_mode(args) -> None:
    """Seconds since this process started (``/proc/self/stat``) to each stage of ``vitlab fit`` up to step 1."""
    import lightning as L

    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/self/stat") as f:
        start_jiffies = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    offset = uptime - start_jiffies / ticks - time.perf_counter()  # perf_counter + offset = seconds since start
    marks = {"python_and_script_start": T_PROCESS, "numpy_torch_imported": T_IMPORTED}
    cpu: dict[str, float] = {}

    def mark(name: str, first: bool = False) -> None:
        if not (first and name in marks):
            marks[name], cpu[name] = time.perf_counter(), time.process_time()

    import lightning  # noqa: F401
    import timm  # noqa: F401

    import vitlab.cli  # noqa: F401
    mark("lightning_timm_vitlab_imported")
    trainer, task, dm = cli_objects(args.config, ["--trainer.max_steps=1", f"--trainer.default_root_dir={args.root}/s",
                                                  "--trainer.enable_progress_bar=false"])
    mark("cli_parsed_and_instantiated")

    class _Marks(L.Callback):
        def setup(self, *a, **k):
            mark("fit_setup", first=True)

        def on_sanity_check_start(self, *a):
            mark("sanity_check_start")

        def on_sanity_check_end(self, *a):
            mark("sanity_check_end")

        def on_train_start(self, *a):
            mark("train_start")

        def on_train_batch_start(self, *a):
            mark("first_batch_start", first=True)

        def on_train_batch_end(self, *a):
            mark("first_batch_end", first=True)

    trainer.callbacks.append(_Marks())
    trainer.fit(task, datamodule=dm)
    mark("fit_returned")
    log({"part": "startup", "load": load(), "s_since_process_start": {k: round(v + offset, 2) for k, v in
                                                                       sorted(marks.items(), key=lambda kv: kv[1])},
         "cpu_s_since_process_start": {k: round(v, 2) for k, v in sorted(cpu.items(), key=lambda kv: kv[1])}})


# --- classification step levers -----------------------------------------------------------------------------------
def levers_mode(args) -> None:
    """Step levers on a bare loop, the variants alternating step by step (so that every one sees the same load),
    forward + backward and the optimiser step timed apart; medians of the per-step times."""
    from vitlab.data.datasets import fashion_mnist_arrays
    from vitlab.models.classify import create_model
    from vitlab.models.diffusion import Denoiser, denoiser_cfg, flow_pair, to_model_space

    images, labels = fashion_mnist_arrays("train")
    x_all, y_all = torch.from_numpy(images)[:, None], torch.from_numpy(labels)
    diffusion = args.model.startswith("dit")

    def make(lever: str):
        torch.manual_seed(0)
        model = Denoiser(denoiser_cfg(args.model)) if diffusion else create_model(args.model, num_classes=10)
        if lever == "channels_last":
            model = model.to(memory_format=torch.channels_last)
        kw = {"foreach": True} if lever == "foreach" else {"fused": True} if lever == "fused" else {}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, **kw)
        return torch.compile(model) if lever == "compile" else model, opt

    def loss_of(fwd, x, y, lever):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if lever == "bf16" else contextlib.nullcontext()
        if lever == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx:
            if diffusion:
                x0 = to_model_space(x)
                t = torch.sigmoid(torch.randn(len(x)))
                xt, target = flow_pair(x0, t, torch.randn_like(x0))
                return F.mse_loss(fwd(xt, t, y).float(), target)
            return F.cross_entropy(fwd(x.float()).float(), y, label_smoothing=0.1)

    built = {lever: make(lever) for lever in args.levers}
    g = torch.Generator().manual_seed(0)

    def batch():
        idx = torch.randint(0, len(x_all), (args.batch,), generator=g)
        return x_all[idx], y_all[idx]

    compile_s = {}
    for lever, (fwd, opt) in built.items():  # warm-up (compilation for ``compile``)
        t = time.perf_counter()
        for _ in range(3):
            loss = loss_of(fwd, *batch(), lever)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if lever == "compile":
            compile_s[lever] = round(time.perf_counter() - t, 1)
    times: dict[str, dict[str, list[float]]] = {lever: {"fwd_bwd": [], "opt": []} for lever in args.levers}
    for r in range(args.steps * args.rounds):
        x, y = batch()
        for lever in rotate(args.levers, r):
            fwd, opt = built[lever]
            t0 = clock()
            loss = loss_of(fwd, x, y, lever)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t1 = clock()
            opt.step()
            t2 = clock()
            times[lever]["fwd_bwd"].append(t1 - t0)
            times[lever]["opt"].append(t2 - t1)
    med = {k: {part: 1000 * statistics.median(v) for part, v in d.items()} for k, d in times.items()}
    base = sum(med[args.levers[0]].values())
    log({"summary": {k: {"ms_fwd_bwd": round(d["fwd_bwd"], 2), "ms_opt": round(d["opt"], 3),
                         "steps_per_s": round(1000 / sum(d.values()), 2),
                         f"ratio_to_{args.levers[0]}": round(base / sum(d.values()), 3)} for k, d in med.items()},
         "compile_s (3 warm-up steps incl. compilation)": compile_s, "model": args.model, "batch": args.batch,
         "steps_each": args.steps * args.rounds, "threads": torch.get_num_threads(), "clock": args.clock,
         "load_end": load()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["train", "parts", "levers", "startup"])
    ap.add_argument("--config", default="configs/generate/fmnist_diffusion_demo.yaml")
    ap.add_argument("--variants", nargs="+", default=["bare", "lightning_head", "lightning_nobar", "lightning"])
    ap.add_argument("--levers", nargs="+", default=["fp32", "foreach", "fused", "channels_last", "bf16"])
    ap.add_argument("--model", default="vitlab_fmnist", help="levers: the classifier")
    ap.add_argument("--batch", type=int, default=128, help="levers: the batch")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per segment")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (train)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="lightning_workers: DataLoader workers")
    ap.add_argument("--bare-seconds", type=float, default=15.0, help="bare_docs: seconds of training")
    ap.add_argument("--tuner-period", type=int, default=200, help="lightning_tuned: steps at 1 thread between "
                    "retries of all threads")
    ap.add_argument("--tuner-trial", type=int, default=6, help="lightning_tuned: steps per trial")
    ap.add_argument("--parts", nargs="+", default=["loader", "ema", "val", "startup"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: process CPU time (see clock())")
    ap.add_argument("--cli-args", nargs="*", default=[], help="more `vitlab fit` flags for every run, e.g. "
                    "--data.init_args.batch_size=2 (the step's compute ~0: what is left is per-step overhead)")
    ap.add_argument("--root", default=None, help="run folders (default: a temporary folder)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    CLI_ARGS.extend(args.cli_args)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        args.root = args.root or tmp
        {"train": train_mode, "parts": parts_mode, "levers": levers_mode, "startup": startup_mode}[args.mode](args)


if __name__ == "__main__":
    main()
