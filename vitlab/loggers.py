"""CSVLogger whose ``metrics.csv`` is rewritten atomically (temp file + rename) at every save.

Lightning's writer appends in place and truncates the file to change its header, so a kill at the wrong moment
leaves a torn or empty file; this one never does. Metric files are small, so a whole rewrite costs nothing.
"""

from __future__ import annotations

import csv
import io
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from vitlab._fs import atomic_write_text


class _AtomicWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._rows: list[dict] = []
        if os.path.isfile(self.metrics_file_path):  # a resumed run keeps what its version already logged
            with open(self.metrics_file_path, newline="") as f:
                self._rows = list(csv.DictReader(f))

    def _check_log_dir_exists(self) -> None:
        """Lightning's writer deletes an existing ``metrics.csv`` here; this one keeps its rows and rewrites them."""

    def save(self) -> None:
        if not self.metrics:
            return
        self._rows += self.metrics
        self.metrics = []
        keys = sorted(set().union(*self._rows))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self._rows)
        atomic_write_text(self.metrics_file_path, buf.getvalue())


class AtomicCSVLogger(CSVLogger):
    """Drop-in for ``lightning.pytorch.loggers.CSVLogger`` (same arguments, same files)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AtomicWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AtomicWriter(log_dir=self.log_dir)
        return self._experiment
