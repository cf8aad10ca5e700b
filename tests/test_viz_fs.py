import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO
from vitlab._fs import atomic_write, atomic_write_json
from vitlab.viz import per_class_table, write_classification_report

# A child that streams 40,000 records into TARGET (argv[1]) and, half-way, touches MARKER (argv[2]) and waits
# to be killed: megabytes are already written by then, so a writer that is not atomic leaves them in TARGET.
STREAM_WRITER = """
import sys, time
from vitlab.inference.writers import write_records

def records():
    for i in range(40000):
        if i == 20000:
            open(sys.argv[2], "w").close()
            time.sleep(300)
        yield {"index": i, "source": f"img{i:05d}.png", "label": "x" * 64, "topk": [], "error": None}

write_records(records(), sys.argv[1])
"""

# A child that saves two steps' metrics under ROOT (argv[1]), logs 5,000 more steps and dies half-way through
# writing them on save: Path.write_text (what the save goes through) writes half its text, touches MARKER
# (argv[2]) and waits to be killed.
LOGGER_SAVE = """
import pathlib, sys, time
from vitlab.loggers import AtomicCSVLogger

logger = AtomicCSVLogger(sys.argv[1], name="logs", version=0, flush_logs_every_n_steps=10**9)
logger.log_metrics({"a": 1.0}, step=0)
logger.save()
logger.log_metrics({"a": 2.0, "b": 3.0}, step=1)
logger.save()
for step in range(2, 5002):
    logger.log_metrics({"a": float(step), "b": 0.5}, step=step)

def half_then_wait(self, text, *args, **kwargs):
    with open(self, "w") as f:
        f.write(text[: len(text) // 2])
    open(sys.argv[2], "w").close()
    time.sleep(300)

pathlib.Path.write_text = half_then_wait
logger.save()
"""


def _kill_mid_write(code: str, target_arg: os.PathLike, marker: os.PathLike) -> None:
    """Run ``code`` in a child process, wait (up to 60 s) for it to touch ``marker`` mid-write, SIGKILL it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "export")])}
    child = subprocess.Popen([sys.executable, "-c", code, str(target_arg), str(marker)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not os.path.exists(marker) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.kill()
    _, err = child.communicate(timeout=30)
    assert os.path.exists(marker), f"the writer never reached its kill point: {err.decode()[-2000:]}"
    assert child.returncode == -signal.SIGKILL


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})

    def boom(p):
        p.write_text("half a file")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert json.loads(target.read_text()) == {"a": 1}  # the old content survives
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


@pytest.mark.parametrize("name, earlier", [("preds.jsonl", True), ("preds.csv", False)])
def test_writer_killed_mid_write_leaves_the_earlier_file_or_none(tmp_path, name, earlier):
    from vitlab.inference.writers import read_records, write_records

    target, marker = tmp_path / name, tmp_path / "mid-write"
    old = [{"index": i, "source": f"old{i}.png", "label": "a", "topk": [], "error": None} for i in range(3)]
    if earlier:
        write_records(old, target)
        before = target.read_bytes()
    _kill_mid_write(STREAM_WRITER, target, marker)
    if earlier:
        assert target.read_bytes() == before and read_records(target) == old
    else:
        assert not target.exists()
    partial = [p for p in tmp_path.iterdir() if p not in (target, marker)]  # SIGKILL leaves the temp file
    assert [p.name[:len(name) + 2] for p in partial] == [f".{name}."] and partial[0].suffix == ".tmp"
    assert partial[0].stat().st_size > 1_000_000  # the kill came mid-write: megabytes were on disk


def test_per_class_table_from_confusion_matrix():
    cm = torch.tensor([[8, 2], [1, 9]])
    rows = per_class_table(cm, ["a", "b"])
    assert rows[0] == {"class": "a", "precision": round(8 / 9, 4), "recall": 0.8,
                       "f1": round(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8), 4), "support": 10}
    assert per_class_table(torch.zeros(2, 2, dtype=torch.long), ["a", "b"])[0]["f1"] == 0.0


def test_report_files(tmp_path):
    paths = write_classification_report(torch.tensor([[5, 0], [1, 4]]), ["cat", "dog"], tmp_path)
    assert paths["confusion_matrix"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["per_class_json"].read_text())["confusion_matrix"] == [[5, 0], [1, 4]]
    assert paths["per_class_csv"].read_text().splitlines()[1].startswith('"cat",')


def test_atomic_csv_logger_rewrites_whole_file_with_growing_header(tmp_path):
    from vitlab.loggers import AtomicCSVLogger

    logger = AtomicCSVLogger(tmp_path, name="logs", version=0)
    logger.log_metrics({"a": 1.0}, step=0)
    logger.save()
    logger.log_metrics({"a": 2.0, "b": 3.0}, step=1)  # a new key: the header grows
    logger.save()
    path = tmp_path / "logs" / "version_0" / "metrics.csv"
    assert path.read_text().splitlines() == ["a,b,step", "1.0,,0", "2.0,3.0,1"]
    again = AtomicCSVLogger(tmp_path, name="logs", version=0)  # a run resumed into the same version
    again.log_metrics({"a": 4.0}, step=2)
    again.save()
    assert path.read_text().splitlines() == ["a,b,step", "1.0,,0", "2.0,3.0,1", "4.0,,2"]



def test_atomic_csv_logger_killed_mid_save_keeps_the_previous_file(tmp_path):
    _kill_mid_write(LOGGER_SAVE, tmp_path / "run", tmp_path / "mid-save")  # the same two saves, then a crash
    folder = tmp_path / "run" / "logs" / "version_0"
    assert (folder / "metrics.csv").read_text().splitlines() == ["a,b,step", "1.0,,0", "2.0,3.0,1"]
    assert [p.stat().st_size > 10_000 for p in folder.glob(".metrics.csv.*.tmp")] == [True]  # killed mid-write
