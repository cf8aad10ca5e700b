import json

import pytest
import torch

from vitlab._fs import atomic_write, atomic_write_json
from vitlab.viz import per_class_table, write_classification_report


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


def test_atomic_csv_logger_rewrites_whole_file_with_growing_header(tmp_path, monkeypatch):
    from vitlab.loggers import AtomicCSVLogger

    logger = AtomicCSVLogger(tmp_path, name="logs", version=0)
    logger.log_metrics({"a": 1.0}, step=0)
    logger.save()
    logger.log_metrics({"a": 2.0, "b": 3.0}, step=1)  # a new key: the header grows
    logger.save()
    path = tmp_path / "logs" / "version_0" / "metrics.csv"
    assert path.read_text().splitlines() == ["a,b,step", "1.0,,0", "2.0,3.0,1"]

    def torn(p, text):  # a crash while writing must leave the previous file intact
        raise KeyboardInterrupt

    monkeypatch.setattr("vitlab.loggers.atomic_write_text", torn)
    logger.log_metrics({"a": 4.0}, step=2)
    with pytest.raises(KeyboardInterrupt):
        logger.save()
    assert path.read_text().splitlines()[-1] == "2.0,3.0,1"
