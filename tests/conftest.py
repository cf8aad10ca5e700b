import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
VITLAB = [sys.executable, "-m", "vitlab"]


def _fmnist_available() -> bool:
    from vitlab.data.datasets import _find_fmnist

    return _find_fmnist(None) is not None


needs_fmnist = pytest.mark.skipif(not _fmnist_available(),
                                  reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="session")
def fmnist_test():
    """The official 10k Fashion-MNIST test split: real images for every test that needs pixels."""
    if not _fmnist_available():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
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
