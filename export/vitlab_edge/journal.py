"""Resumable prediction runs: a journal of finished records beside the output, so that a run stopped by Ctrl-C,
``kill -9`` or the out-of-memory killer keeps what it finished, and ``--resume`` predicts only the rest.

While a run predicts into ``out``, each finished record is appended to the journal ``.<out name>.partial.jsonl``
beside it and handed to the operating system at once (a killed process loses nothing it wrote; an fsync every
``SYNC_SECONDS`` bounds what a power cut can take). ``out`` itself is written only at the end, atomically and in
input order, from the earlier records and the journal; then the journal goes. So ``out`` is never a partial file
that looks complete (a kill between the two leaves both: ``--resume`` then finds every input answered).

``--resume`` reads the finished ``out`` when its format reads back (JSONL, CSV) and every journal file of ``out``
(``.<out name>.partial*``: the journal, and the per-process shards of a multi-device run), skips the inputs they
answer (by source) and appends to the journal. A line cut short by a kill, or otherwise unreadable, is skipped:
its input is predicted again. A run without ``--resume`` refuses to start over a journal, so an interrupted run's
work is neither mixed into a new run nor thrown away without a word.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from vitlab_edge.files import atomic_write

SYNC_SECONDS = 2.0  # fsync the journal when this long has passed since the last (and at close); lines flush at once


class JournalError(ValueError):
    """A run that cannot start as asked (a journal left by an interrupted run, nothing to resume); one line."""


def journal_path(out: str | os.PathLike) -> Path:
    """The journal of a run into ``out``: ``.<name>.partial.jsonl`` in the same folder."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial.jsonl")


def journal_files(out: str | os.PathLike) -> list[Path]:
    """Every journal file of ``out`` (``.<name>.partial*``): the journal, and a multi-device run's shards."""
    out = Path(out)
    return sorted(p for p in out.parent.glob(f".{glob.escape(out.name)}.partial*") if p.is_file())


def read_journal(path: str | os.PathLike) -> tuple[list[dict[str, Any]], int, int]:
    """(the records of a journal file, how many of its lines were unreadable, the byte length up to its last
    newline). A record is a JSON object with a ``source``; anything else, such as a last line cut short by a
    kill, is counted and skipped."""
    data = Path(path).read_bytes()
    intact = data.rfind(b"\n") + 1
    records, bad = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("source"), str):
            records.append(rec)
        else:
            bad += 1
    return records, bad, intact


class Journal:
    """An append-only JSONL file: ``write`` hands each line to the OS at once and fsyncs every ``sync_seconds``;
    ``close`` fsyncs. Records written before a crash of the process are in the file."""

    def __init__(self, path: str | os.PathLike, sync_seconds: float = SYNC_SECONDS) -> None:
        self.path, self.sync_seconds = Path(path), sync_seconds
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self._synced = time.monotonic()
        self.written = 0

    def write(self, rec: dict[str, Any]) -> None:
        self._file.write(json.dumps(rec).encode() + b"\n")
        self._file.flush()
        self.written += 1
        if time.monotonic() - self._synced >= self.sync_seconds:
            self.sync()

    def write_lines(self, data: bytes) -> None:
        """Whole lines copied from another journal file."""
        self._file.write(data)
        self._file.flush()

    def sync(self) -> None:
        os.fsync(self._file.fileno())
        self._synced = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self.sync()
            self._file.close()


