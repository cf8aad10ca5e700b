"""Atomic file writes (write beside the target, fsync, then rename, so readers never see half a file) and the
record writers vitlab and the edge kit share: JSONL and CSV, one record per line (``read_records`` reads them back
for ``--resume``), and COCO results JSON for detection records (``write_coco``)."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def _default_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


OUTPUT_FORMATS = (".jsonl", ".csv")
CSV_FIELDS = ("index", "source", "label", "class_id", "prob", "topk", "error")  # topk as a JSON list

_MODE = _default_mode()  # mkstemp creates 0600 files; finished files get the usual permissions


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` only if it succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _MODE)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_jsonl(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> int:
    """One JSON record per line, written atomically (``path`` appears only once every record is in); the count."""
    n = 0

    def write(tmp: Path) -> None:
        nonlocal n
        with open(tmp, "w") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
                n += 1

    atomic_write(path, write)
    return n


def write_csv(records: Iterable[dict[str, Any]], path: str | os.PathLike,
              fields: tuple[str, ...] | list[str] = CSV_FIELDS) -> int:
    """One CSV row per record with the columns ``fields`` (default: classification's ``CSV_FIELDS``; a task's
    are ``RecordDecoder.csv_fields``), lists (``topk``, ``boxes``, ...) as JSON text, written atomically; the
    count."""
    n = 0

    def write(tmp: Path) -> None:
        nonlocal n
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, list(fields), extrasaction="ignore")
            w.writeheader()
            for rec in records:
                w.writerow({k: json.dumps(rec.get(k, [])) if k in JSON_COLUMNS else rec.get(k) for k in fields})
                n += 1

    atomic_write(path, write)
    return n


JSON_COLUMNS = ("topk", "boxes", "scores", "labels", "class_ids", "embedding")  # CSV cells holding JSON lists


def write_records(records: Iterable[dict[str, Any]], path: str | os.PathLike,
                  fields: tuple[str, ...] | list[str] = CSV_FIELDS) -> int:
    """JSONL or CSV by the name's suffix (``OUTPUT_FORMATS``; another raises ValueError; ``fields``: the CSV
    columns); the count."""
    suffix = Path(path).suffix
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"output {path}: use a .jsonl or .csv file name")
    if suffix == ".jsonl":
        return write_jsonl(records, path)
    return write_csv(records, path, fields)


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a finished JSONL or CSV output (what ``--resume`` starts from): CSV cells of
    ``JSON_COLUMNS`` parsed back to lists, an empty ``error`` cell None; a damaged JSONL line raises ValueError
    naming the file and line."""
    path = Path(path)
    if path.suffix not in OUTPUT_FORMATS:
        raise ValueError(f"output {path}: use a .jsonl or .csv file name")
    out = []
    with open(path, newline="") as f:
        if path.suffix == ".csv":
            for row in csv.DictReader(f):
                lists = {k: json.loads(row.get(k) or "[]") for k in JSON_COLUMNS if k in row}
                out.append({**row, **lists, "error": row.get("error") or None})
        else:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise ValueError(f"{path}:{i} is not a JSON record") from None
    return out


# --- COCO results ------------------------------------------------------------------------------------------------
def coco_image_ids(annotations: dict[str, Any]) -> Callable[[str], int | None]:
    """A lookup ``source path -> image_id`` for a COCO ground-truth document: a source matches an image whose
    ``file_name`` (relative to its images folder) is the tail of the source's path; the longest such name wins."""
    by_name: dict[str, list[tuple[tuple[str, ...], int]]] = {}
    for im in annotations.get("images", []):
        parts = tuple(p for p in Path(str(im["file_name"]).replace("\\", "/")).parts if p not in ("", "."))
        if parts:
            by_name.setdefault(parts[-1], []).append((parts, int(im["id"])))

    def lookup(source: str) -> int | None:
        parts = Path(source).parts
        found = [(len(p), i) for p, i in by_name.get(parts[-1] if parts else "", []) if parts[-len(p):] == p]
        return max(found)[1] if found else None

    return lookup


def coco_category_ids(annotations: dict[str, Any], labels: list[str]) -> list[int]:
    """``class_id -> COCO category_id`` for a model whose class names are ``labels``: by name when each label names
    exactly one category of ``annotations``, else by position among the categories sorted by id (the rule vitlab's
    COCO reader gives labels by); ValueError when neither fits."""
    cats = sorted(annotations.get("categories", []), key=lambda c: int(c["id"]))
    names = [str(c.get("name", "")) for c in cats]
    if labels and all(names.count(n) == 1 for n in labels):
        return [int(cats[names.index(n)]["id"]) for n in labels]
    if len(cats) == len(labels) or not labels:
        return [int(c["id"]) for c in cats]
    raise ValueError(f"the model's {len(labels)} classes ({', '.join(labels[:5])}, ...) match neither the names nor "
                     f"the number of the {len(cats)} categories of the annotations")


def check_coco_inputs(sources: Iterable[str | os.PathLike], annotations: str | os.PathLike,
                      labels: list[str]) -> None:
    """Before predicting: ``annotations`` reads as COCO JSON, the model's classes map to its categories and every
    source is one of its images; ValueError naming the first mismatch (so a long run cannot fail at its end)."""
    try:
        doc = json.loads(Path(annotations).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the annotations {annotations}: {e}") from None
    if not isinstance(doc, dict) or "images" not in doc:
        raise ValueError(f"{annotations} is not a COCO ground-truth JSON (no 'images')")
    coco_category_ids(doc, list(labels))
    image_id = coco_image_ids(doc)
    unknown = [str(s) for s in sources if image_id(str(s)) is None]
    if unknown:
        raise ValueError(f"{len(unknown)} inputs are not images of {annotations} (no file_name matches), e.g. "
                         f"{unknown[0]}")


def coco_bbox(box: list[float]) -> list[float]:
    """A record's ``[x1, y1, x2, y2]`` -> COCO's ``[x, y, w, h]``, width and height rounded to 3 decimals: the one
    rule for COCO results rows (``write_coco``, and vitlab's COCO mAP, which scores the same rows)."""
    x1, y1, x2, y2 = box
    return [x1, y1, round(x2 - x1, 3), round(y2 - y1, 3)]


def write_coco(records: Iterable[dict[str, Any]], path: str | os.PathLike, annotations: str | os.PathLike,
               labels: list[str]) -> int:
    """COCO results JSON (a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``) from detection
    records, written atomically: sources mapped to ``image_id`` by file name in the ground truth ``annotations``
    (``coco_image_ids``), class ids to category ids (``coco_category_ids``). Error records add nothing; a source
    the annotations do not list raises ValueError. Returns the number of records read."""
    doc = json.loads(Path(annotations).read_text(encoding="utf-8"))
    image_id, category = coco_image_ids(doc), coco_category_ids(doc, list(labels))
    results: list[dict[str, Any]] = []
    n = 0
    for rec in records:
        n += 1
        if rec.get("error") is not None:
            continue
        iid = image_id(str(rec["source"]))
        if iid is None:
            raise ValueError(f"{rec['source']} is not an image of {annotations} (no file_name matches it)")
        for box, score, k in zip(rec["boxes"], rec["scores"], rec["class_ids"]):
            if not 0 <= int(k) < len(category):
                raise ValueError(f"class id {k} of {rec['source']} has no category in {annotations} "
                                 f"({len(category)} categories)")
            results.append({"image_id": iid, "category_id": category[int(k)], "score": float(score),
                            "bbox": coco_bbox(box)})

    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(results))

    atomic_write(path, write)
    return n
