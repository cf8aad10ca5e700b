"""Predictor: one API over checkpoints and ONNX, every input answered once, weird-but-valid images answered like
a clean copy, bad ones as error records; CLI writers, resume, overlays; exactly-once multi-process prediction."""

import io
import json
import os
import pty
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from vitlab_edge.imaging import draft_request

import vitlab
from tests.conftest import REPO, VITLAB
from vitlab.errors import VitlabError
from vitlab.inference.io import read_image


def _rgba_on_white(rgb, alpha):
    a = alpha[:, :, None].astype(np.float64) / 255
    return (rgb * a + 255 * (1 - a) + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, fmnist_test):
    """Generated here, never committed: (valid files with the clean array they must read as, bad files)."""
    d = tmp_path_factory.mktemp("corpus")
    grey = fmnist_test[0][3]  # a real 28x28 image
    rgb = np.repeat(grey[:, :, None], 3, 2)
    valid, bad = {}, []

    def save(name, img, clean, **kw):
        img.save(d / name, **kw)
        valid[str(d / name)] = clean

    save("L.png", Image.fromarray(grey), grey)
    save("1.png", Image.fromarray(grey).convert("1", dither=Image.Dither.NONE),
         np.where(grey >= 128, 255, 0).astype(np.uint8))
    save("LA.png", Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA"), grey)
    alpha = np.full_like(grey, 255)
    alpha[:, :10] = 0
    save("RGBA.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), _rgba_on_white(rgb, alpha))
    pal = Image.fromarray(grey).convert("P")  # palette image; index of the darkest colour made transparent
    idx = np.asarray(pal)
    save("P_transparent.png", pal, np.where(idx == idx[0, 0], 255, grey).astype(np.uint8),
         transparency=int(idx[0, 0]))
    save("I16.png", Image.fromarray(grey.astype(np.uint16) * 257), grey)
    save("I16.tif", Image.fromarray(grey.astype(np.uint16) * 257), grey)
    save("I32.tif", Image.fromarray(grey.astype(np.int32) * 257, "I"), grey)
    save("F.tif", Image.fromarray(grey.astype(np.float32) / 255, "F"), grey)
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg", quality=100)
    valid[str(d / "cmyk.jpg")] = np.asarray(Image.open(d / "cmyk.jpg").convert("RGB"))
    frames = [Image.fromarray(grey), Image.fromarray(255 - grey)]
    save("anim.gif", frames[0], grey, save_all=True, append_images=frames[1:], duration=100)
    ops = {2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180], 4: [Image.Transpose.FLIP_TOP_BOTTOM],
           5: [Image.Transpose.TRANSPOSE], 6: [Image.Transpose.ROTATE_90], 7: [Image.Transpose.TRANSVERSE],
           8: [Image.Transpose.ROTATE_270]}
    upright = Image.fromarray(grey[:, 2:])  # 28x26: not square, so a missed rotation changes the input
    for k in range(1, 9):  # stored pixels = the inverse of the transform orientation k asks the viewer to apply
        stored = upright
        for op in ops.get(k, []):
            stored = stored.transpose(op)
        exif = Image.Exif()
        exif[0x0112] = k
        save(f"exif{k}.png", stored, np.asarray(upright), exif=exif)
    save("one_pixel.png", Image.fromarray(grey[14:15, 14:15]), grey[14:15, 14:15])
    big = Image.fromarray(rgb).resize((3000, 2000), Image.Resampling.BICUBIC)
    save("large.jpg", big, None, quality=90)
    valid[str(d / "large.jpg")] = np.asarray(Image.open(d / "large.jpg"))
    good = (d / "L.png").read_bytes()
    jpg = (d / "large.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(jpg[: len(jpg) // 3])
    (d / "empty.png").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n")
    Image.new("1", (10000, 9000)).save(d / "bomb.png")  # 90 MP > the default 89.5 MP guard, ~10 kB on disk
    (d / "folder.jpg").mkdir()
    os.symlink(d / "gone.png", d / "dangling.png")
    (d / "locked.png").write_bytes(good)
    os.chmod(d / "locked.png", 0)
    bad = ["truncated.jpg", "empty.png", "text.jpg", "bomb.png", "folder.jpg", "dangling.png"]
    if os.geteuid() != 0:  # root reads anything: the permission case only means something for other users
        bad.append("locked.png")
    return valid, [str(d / b) for b in bad]


@pytest.mark.parametrize("backend", ["ckpt", "onnx"])
def test_every_input_one_record_valid_ones_like_a_clean_copy(backend, corpus, exported, trained_ckpt):
    valid, bad = corpus
    predictor = vitlab.Predictor.load(trained_ckpt if backend == "ckpt" else exported["fp32"])
    inputs = [*valid, *bad]
    results = predictor.predict(inputs, batch_size=5, num_workers=1, topk=10)
    assert [r.index for r in results] == list(range(len(inputs))) and [r.source for r in results] == inputs
    for r in results[len(valid):]:
        assert r.error and r.label is None, r
    assert all(r.error is None for r in results[:len(valid)]), [r.error for r in results if r.error]
    assert "decompression bomb" in results[inputs.index(bad[3])].error
    assert "directory" in results[inputs.index(bad[4])].error
    # a JPEG far larger than the model's input decodes at reduced DCT scale (draft_request): so does its clean copy
    pre = predictor.preprocess
    draft = draft_request(pre.image_size, pre.resize, pre.crop_pct)
    copies = [read_image(p, draft=draft) if p.endswith("large.jpg") else c for p, c in valid.items()]
    assert copies[-1].shape[0] < 2000  # large.jpg is the last valid input, and was drafted
    clean = predictor.predict(copies, batch_size=7, num_workers=0, topk=10)
    for r, c in zip(results, clean):
        assert r.class_id == c.class_id, r.source
        np.testing.assert_allclose([t["prob"] for t in r.topk], [t["prob"] for t in c.topk], atol=1e-5)


def test_checkpoint_and_onnx_agree_on_real_images(exported, trained_ckpt, fmnist_test, tmp_path):
    images, labels = fmnist_test
    for i in range(200):
        Image.fromarray(images[i]).save(tmp_path / f"{i:03d}.png")
    a = vitlab.Predictor.load(trained_ckpt).predict(tmp_path, batch_size=64, num_workers=1)
    b = vitlab.Predictor.load(exported["fp32"]).predict(str(tmp_path / "*.png"), batch_size=17, num_workers=0)
    assert [r.class_id for r in a] == [r.class_id for r in b]
    assert np.mean([r.class_id == y for r, y in zip(a, labels[:200])]) > 0.7


def test_sources_of_every_kind_in_input_order(trained_ckpt, fmnist_test, tmp_path):
    images = fmnist_test[0]
    for i in range(3):
        Image.fromarray(images[i]).save(tmp_path / f"{i}.png")
    (tmp_path / "list.txt").write_text("# inputs\n0.png\n\n2.png\n")
    predictor = vitlab.Predictor.load(trained_ckpt)
    chw_float = torch.from_numpy(images[4][None].astype(np.float32) / 255)
    inputs = [str(tmp_path / "1.png"), Image.fromarray(images[3]), images[4], torch.from_numpy(images[4][None]),
              chw_float, str(tmp_path / "list.txt")]
    res = list(predictor.stream(inputs, batch_size=2, num_workers=0))
    assert [r.source for r in res][:2] == [str(tmp_path / "1.png"), "<Image 1>"] and len(res) == len(inputs)
    assert res[-1].source == str(tmp_path / "list.txt") and res[-1].error  # a list's items are inputs, 1:1
    listed = predictor.predict(str(tmp_path / "list.txt"), num_workers=0)  # a path named alone is expanded
    assert [r.source for r in listed] == [str(tmp_path / "0.png"), str(tmp_path / "2.png")]
    assert res[2].class_id == res[3].class_id == res[4].class_id and res[2].error is None
    np.testing.assert_allclose(res[2].prob, res[4].prob, atol=1e-6)


def test_explain_writes_rollout_overlays(trained_ckpt, exported, fmnist_test, tmp_path):
    predictor = vitlab.Predictor.load(trained_ckpt)
    res = predictor.explain([fmnist_test[0][0], fmnist_test[0][1]], tmp_path / "maps", num_workers=0)
    assert all(Image.open(r.overlay).size == (224, 224) for r in res)
    from vitlab.inference.explain import attention_rollout

    maps = attention_rollout(predictor.backend.model, fmnist_test[0][:2, None].copy())
    assert maps.shape == (2, 4, 4) and maps.min() == 0.0 and maps.max() == 1.0
    with pytest.raises(VitlabError, match="explain needs the checkpoint"):
        vitlab.Predictor.load(exported["fp32"]).explain([fmnist_test[0][0]], tmp_path / "x")


def _run(args, check=True):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([*VITLAB, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if check and res.returncode != 0:
        raise AssertionError(res.stderr[-3000:])
    return res


def test_cli_predict_jsonl_csv_resume(trained_ckpt, exported, corpus, tmp_path, capsys):
    from vitlab.cli import main

    valid, bad = corpus
    files = [*list(valid)[:6], bad[0], bad[2]]
    out = tmp_path / "preds.jsonl"
    main(["predict", str(exported["int8"]), *files[:4], "--out", str(out), "--workers", "0"])
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(first) == 4
    main(["predict", str(exported["int8"]), *files, "--out", str(out), "--resume", "--workers", "0"])
    out_err = capsys.readouterr()
    assert "4 from the earlier output" in out_err.out and out_err.err == ""  # off a terminal: no bar, no noise
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in recs] == files and [r["index"] for r in recs] == list(range(8))
    assert recs[:4] == [{**r, "index": i} for i, r in enumerate(first)] and recs[6]["error"]
    csv_out = tmp_path / "preds.csv"
    main(["predict", str(trained_ckpt), *files, "--out", str(csv_out), "--overlays", str(tmp_path / "ov"),
          "--explain", "--workers", "0", "--threads", "1"])
    lines = csv_out.read_text().splitlines()
    assert lines[0].startswith("index,source,label") and len(lines) == 9
    assert len(list((tmp_path / "ov").glob("*.png"))) == 6
    with pytest.raises(SystemExit):
        main(["predict", str(trained_ckpt), *files, "--out", str(tmp_path / "p.txt")])
    assert "vitlab: error: output" in capsys.readouterr().err  # one line, naming the file and the fix


@pytest.mark.slow
def test_two_process_prediction_answers_every_input_exactly_once(trained_ckpt, corpus, tmp_path):
    valid, bad = corpus
    files = [*valid, *bad]
    if len(files) % 2 == 0:  # an odd count: rank 0 gets one input more (Lightning 2.6's sampler pads nothing)
        files = files[1:]
    out = tmp_path / "ddp.jsonl"
    res = _run(["predict", str(trained_ckpt), *files, "--out", str(out), "--devices", "2", "--accelerator", "cpu",
                "--batch-size", "4", "--workers", "0"])
    assert res.stdout.splitlines() == [res.stdout.strip()] and res.stdout.startswith(f"vitlab: {len(files)} records")
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(len(files))) and [r["source"] for r in recs] == files
    assert sum(r["error"] is not None for r in recs) == len(bad)
    single = vitlab.Predictor.load(trained_ckpt).predict(files, num_workers=0)
    assert [r["class_id"] for r in recs] == [r.class_id for r in single]
    assert not list(tmp_path.glob("*.part"))


def test_shard_merge_wants_every_index_exactly_once(tmp_path):
    from vitlab.inference.writers import ShardedPredictionWriter, read_records

    writer = ShardedPredictionWriter(tmp_path / "p.jsonl", 4)

    def shards(*indices):
        for rank, idx in enumerate(indices):
            writer._shard(rank).write_text("".join(json.dumps({"index": i, "source": f"{i}.png"}) + "\n" for i in idx))

    shards([0, 2], [1, 3])
    assert writer._merge(2) is None and [r["index"] for r in read_records(tmp_path / "p.jsonl")] == [0, 1, 2, 3]
    shards([0, 2], [1, 2])
    assert writer._merge(2) == ("distributed prediction: 1 of 4 inputs got no answer (first: [3]); 1 got more "
                                "than one (first: [2])")
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]  # shards removed either way


# Run as a script by every rank (Lightning starts rank 1 with the same command line): loses input 1's record on
# the rank that predicts it, as a faulty step or writer would, then runs `vitlab predict`.
DROP_ONE = """
import sys
import vitlab.inference.distributed as distributed
from vitlab.cli import main

class DropOne(distributed.PredictModule):
    def predict_step(self, batch, batch_idx):
        return [r for r in super().predict_step(batch, batch_idx) if r["index"] != 1]

distributed.PredictModule = DropOne
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_two_process_prediction_with_a_lost_input_fails_on_every_rank_at_once(trained_ckpt, corpus, tmp_path):
    (tmp_path / "drop_one.py").write_text(DROP_ONE)
    files, out = list(corpus[0])[:5], tmp_path / "ddp.jsonl"
    cmd = [sys.executable, str(tmp_path / "drop_one.py"), "predict", str(trained_ckpt), *files, "--out", str(out),
           "--devices", "2", "--accelerator", "cpu", "--batch-size", "2", "--workers", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "export")])}
    child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:  # rank 1 shares the pipes: this returns once both ranks have exited
        _, err = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # rank 0 and rank 1 (same process group)
        pytest.fail(f"a rank was still waiting after 120 s: {child.communicate()[1][-3000:]}")
    message = "vitlab: error: distributed prediction: 1 of 5 inputs got no answer (first: [1])"
    # both ranks say it (their writes to the shared pipe may land on one line), and nothing else errs
    assert child.returncode != 0 and err.count(message) == 2 and err.count("error") == 2, err[-3000:]
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_distributed_prediction_needs_an_input_per_process(trained_ckpt, fmnist_test, tmp_path, capsys):
    from vitlab.inference.distributed import predict_distributed
    from vitlab.tasks import load_task

    with pytest.raises(VitlabError, match="1 inputs for 2 processes"):
        predict_distributed(load_task(trained_ckpt).model, [fmnist_test[0][0]], tmp_path / "p.jsonl", devices=2,
                            accelerator="cpu")
    from vitlab.cli import main

    Image.fromarray(fmnist_test[0][0]).save(tmp_path / "a.png")
    with pytest.raises(SystemExit):
        main(["predict", str(trained_ckpt), str(tmp_path / "a.png"), "--out", str(tmp_path / "p.jsonl"),
              "--devices", "2", "--threads", "1"])
    assert "vitlab: error: --threads is for one process" in capsys.readouterr().err


def test_multi_device_refuses_overlays_and_checks_coco_inputs_before_any_work(trained_ckpt, fmnist_test, tmp_path,
                                                                             capsys, monkeypatch):
    """--overlays / --explain are drawn by the single-process Predictor: with --devices they are refused in one line,
    and COCO inputs the ground truth does not list are found before the processes start."""
    import vitlab.inference.distributed as distributed
    from tests.test_resume import _coco_ground_truth, _detector_ckpt
    from vitlab.cli import main

    started = []
    monkeypatch.setattr(distributed, "predict_distributed", lambda *a, **k: started.append(a) or True)
    files = []
    for i in range(4):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(fmnist_test[0][i]).save(files[-1])
    ddp = ["--devices", "2", "--accelerator", "cpu", "--workers", "0"]
    for extra in (["--overlays", str(tmp_path / "ov")], ["--overlays", str(tmp_path / "ov"), "--explain"]):
        with pytest.raises(SystemExit) as e:
            main(["predict", str(trained_ckpt), *files, "--out", str(tmp_path / "p.jsonl"), *ddp, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and "--overlays and --explain run in one process" in err[0]
    detector, gt = tmp_path / "det.ckpt", tmp_path / "gt.json"
    _coco_ground_truth(gt, files[:3], _detector_ckpt(detector))  # the 4th input is not an image of the GT
    with pytest.raises(SystemExit) as e:
        main(["predict", str(detector), *files, "--out", str(tmp_path / "r.json"), "--format", "coco",
              "--annotations", str(gt), *ddp])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "1 inputs are not images of" in err[0] and "3.png" in err[0]
    assert not started and sorted(os.listdir(tmp_path)) == sorted([*map(os.path.basename, files), "det.ckpt",
                                                                   "gt.json"])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("progress, terminal", [(None, True), (None, False), (True, True), (True, False),
                                                (False, True)])
def test_progress_bar_on_a_terminal_summary_line_if_asked_else_silence(progress, terminal, monkeypatch):
    from vitlab_edge.progress import Progress

    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    with Progress(12, "predict", progress=progress) as bar:
        for _ in range(3):
            bar.update(4)
    text = stderr.getvalue()
    if progress is not False and terminal:  # a live bar: count, rate and ETA
        assert re.search(r"predict: 100%\|.*\| 12/12 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+img/s\]", text), text
    elif progress is True:
        assert re.fullmatch(r"predict: 12 img in [\d.]+ s \([\d.]+ img/s\)\n", text), text
    else:
        assert text == ""


def test_predictor_progress_from_python(exported, fmnist_test, capsys):
    predictor = vitlab.Predictor.load(exported["fp32"])
    images = list(fmnist_test[0][:10])
    predictor.predict(images, batch_size=4, num_workers=0)
    assert capsys.readouterr().err == ""  # progress=False by default
    predictor.predict(images, batch_size=4, num_workers=0, progress=True)  # captured stderr is no terminal
    assert re.fullmatch(r"predict: 10 img in [\d.]+ s \([\d.]+ img/s\)\n", capsys.readouterr().err)


def test_export_evaluation_counts_images(capsys):
    from vitlab.onnx.report import torch_outputs

    logits = torch_outputs(torch.nn.Flatten(), np.zeros((10, 1, 2, 2), np.uint8), batch_size=4, progress=True)
    assert logits.shape == (10, 4) and re.match(r"eval torch: 10 img in", capsys.readouterr().err)


def test_cli_predict_shows_a_bar_on_a_terminal(exported, corpus, tmp_path):
    """stderr on a pseudo-terminal (one that reports no size, as in many containers): the bar is drawn."""
    files = list(corpus[0])
    cmd = [*VITLAB, "predict", str(exported["fp32"]), *files, "--out", str(tmp_path / "p.jsonl"), "--workers", "0",
           "--batch-size", "4"]
    master, slave = pty.openpty()
    child = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    terminal = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: every process holding the terminal has exited
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    out = child.communicate(timeout=300)[0].decode()
    n = len(files)
    assert child.returncode == 0 and out.startswith(f"vitlab: {n} records") and len(out.splitlines()) == 1
    assert re.search(rf"predict: 100%\|.*\| {n}/{n} \[\d\d:\d\d<\d\d:\d\d, +[\d.]+img/s\]", terminal.decode()), terminal


def test_model_threads_are_set_for_the_run_and_ort_threads_do_not_spin(trained_ckpt, exported, fmnist_test):
    images = list(fmnist_test[0][:6])
    before = torch.get_num_threads()
    want = 1 if before > 1 else 2
    reference = [r.class_id for r in vitlab.Predictor.load(trained_ckpt).predict(images, num_workers=0)]
    predictor = vitlab.Predictor.load(trained_ckpt, threads=want)
    seen, forward = [], predictor.backend.model.forward
    predictor.backend.model.forward = lambda x: (seen.append(torch.get_num_threads()), forward(x))[1]
    assert [r.class_id for r in predictor.predict(images, batch_size=4, num_workers=0)] == reference
    assert seen == [want, want] and torch.get_num_threads() == before  # restored after every batch
    for threads in (None, want):
        onnx = vitlab.Predictor.load(exported["fp32"], threads=threads)
        options = onnx.backend.edge.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.intra_op_num_threads == (threads or 0)  # 0: ONNX Runtime's default, one per core
        assert [r.class_id for r in onnx.predict(images, num_workers=0)] == reference
    for bad in (0, -2, 1.5, True):
        with pytest.raises(VitlabError, match="threads must be a whole number >= 1"):
            vitlab.Predictor.load(exported["fp32"], threads=bad)


class _Counted:
    """A backend that counts its batches; the backend ``with_threads`` gives is counted too (kept as ``fewer``)."""

    def __init__(self, backend):
        self.inner, self.calls, self.fewer = backend, 0, None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def with_threads(self, threads):
        self.fewer = _Counted(self.inner.with_threads(threads))
        return self.fewer

    def __call__(self, batch):
        self.calls += 1
        return self.inner(batch)


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize(("decode_share", "seconds", "choice", "fewer_batches"), [
    (0.05, (1.0, 1.0), 0, 0),   # decoding is a small share: the model keeps every core, no trial block
    (0.6, (1.0, 0.7), 1, 10),   # decode-heavy and fewer threads faster: confirmed by a second pair, kept
    (0.6, (1.0, 1.1), 0, 10),   # a little slower: the second pair decides, back to the default
    (0.6, (1.0, 1.5), 0, 5),    # a clear loss (0.67x): decided after one block
])
def test_thread_trial_keeps_the_faster_option_and_skips_when_decoding_is_cheap(monkeypatch, decode_share, seconds,
                                                                               choice, fewer_batches):
    from vitlab.inference import threads

    clock = _Clock()
    monkeypatch.setattr(threads.time, "perf_counter", clock)
    made = []  # the second backend is built only when the trial first needs it
    trial = threads.ThreadTrial("default", lambda: made.append(1) or "fewer", workers=1, warmup=2, block_batches=4,
                                block_seconds=0.0)
    ran, decided_at = [], None
    for _ in range(60):
        option = trial.backend()
        ran.append(option)
        batch_s = 0.01 * seconds[option == "fewer"]  # seconds per batch of 32 images under each option
        clock.now += batch_s
        trial.record(32, decode_share * batch_s)
        decided_at = decided_at or (len(ran) if trial.decided else None)
    assert trial.decided and trial.choice == choice and trial.backend() == ("default", "fewer")[choice]
    assert ran[:decided_at].count("fewer") == fewer_batches and ran[:7] == ["default"] * 7  # warm-up, default block
    assert ran[decided_at:] == [("default", "fewer")[choice]] * (60 - decided_at)
    assert len(made) == int(fewer_batches > 0)
    assert trial.decode_share == pytest.approx(decode_share) and (trial.rates is not None) == (fewer_batches > 0)


def test_thread_trial_runs_both_thread_counts_with_the_same_answers(trained_ckpt, exported, fmnist_test, monkeypatch):
    """On CPU at default threads with decode workers, a long stream tries cores - workers threads on its own batches
    (the trial's thresholds lowered here so that it runs on any machine) and every answer stays the same."""
    import functools

    from vitlab.inference import predictor as predictor_module
    from vitlab.inference import threads

    if threads.cpu_cores() < 2:
        pytest.skip("one core: no spare core for the decode worker")
    monkeypatch.setattr(threads, "MIN_DECODE_SHARE", 0.0)
    monkeypatch.setattr(predictor_module, "ThreadTrial", functools.partial(threads.ThreadTrial, block_seconds=0.0))
    images = list(fmnist_test[0][:48])
    for path in (trained_ckpt, exported["fp32"]):
        reference = vitlab.Predictor.load(path, threads=1).predict(images, batch_size=1, num_workers=1)
        predictor = vitlab.Predictor.load(path)
        fewer = threads.cpu_cores() - 1
        predictor.backend = _Counted(predictor.backend)
        stream = predictor.stream(images, batch_size=1, num_workers=1)
        out = [next(stream) for _ in images]  # the stream is not finished: its trial is still there to look at
        trial = stream.gi_frame.f_locals["trial"]
        assert [r.class_id for r in out] == [r.class_id for r in reference]
        assert np.allclose([r.prob for r in out], [r.prob for r in reference], atol=1e-5)
        counted = predictor.backend.fewer
        assert predictor.backend.calls >= 12 and counted.calls >= 5 and counted.threads == fewer  # both ran blocks
        report = predictor.thread_trial
        kept, rates = report["threads"], report["img_s"]
        assert kept in (None, fewer) and trial.options[1] is (counted if kept else None)  # the loser is let go
        assert next(stream, None) is None
        assert len(rates) == 2 and kept == (fewer if rates[1] > rates[0] else None) and report["decode_share"] > 0
        fixed = vitlab.Predictor.load(path, threads=2)
        fixed.backend = _Counted(fixed.backend)
        fixed.predict(images, batch_size=1, num_workers=1)
        assert fixed.backend.fewer is None and fixed.thread_trial is None  # a count the user set is kept: no trial
