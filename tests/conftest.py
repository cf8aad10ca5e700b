import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
VITLAB = [sys.executable, "-m", "vitlab"]


# CI (``CI=true``) and `make test` / .ci/run (``VITLAB_REQUIRE_DATA=1``) turn a missing data set into a failure:
# a run that skipped the tests needing it must not pass. Elsewhere such tests skip, with the same one line.
REQUIRE_DATA = (os.environ.get("CI", "").lower() in ("1", "true", "yes")
                or os.environ.get("VITLAB_REQUIRE_DATA", "") not in ("", "0"))
FMNIST_MISSING = ("Fashion-MNIST is missing: `apt-get install dataset-fashion-mnist`, or set VITLAB_DATA to the "
                  "folder holding its four IDX files")


def _fmnist_available() -> bool:
    from vitlab.data.datasets import _find_fmnist

    return _find_fmnist(None) is not None


def require_fmnist() -> None:
    """Skip (locally) or fail (CI, VITLAB_REQUIRE_DATA=1) the running test when Fashion-MNIST is missing."""
    if _fmnist_available():
        return
    if REQUIRE_DATA:
        pytest.fail(f"{FMNIST_MISSING} (CI / VITLAB_REQUIRE_DATA=1: missing data fails the run)", pytrace=False)
    pytest.skip(FMNIST_MISSING)


# a test (or module: ``pytestmark = needs_fmnist``) that reads Fashion-MNIST; checked before its fixtures run
needs_fmnist = pytest.mark.fmnist


def pytest_configure(config):
    config.addinivalue_line("markers", "fmnist: reads Fashion-MNIST (skips without it; fails under CI)")


def pytest_report_header(config):
    from vitlab.data.datasets import _find_fmnist

    found = _find_fmnist(None)
    return f"Fashion-MNIST: {found}" if found else (
        f"Fashion-MNIST: missing, tests that read it {'FAIL' if REQUIRE_DATA else 'skip'} ({FMNIST_MISSING})")


def pytest_runtest_setup(item):
    if item.get_closest_marker("fmnist") is not None:
        require_fmnist()


@pytest.fixture(scope="session")
def fmnist_test():
    """The official 10k Fashion-MNIST test split: real images for every test that needs pixels."""
    require_fmnist()
    from vitlab.data.datasets import fashion_mnist_arrays

    return fashion_mnist_arrays("test")


@pytest.fixture()
def image_folder(tmp_path, fmnist_test):
    """root/<class>/<i>.png made from real Fashion-MNIST images: 3 classes x 8 images."""
    from PIL import Image

    images, labels = fmnist_test
    root = tmp_path / "folder"
    for c in range(3):
        (root / f"class_{c}").mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(labels == c)[:8]):
            Image.fromarray(images[i]).save(root / f"class_{c}" / f"{k}.png")
    return root


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory, fmnist_test):
    """A small ViT (the demo model cut to 2 blocks) trained for 2 epochs on 8,192 real Fashion-MNIST images and
    saved as a Lightning checkpoint: predictions that mean something, for export and inference tests."""
    import lightning as L

    from vitlab.data import FashionMNISTDataModule
    from vitlab.models.classify import FMNIST_LABELS
    from vitlab.tasks import ClassificationTask

    L.seed_everything(0, verbose=False)
    task = ClassificationTask("vitlab_fmnist", 10, list(FMNIST_LABELS), {"depth": 2},
                              optim={"lr": 2e-3, "warmup_epochs": 0.2})
    data = FashionMNISTDataModule(limit=8192, batch_size=128, val_fraction=0.0)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, datamodule=data)
    path = tmp_path_factory.mktemp("trained") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def exported(trained_ckpt, tmp_path_factory):
    """fp32 and int8 exports of ``trained_ckpt`` (report on 1,000 real test images)."""
    from vitlab.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    results = export_onnx(trained_ckpt, out, ["fp32", "int8"], num_eval=1000)
    return {p: r.path for p, r in results.items()}
