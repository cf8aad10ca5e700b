"""Datasets that yield ``(HWC uint8 image, int label)``: built-in Fashion-MNIST (IDX), ImageFolder, CSV lists.

Decoding goes through ``vitlab.inference.io``; a file that fails to decode yields ``None`` (the loader's
collate drops it and counts it) or raises, per ``on_bad_image``.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from vitlab._fs import atomic_write
from vitlab.errors import VitlabError
from vitlab.inference.io import IMAGE_EXTENSIONS, ImageReadError, is_image_file, read_image

log = logging.getLogger(__name__)

FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
DEFAULT_DATA_DIR = "data"  # relative to the working directory: where ``download: true`` writes without a data_dir


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array; the header says dtype and shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise VitlabError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise VitlabError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise VitlabError(f"{path} is truncated: header says {dims}, file holds {len(data) - offset} bytes")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims).copy()  # writable, owns its memory


def _find_fmnist(data_dir: str | os.PathLike | None) -> Path | None:
    """The first folder holding all four IDX files: ``data_dir``, ``$VITLAB_DATA``, ``DEFAULT_DATA_DIR`` (where
    ``download: true`` puts them), Debian's folder; each as given or with ``fashion-mnist`` / ``fashion_mnist``."""
    candidates = [data_dir, os.environ.get("VITLAB_DATA"), DEFAULT_DATA_DIR, DEBIAN_FMNIST]
    for c in candidates:
        if not c:
            continue
        for d in (Path(c), Path(c) / "fashion-mnist", Path(c) / "fashion_mnist"):
            if all((d / f).exists() or (d / f"{f}.gz").exists() for f in FMNIST_FILES["train"] + FMNIST_FILES["test"]):
                return d
    return None


def _download_fmnist(target: Path) -> Path:
    for name in FMNIST_FILES["train"] + FMNIST_FILES["test"]:
        dest = target / f"{name}.gz"
        if not dest.exists():
            log.warning("downloading %s%s.gz -> %s", FMNIST_URL, name, dest)
            atomic_write(dest, lambda p, n=name: urllib.request.urlretrieve(f"{FMNIST_URL}{n}.gz", p))
    return target


