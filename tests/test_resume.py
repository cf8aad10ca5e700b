"""Interrupted prediction runs: `vitlab predict` killed with SIGKILL mid-run keeps its finished records in the
journal beside --out, writes no partial output, and `--resume` predicts only the rest (counted, not assumed);
Ctrl-C in `vitlab` and `vitlab-edge`; COCO results resumed from the journal; the journal's torn-line rules."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from vitlab_edge.journal import ResumableRun, journal_path, read_journal

import vitlab
from tests.conftest import REPO, needs_fmnist

pytestmark = needs_fmnist

# `vitlab predict` with the Predictor's stream counted (the number of inputs each run is asked to predict, one line
# per run, in $COUNT_FILE) and slowed by $DELAY_S per batch of $BATCH records (so that a kill lands mid-run)
COUNTED = """
import os, sys, time
from vitlab.inference.predictor import Predictor
from vitlab.cli import main

stream, delay, batch = Predictor.stream, float(os.environ["DELAY_S"]), int(os.environ["BATCH"])

def counted(self, source, *args, **kwargs):
    with open(os.environ["COUNT_FILE"], "a") as f:
        f.write(f"{len(source)}\\n")
    for pred in stream(self, source, *args, **kwargs):
        if delay and pred.index % batch == 0:
            time.sleep(delay)
        yield pred

Predictor.stream = counted
main(sys.argv[1:])
"""


@pytest.fixture()
def pngs(tmp_path, fmnist_test):
    """300 real Fashion-MNIST test images as PNG files, in input order, and their labels."""
    images, labels = fmnist_test
    d = tmp_path / "pngs"
    d.mkdir()
    files = []
    for i in range(300):
        files.append(str(d / f"{i:03d}.png"))
        Image.fromarray(images[i]).save(files[-1])
    return files, labels[:300]


def _counted_predict(script, args, count_file, delay, batch):
    env = {**os.environ, "PYTHONPATH": str(REPO), "COUNT_FILE": str(count_file), "DELAY_S": str(delay),
           "BATCH": str(batch)}
    return subprocess.Popen([sys.executable, str(script), "predict", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _complete_lines(path):
    return [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1]] if path.exists() else []


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_killed_run_keeps_finished_batches_and_resume_predicts_only_the_rest(trained_ckpt, pngs, tmp_path, capsys,
                                                                            suffix):
    files, labels = pngs
    n, batch = len(files), 10
    script, counts = tmp_path / "counted.py", tmp_path / "counts.txt"
    script.write_text(COUNTED)
    out_dir = tmp_path / "out"
    out = out_dir / f"preds{suffix}"
    journal = journal_path(out)
    args = [str(trained_ckpt), os.path.dirname(files[0]), "--out", str(out), "--batch-size", str(batch),
            "--workers", "0", "--threads", "1"]
    proc = _counted_predict(script, args, counts, delay=0.15, batch=batch)
    deadline = time.time() + 240
    while len(_complete_lines(journal)) < 5 * batch and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    kept = _complete_lines(journal)
    k = len(kept)
    assert 5 * batch <= k < n and [r["source"] for r in kept] == files[:k]  # finished records, in input order
    assert sorted(os.listdir(out_dir)) == [journal.name]  # no output (partial or not), no temporary file

    from vitlab.cli import main

    with pytest.raises(SystemExit) as e:  # a new run does not mix the journal in, nor silently drop it
        main(["predict", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "pass --resume" in err[0] and f"{k} records" in err[0]
    assert _complete_lines(journal) == kept and not out.exists()

    with open(journal, "a") as f:  # a kill in the middle of a write: a torn last line (of the next input)
        f.write(json.dumps({"index": k, "source": files[k], "label": "Bag"})[:40])
    proc = _counted_predict(script, [*args, "--resume"], counts, delay=0, batch=batch)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"{n} records (0 errors, {k} from the earlier output, 1 unreadable journal lines" in stdout
    assert [int(c) for c in counts.read_text().split()] == [n, n - k]  # the resumed run predicted only the rest
    assert sorted(os.listdir(out_dir)) == [out.name]  # the journal is gone once the output is written

    from vitlab.inference.writers import read_records

    recs = read_records(out)
    assert [r["source"] for r in recs] == files and [int(r["index"]) for r in recs] == list(range(n))
    reference = vitlab.Predictor.load(trained_ckpt).predict(files, num_workers=0)
    assert [int(r["class_id"]) for r in recs] == [p.class_id for p in reference]
    assert sum(int(r["class_id"]) == y for r, y in zip(recs, labels)) > 0.6 * n  # a model that means something
    if suffix == ".jsonl":  # the killed run's records as they were: timings differ when predicted again
        assert [{**r, "index": 0} for r in recs[:k]] == [{**r, "index": 0} for r in kept]


def _interrupt_after(monkeypatch, cls, name, count, calls):
    """``cls.name`` (a record stream) raising KeyboardInterrupt after ``count`` records (None: never), as Ctrl-C
    would; ``calls`` gets the number of inputs each stream is asked for."""
    original = getattr(cls, name)

    def stream(self, source, *args, **kwargs):
        calls.append(len(source))
        for i, rec in enumerate(original(self, source, *args, **kwargs)):
            if count is not None and i == count:
                raise KeyboardInterrupt
            yield rec

    monkeypatch.setattr(cls, name, stream)


def test_edge_cli_ctrl_c_then_resume(exported, pngs, tmp_path, monkeypatch, capsys):
    from vitlab_edge import EdgeModel
    from vitlab_edge.cli import main as edge_main

    files = pngs[0][:60]
    out = tmp_path / "edge.csv"
    args = ["predict", str(exported["fp32"]), *files, "--out", str(out), "--batch-size", "8"]
    assert edge_main(args) == 0
    reference = out.read_text()
    out.unlink()
    capsys.readouterr()
    calls = []
    with monkeypatch.context() as m:
        _interrupt_after(m, EdgeModel, "stream", 24, calls)
        assert edge_main(args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vitlab-edge: interrupted: 24 of 60 inputs are answered") and \
        "--resume" in err[0]
    assert not out.exists() and len(read_journal(journal_path(out))[0]) == 24
    assert edge_main(args) == 2 and "pass --resume" in capsys.readouterr().err
    _interrupt_after(monkeypatch, EdgeModel, "stream", None, calls)
    assert edge_main([*args, "--resume"]) == 0
    assert calls == [60, 36] and "60 records (0 errors, 24 from the earlier output)" in capsys.readouterr().out
    assert out.read_text() == reference and not journal_path(out).exists()


def test_resumed_run_numbers_records_and_overlay_files_as_the_whole_run(trained_ckpt, pngs, tmp_path, monkeypatch,
                                                                        capsys):
    """Ctrl-C after 24 of 40, then --resume: the second run's records and overlay PNGs carry their index in the whole
    input (24..39), not 0..15 again over the first run's files."""
    from vitlab.cli import main
    from vitlab.inference.predictor import Predictor

    files, out, shots = pngs[0][:40], tmp_path / "preds.jsonl", tmp_path / "shots"
    args = ["predict", str(trained_ckpt), *files, "--out", str(out), "--batch-size", "8", "--workers", "0",
            "--overlays", str(shots)]
    calls = []
    with monkeypatch.context() as m:
        _interrupt_after(m, Predictor, "stream", 24, calls)
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 130
    first = sorted(p.name for p in shots.iterdir())
    main([*args, "--resume"])
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(40)) and calls == [40]
    names = sorted(p.name for p in shots.iterdir())
    assert names == [f"{i:06d}_{i:03d}.png" for i in range(40)] and set(first) < set(names)
    assert [Path(r["overlay"]).name for r in recs[24:]] == names[24:]