class ResumableRun:
    """One prediction run into ``out`` over inputs named by ``keys`` (their sources, in input order).

    ``resume=False``: a journal file of ``out`` raises ``JournalError`` (one line saying to pass --resume).
    ``resume=True``: the records of a finished ``out`` (``earlier(out)``; None: a format that does not read back,
    COCO or npy, resumes from its journal alone) and of its journal files answer their inputs; ``todo`` lists
    the positions of the rest. ``record`` journals this run's records as they come, ``merged`` gives every
    input's record in input order, ``finish`` removes the journal once ``out`` is written.

    ``owner=False`` (the other processes of a multi-device run, which start with the same command line once the
    owner's journal is open) reads the same state, checks nothing against it and changes no file."""

    def __init__(self, out: str | os.PathLike, keys: list[str], resume: bool,
                 earlier: Callable[[Path], list[dict[str, Any]]] | None = None, owner: bool = True) -> None:
        self.out, self.keys, self.owner = Path(out), list(keys), owner
        self.journal = journal_path(self.out)
        files = journal_files(self.out)
        self.done: dict[str, dict[str, Any]] = {}
        self.unreadable = 0  # journal lines skipped (their inputs are predicted again)
        self._foreign: list[tuple[Path, int]] = []  # other journal files to fold into the journal: (path, intact)
        self._start = 0  # where this run's records begin in the journal
        self._todo: list[int] | None = None
        self.added, self._errors = 0, 0
        if not resume:
            if files and owner:  # (the other processes start once the owner's journal is open, empty)
                self._refuse_to_start_over(files)
            return
        if self.out.is_file():
            if earlier is not None:
                try:
                    self.done.update((str(r["source"]), r) for r in earlier(self.out))
                except (ValueError, KeyError) as e:  # a damaged line, a record without its source
                    raise JournalError(f"cannot resume: {e}") from None
            elif not files:
                raise JournalError(f"{self.out} is finished and has no journal of an interrupted run beside it: "
                                   "nothing to resume (run without --resume to predict again)")
        for path in files:
            records, bad, intact = read_journal(path)
            self.unreadable += bad
            self.done.update((str(r["source"]), r) for r in records)
            if path == self.journal:
                if owner and intact < path.stat().st_size:
                    os.truncate(path, intact)  # a line cut short: the next record must start on a line of its own
            else:
                self._foreign.append((path, intact))

    def _refuse_to_start_over(self, files: list[Path]) -> None:
        """A new run over an interrupted run's journal files: JournalError, unless they hold no record (a kill
        before the first one), in which case they go."""
        n = sum(len(read_journal(p)[0]) for p in files)
        if n == 0:
            for path in files:
                path.unlink()
            return
        more = f" and {len(files) - 1} more" if len(files) > 1 else ""
        raise JournalError(f"{n} records of an interrupted run into {self.out} are kept in {files[0].name}{more}: "
                           f"pass --resume to continue it, or delete {'them' if more else 'it'} to start over")

    @property
    def todo(self) -> list[int]:
        """Positions (in ``keys``) of the inputs no earlier record answers."""
        if self._todo is None:
            self._todo = [i for i, key in enumerate(self.keys) if key not in self.done]
        return self._todo

    @property
    def earlier(self) -> int:
        """How many inputs earlier records answer."""
        return len(self.keys) - len(self.todo)

    @property
    def errors(self) -> int:
        """Error records among every input's: the earlier ones and this run's."""
        return sum(self.done[k].get("error") not in (None, "") for k in self.keys if k in self.done) + self._errors

    def record(self, records: Iterable[dict[str, Any]]) -> int:
        """Append this run's records (those of ``todo``, in order; each gets its input's ``index``) to the journal
        as each one comes; the count. Another journal file (a multi-device run's shards) is first copied into the
        journal and removed."""
        journal = Journal(self.journal)
        try:
            for path, intact in self._foreign:
                with open(path, "rb") as f:
                    journal.write_lines(f.read(intact))
                journal.sync()
                path.unlink()
            self._foreign = []
            self._start = self.journal.stat().st_size
            todo = self.todo
            for rec in records:
                expected = self.keys[todo[self.added]] if self.added < len(todo) else "no more records"
                if str(rec.get("source")) != expected:  # a stream out of step with its inputs: a bug, say it
                    raise RuntimeError(f"record {self.added} of this run answers {rec.get('source')}, expected "
                                       f"{expected}")
                journal.write({**rec, "index": todo[self.added]})
                self.added += 1
                self._errors += rec.get("error") is not None
        finally:
            journal.close()
            if self.journal.stat().st_size == 0:
                self.journal.unlink()  # nothing done, before or now: no journal to resume from
        return self.added

    def record_or_report(self, records: Iterable[dict[str, Any]], prog: str) -> int:
        """``record``, and when it stops early one line on stderr (``prog: interrupted: ...`` / ``prog: stopped:
        ...``) on what is kept and how to go on. Returns 130 after Ctrl-C (the exit status for the command, no
        traceback), else 0; any other error propagates after its line."""
        try:
            self.record(records)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted: {self.stopped() or 'nothing was finished'}", file=sys.stderr)
            return 130
        except BaseException:
            if self.added:
                print(f"{prog}: stopped: {self.stopped()}", file=sys.stderr)
            raise
        return 0

    def _new_lines(self) -> Iterator[bytes]:
        """This run's journal lines; RuntimeError unless every input of ``todo`` got one."""
        if self.added != len(self.todo):
            raise RuntimeError(f"{self.journal}: {self.added} records for {len(self.todo)} inputs left to predict")
        if not self.added:
            return
        with open(self.journal, "rb") as f:
            f.seek(self._start)
            yield from f

    def lines(self) -> Iterator[bytes]:
        """Every input's record as a JSONL line, in input order: this run's copied from the journal as written
        (they carry their ``index``), earlier ones re-serialised with theirs."""
        new = self._new_lines()
        for i, key in enumerate(self.keys):
            rec = self.done.get(key)
            yield next(new) if rec is None else json.dumps({**rec, "index": i}).encode() + b"\n"

    def merged(self) -> Iterator[dict[str, Any]]:
        """Every input's record, in input order, with its ``index``: ``lines`` read as records (so memory holds the
        earlier records only)."""
        return map(json.loads, self.lines())

    def write_jsonl(self) -> int:
        """``out`` (a ``.jsonl``) from ``lines``, atomically; the count."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                f.writelines(self.lines())

        atomic_write(self.out, write)
        return len(self.keys)

    def finish(self) -> None:
        """``out`` is written: remove every journal file of it."""
        for path in journal_files(self.out):
            path.unlink(missing_ok=True)

    def stopped(self) -> str | None:
        """After a failure: one line on what is kept and how to go on, or None when nothing is."""
        if not self.journal.is_file():
            return None
        return (f"{self.earlier + self.added} of {len(self.keys)} inputs are answered and kept ({self.journal}): "
                "the same command with --resume predicts only the rest")