def fashion_mnist_root(data_dir: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The folder holding the four Fashion-MNIST IDX files (plain or .gz), without reading them.

    Looks in ``data_dir``, ``$VITLAB_DATA``, ``./data`` (``DEFAULT_DATA_DIR``), then Debian's
    ``/usr/share/datasets/fashion-mnist``; downloads the canonical files into ``<data_dir>/fashion-mnist`` (default
    ``./data/fashion-mnist``, where the next call finds them) only when ``download=True``.
    """
    root = _find_fmnist(data_dir)
    if root is not None:
        return root
    if not download:
        raise VitlabError(
            f"Fashion-MNIST not found in data_dir={data_dir}, $VITLAB_DATA, ./{DEFAULT_DATA_DIR} or {DEBIAN_FMNIST}: "
            "install it with `apt-get install dataset-fashion-mnist`, set VITLAB_DATA to its folder, or set "
            "data.init_args.download: true")
    return _download_fmnist(Path(data_dir or DEFAULT_DATA_DIR) / "fashion-mnist")


def fashion_mnist_arrays(split: str, data_dir: str | os.PathLike | None = None,
                         download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 28, 28]`` uint8 and labels ``[N]`` of the official ``train`` (60k) or ``test`` (10k) split,
    from the folder ``fashion_mnist_root`` finds."""
    if split not in FMNIST_FILES:
        raise VitlabError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    root = fashion_mnist_root(data_dir, download)
    images, labels = (read_idx(root / f if (root / f).exists() else root / f"{f}.gz") for f in FMNIST_FILES[split])
    if images.ndim != 3 or len(images) != len(labels):
        raise VitlabError(f"Fashion-MNIST files in {root} disagree: {images.shape} images, {labels.shape} labels")
    return images, labels.astype(np.int64)


class ArrayDataset(Dataset):
    """In-memory images ``[N, H, W(, C)]`` uint8 with integer labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        img = self.images[i]
        return (img[:, :, None] if img.ndim == 2 else img), int(self.labels[i])


class FileListDataset(Dataset):
    """Image files with labels; unreadable files yield ``None`` (skip) or raise (``on_bad_image='raise'``)."""

    def __init__(self, files: Sequence[str | os.PathLike], labels: Sequence[int], on_bad_image: str = "skip") -> None:
        if on_bad_image not in ("skip", "raise"):
            raise VitlabError(f"on_bad_image must be 'skip' or 'raise', got {on_bad_image!r}")
        self.files, self.labels, self.on_bad_image = [str(f) for f in files], list(labels), on_bad_image

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int] | None:
        try:
            return read_image(self.files[i]), self.labels[i]
        except ImageReadError as e:
            if self.on_bad_image == "raise":
                raise VitlabError(f"bad image in dataset: {e} (set on_bad_image: skip to skip such files)") from None
            log.warning("skipping unreadable image %s", e)
            return None


def scan_image_folder(root: str | os.PathLike) -> tuple[list[str], list[int], list[str]]:
    """torchvision-style ``root/<class>/<image>``: (files, labels, sorted class names); errors name the folder."""
    root = Path(root)
    if not root.is_dir():
        raise VitlabError(f"image folder {root} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise VitlabError(f"image folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    files, labels = [], []
    for idx, c in enumerate(classes):
        found = sorted(str(p) for p in (root / c).rglob("*") if p.is_file() and is_image_file(p))
        if not found:
            raise VitlabError(f"class folder {root / c} has no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [idx] * len(found)
    return files, labels, classes


def scan_unlabeled_folder(root: str | os.PathLike) -> tuple[list[str], list[int], list[str]]:
    """Every image under ``root`` (sub-folders included), all with label 0 of one class ``image``."""
    root = Path(root)
    if not root.is_dir():
        raise VitlabError(f"image folder {root} does not exist")
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise VitlabError(f"image folder {root} has no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files, [0] * len(files), ["image"]


def read_csv_list(path: str | os.PathLike, class_names: Sequence[str] | None = None
                  ) -> tuple[list[str], list[int], list[str]]:
    """A CSV with columns ``path,label`` (label = class name); relative paths resolve against the CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise VitlabError(f"CSV list {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise VitlabError(f"CSV list {path} needs a header with columns 'path' and 'label'")
        rows = [(r["path"], r["label"]) for r in reader]
    if not rows:
        raise VitlabError(f"CSV list {path} has no rows")
    classes = list(class_names) if class_names else sorted({lbl for _, lbl in rows})
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({lbl for _, lbl in rows if lbl not in index})
    if unknown:
        raise VitlabError(f"CSV list {path}: labels {unknown[:5]} are not in class_names")
    files = [str(p if Path(p).is_absolute() else path.parent / p) for p, _ in rows]
    return files, [index[lbl] for _, lbl in rows], classes


# colour and grey photographs bundled with scikit-image (no download needed)
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "hubble_deep_field",
                  "retina", "colorwheel", "stereo_motorcycle", "camera", "coins", "moon", "page", "text", "brick",
                  "grass", "gravel")


def skimage_photos() -> list[np.ndarray]:
    """scikit-image's bundled photographs as HWC uint8 RGB arrays (grey ones repeated to 3 channels)."""
    try:
        import skimage.data
    except ImportError:
        raise VitlabError("sample photos need scikit-image: pip install 'vitlab[demo]'") from None
    photos = []
    for name in SKIMAGE_PHOTOS:
        a = getattr(skimage.data, name)()
        a = a[0] if isinstance(a, tuple) else a  # stereo pairs: the left view
        photos.append(np.ascontiguousarray(a[:, :, :3] if a.ndim == 3 else np.repeat(a[:, :, None], 3, 2)))
    return photos


def make_photo_folder(out: str | os.PathLike, n: int = 2000, min_side: int = 96, max_side: int = 800,
                      seed: int = 0) -> list[str]:
    """``n`` JPEGs of mixed sizes cut from scikit-image's bundled photographs (random crops, scales and flips):
    a real-photo corpus for demos and benchmarks. Existing files are reused; returns the paths, sorted."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    photos = skimage_photos()
    paths = []
    for i in range(n):
        path = out / f"photo_{i:05d}.jpg"
        paths.append(str(path))
        if path.exists():
            continue
        rng = np.random.default_rng([seed, i])  # per image: the same file whichever ones already exist
        crop = Image.fromarray(_random_crop(photos[i % len(photos)], rng))
        side = int(rng.integers(min_side, max_side + 1))
        scale = side / max(crop.size)
        crop = crop.resize((max(1, round(crop.size[0] * scale)), max(1, round(crop.size[1] * scale))),
                           Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        quality = int(rng.integers(70, 95))
        atomic_write(path, lambda p, im=crop, q=quality: im.save(p, format="JPEG", quality=q))
    return paths


def _random_crop(photo: np.ndarray, rng: np.random.Generator, min_frac: float = 0.5) -> np.ndarray:
    """A random crop of at least ``min_frac`` of each side."""
    h, w = photo.shape[:2]
    ch, cw = rng.integers(int(h * min_frac), h + 1), rng.integers(int(w * min_frac), w + 1)
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return np.ascontiguousarray(photo[top:top + ch, left:left + cw])


# (PIL mode, format, suffix) for the image files make_item_files writes, in rotation
_ITEM_FORMATS = (("L", "PNG", ".png"), ("RGB", "JPEG", ".jpg"), ("RGBA", "PNG", ".png"), ("P", "GIF", ".gif"),
                 ("L", "BMP", ".bmp"), ("RGB", "WEBP", ".webp"), ("I;16", "TIFF", ".tif"), ("RGB", "PNG", ".png"))


def make_item_files(out: str | os.PathLike, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                    n: int = 48, on_photos: float = 0.25, seed: int = 0) -> Path:
    """``n`` Fashion-MNIST-style items written as real image files, the kind of folder a user predicts: sizes
    28-224 px, PIL modes L / RGB / RGBA / P / 16-bit, formats PNG / JPEG / GIF / BMP / WebP / TIFF, and a share
    ``on_photos`` of them composited onto darkened crops of real photographs (the item's pixels as alpha).

    Writes ``out/labels.csv`` (``path,label``, the CSVDataModule format) and returns its path; files on photos are
    named ``item_KKK_on_photo.*``. Items are drawn
    from ``images`` / ``labels`` (grey ``[N, 28, 28]``) deterministically by ``seed``."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = skimage_photos() if on_photos > 0 else []
    rows = ["path,label"]
    for k, i in enumerate(rng.choice(len(labels), size=n, replace=False)):
        mode, fmt, suffix = _ITEM_FORMATS[k % len(_ITEM_FORMATS)]
        side = int(rng.integers(28, 225))
        grey = np.asarray(Image.fromarray(images[i]).resize((side, side), Image.Resampling.BICUBIC))
        rgb = np.repeat(grey[:, :, None], 3, 2)
        on_photo = bool(photos) and rng.random() < on_photos
        if on_photo:  # the item over a dark photo: Fashion-MNIST's black background, textured
            bg = np.asarray(Image.fromarray(_random_crop(photos[int(rng.integers(len(photos)))], rng))
                            .resize((side, side), Image.Resampling.BILINEAR)).astype(np.float32) * 0.3
            alpha = grey[:, :, None].astype(np.float32) / 255.0
            rgb = np.clip(alpha * rgb + (1 - alpha) * bg + 0.5, 0, 255).astype(np.uint8)
        image = _as_mode(rgb, mode)
        name = f"item_{k:03d}{'_on_photo' if on_photo else ''}{suffix}"
        atomic_write(out / name, lambda p, im=image, f=fmt: im.save(p, format=f))
        rows.append(f"{name},{class_names[int(labels[i])]}")
    atomic_write(out / "labels.csv", lambda p: Path(p).write_text("\n".join(rows) + "\n", encoding="utf-8"))
    return out / "labels.csv"


def _as_mode(rgb: np.ndarray, mode: str):
    """An RGB uint8 array as a PIL image in ``mode`` (RGBA opaque: readers composite transparency on white)."""
    from PIL import Image

    image = Image.fromarray(rgb)
    if mode == "I;16":
        return Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE)
    return image.convert(mode)