def _detector_ckpt(path):
    """An untrained tiny detector saved as a checkpoint: its boxes are noise, but deterministic ones."""
    import torch

    from vitlab.tasks import DetectionTask

    torch.manual_seed(0)
    names = [f"c{i}" for i in range(3)]
    task = DetectionTask("vitdet_scenes", 3, names, dict(img_size=32, patch_size=8, embed_dim=32, depth=1,
                                                         num_heads=2, scale_factors=[1.0], fpn_channels=16,
                                                         num_convs=1), score_thresh=0.0, max_det=5)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "vitlab_task": "DetectionTask"}, path)
    return names


def _coco_ground_truth(path, files, names):
    gt = {"images": [{"id": 100 + i, "file_name": os.path.basename(f), "width": 28, "height": 28}
                     for i, f in enumerate(files)],
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)], "annotations": []}
    path.write_text(json.dumps(gt))


def test_coco_results_resume_from_the_journal(pngs, tmp_path, monkeypatch, capsys):
    from vitlab.cli import main
    from vitlab.inference.predictor import Predictor

    files = pngs[0][:12]
    ckpt, gt = tmp_path / "det.ckpt", tmp_path / "gt.json"
    _coco_ground_truth(gt, files, _detector_ckpt(ckpt))
    args = ["predict", str(ckpt), *files, "--format", "coco", "--annotations", str(gt), "--batch-size", "2",
            "--workers", "0", "--threads", "1"]
    main([*args, "--out", str(tmp_path / "full.json")])
    full = json.loads((tmp_path / "full.json").read_text())
    assert len(full) == 12 * 5  # every image answered (score_thresh 0: max_det boxes each)
    out = tmp_path / "res.json"
    calls = []
    with monkeypatch.context() as m:
        _interrupt_after(m, Predictor, "stream", 4, calls)
        with pytest.raises(SystemExit) as e:
            main([*args, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 130 and len(err) == 1 and err[0].startswith("vitlab: interrupted: 4 of 12 inputs")
    assert not out.exists()
    _interrupt_after(monkeypatch, Predictor, "stream", None, calls)
    main([*args, "--out", str(out), "--resume"])
    assert calls == [12, 8] and "4 from the earlier output" in capsys.readouterr().out
    assert json.loads(out.read_text()) == full  # the same batches as the full run: the same results
    with pytest.raises(SystemExit):  # a finished COCO file lists detections, not inputs: nothing to resume
        main([*args, "--out", str(out), "--resume"])
    assert "nothing to resume" in capsys.readouterr().err


def test_journal_drops_a_torn_last_line_and_appends_on_a_line_of_its_own(tmp_path):
    out = tmp_path / "p.jsonl"
    journal = journal_path(out)
    keys = [f"{i}.png" for i in range(4)]
    lines = [json.dumps({"index": i, "source": keys[i]}) for i in range(2)]
    journal.write_text(f"{lines[0]}\nnot json\n{lines[1]}\n" + '{"index": 2, "sou')
    run = ResumableRun(out, keys, resume=True)
    assert run.todo == [2, 3] and run.unreadable == 2 and run.earlier == 2
    assert journal.read_text().endswith(f"{lines[1]}\n")  # the torn tail cut off before appending
    run.record({"index": i, "source": keys[i], "n": i} for i in run.todo)
    assert [r["source"] for r in read_journal(journal)[0]] == keys
    assert [(r["index"], r["source"]) for r in run.merged()] == list(enumerate(keys))
    with pytest.raises(ValueError, match="pass --resume"):
        ResumableRun(out, keys, resume=False)
    run.finish()
    assert not journal.exists()
    ResumableRun(out, keys, resume=False).record(iter(()))  # a run that finished nothing leaves no journal
    assert not journal.exists()
    out.write_text(f"{lines[0]}\nnot json\n")  # a finished output is not a journal: damage there is an error
    from vitlab_edge.files import read_records

    with pytest.raises(ValueError, match=r"cannot resume: .*p.jsonl:2 is not a JSON record"):
        ResumableRun(out, keys, resume=True, earlier=read_records)


@pytest.mark.slow
def test_two_process_run_resumes_from_the_shards_a_killed_run_left(trained_ckpt, pngs, tmp_path, capsys):
    """A killed `--devices 2` run leaves each rank's shard of finished batches (flushed batch by batch); `--resume`
    reads them like the journal and the two processes predict only the rest."""
    from vitlab.cli import main

    files = pngs[0][:41]
    out = tmp_path / "ddp.jsonl"
    done = [p.to_dict() for p in vitlab.Predictor.load(trained_ckpt).predict(files[:6], num_workers=0)]
    for rec in done:
        rec["infer_ms"] = -1.0  # a mark that predicting the input again would erase
    shard = [out.with_name(f".{out.name}.partial.ddp.jsonl.rank{rank}.part") for rank in (0, 1)]
    shard[0].write_text("".join(json.dumps(r) + "\n" for r in done[0::2]))  # Lightning's sampler interleaves ranks
    shard[1].write_text("".join(json.dumps(r) + "\n" for r in done[1::2]) + '{"index": 7, "sou')
    args = ["predict", str(trained_ckpt), *files, "--out", str(out), "--devices", "2", "--accelerator", "cpu",
            "--batch-size", "4", "--workers", "0"]
    with pytest.raises(SystemExit):
        main(args)
    assert "6 records of an interrupted run" in capsys.readouterr().err
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "vitlab", *args, "--resume"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{len(files)} records (0 errors, 6 from the earlier output, 1 unreadable" in res.stdout
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in recs] == files and [r["index"] for r in recs] == list(range(len(files)))
    assert [r["infer_ms"] for r in recs[:6]] == [-1.0] * 6 and all(r["infer_ms"] >= 0 for r in recs[6:])
    single = vitlab.Predictor.load(trained_ckpt).predict(files, num_workers=0)
    assert [r["class_id"] for r in recs] == [p.class_id for p in single]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ddp.jsonl", "pngs"])
