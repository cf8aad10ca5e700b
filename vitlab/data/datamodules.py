"""LightningDataModules. Each exposes ``num_classes`` and ``class_names`` at construction (the CLI links them
into the model) and builds its transforms from the model's PreprocessCfg at ``setup``. ``VitlabDataModule`` holds
the loader logic every task shares; ``ClassificationDataModule`` adds the classification samples and batches
(detection's are in ``vitlab.data.detection``)."""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from vitlab.data.datasets import (
    ArrayDataset,
    FileListDataset,
    fashion_mnist_arrays,
    fashion_mnist_root,
    read_csv_list,
    scan_image_folder,
    scan_unlabeled_folder,
)
from vitlab.data.transforms import (
    batched_flips,
    load_pipeline,
    make_sample_transform,
    seed_augment,
    seed_augment_worker,
)
from vitlab.errors import VitlabError
from vitlab.models.classify import FMNIST_LABELS
from vitlab.preprocess import PreprocessCfg

log = logging.getLogger(__name__)


class TransformedDataset(Dataset):
    """Applies a per-sample transform (``transform_item``: by default ``transform`` to the image of an ``(image,
    label)`` pair); ``None`` samples (unreadable files) pass through for collate to drop.

    ``batches``: an optional ``indices -> batch dict`` (``ArrayBatches``) that the DataLoader calls for a whole batch
    at once (its ``__getitems__`` hook); ``collate`` passes such a batch through. Without it, samples one by one.
    ``augment``: the augment pipeline inside ``transform``, if any, which each worker seeds
    (``seed_augment_worker``)."""

    def __init__(self, base: Dataset, transform=None, batches=None, augment=None) -> None:
        self.base, self.transform, self.batches, self.augment = base, transform, batches, augment

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        item = self.base[i]
        return None if item is None else self.transform_item(item)

    def __getitems__(self, indices: list[int]) -> list | dict[str, Any]:
        return self.batches(indices) if self.batches is not None else [self[i] for i in indices]

    def transform_item(self, item: Any) -> Any:
        image, label = item
        return self.transform(image), label


class ArrayBatches:
    """Whole batches of in-memory images that are already the model's size: one numpy indexing of the ``[N, C, H,
    W]`` array and, for a flips-only augment pipeline (``batched_flips``), flips drawn for the whole batch from
    torch's generator (seeded by ``seed_everything``; per worker by the DataLoader) instead of Albumentations'
    per-sample calls. The images are bit for bit ``make_sample_transform``'s (without flips: the same batches).
    numpy, not torch, cuts the batch: torch's indexing runs OpenMP regions, which stall for milliseconds when the
    machine's cores are shared. ``benchmarks/probe_train_speed.py parts`` measures it against the per-sample path.

    ``for_samples`` builds one when ``samples`` (an ``ArrayDataset``, or a ``Subset`` of one) qualifies, else None.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, index: np.ndarray | None,
                 flips: list[tuple[int, float]]) -> None:
        self.images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)  # [N, C, H, W] view
        self.labels, self.index, self.flips = np.asarray(labels, np.int64), index, flips

    @classmethod
    def for_samples(cls, samples: Dataset, preprocess: PreprocessCfg, augment) -> ArrayBatches | None:
        flips = batched_flips(augment) if augment is not None else []
        base, index = (samples.dataset, np.asarray(samples.indices, np.int64)) if isinstance(samples, Subset) \
            else (samples, None)
        if flips is None or type(base) is not ArrayDataset:
            return None
        shape = base.images.shape
        if base.images.dtype != np.uint8 or tuple(shape[1:3]) != preprocess.image_size or \
                (shape[3] if len(shape) == 4 else 1) != preprocess.channels:
            return None  # resizing or channel conversion: per sample, through PreprocessCfg.prepare
        return cls(base.images, base.labels, index, flips)

    def __call__(self, indices: list[int]) -> dict[str, Any]:
        rows = np.asarray(indices, np.int64) if self.index is None else self.index[indices]
        images = np.ascontiguousarray(self.images[rows])  # a copy
        for axis, p in self.flips:
            flip = (torch.rand(len(rows)) < p).numpy()
            images[flip] = np.flip(images[flip], axis + 1)
        return {"image": torch.from_numpy(images), "target": torch.from_numpy(self.labels[rows]), "skipped": 0}


def collate(samples: list | dict[str, Any]) -> dict[str, Any]:
    """-> ``{"image": uint8 [N, C, H, W], "target": int64 [N], "skipped": number of unreadable samples}``; a batch
    ``ArrayBatches`` already built passes through."""
    if isinstance(samples, dict):
        return samples
    good = [s for s in samples if s is not None]
    if not good:
        return {"image": torch.empty(0, dtype=torch.uint8), "target": torch.empty(0, dtype=torch.long),
                "skipped": len(samples)}
    images = torch.from_numpy(np.stack([s[0] for s in good]))
    return {"image": images, "target": torch.tensor([s[1] for s in good]), "skipped": len(samples) - len(good)}


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``fraction`` of each class's items (at least one per class), drawn by ``seed``."""
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[: max(1, round(np.sum(labels == c) * fraction))]
            for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


class VitlabDataModule(L.LightningDataModule):
    """Shared loader logic: deterministic train/val split, augment pipeline, workers. A task's base class says how
    samples become model inputs (``_wrap``) and batches (``collate_fn``); data subclasses provide the samples and
    set ``class_names`` in their constructor.

    Without a test split, ``test`` and ``predict`` use the validation split (``val_dir``/``val_csv``, or the
    ``val_fraction`` held out of the training data) and say so once.
    """

    def __init__(self, batch_size: int = 128, eval_batch_size: int | None = None, num_workers: int = 0,
                 val_fraction: float = 0.1, seed: int = 0, train_augment: str | os.PathLike | None = None,
                 preprocess: PreprocessCfg | None = None) -> None:
        """
        Args:
            batch_size: training batch per process (the global batch is ``batch_size x devices x num_nodes``).
            eval_batch_size: validation / test / predict batch (default: ``batch_size``).
            num_workers: DataLoader worker processes.
            val_fraction: share of the training data held out for validation when no validation split is given.
            seed: the held-out split's seed.
            train_augment: an Albumentations pipeline YAML (``configs/augment/*.yaml``), validated now.
            preprocess: the model's PreprocessCfg; by default taken from the task the Trainer runs.
        """
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise VitlabError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if batch_size < 1:
            raise VitlabError(f"data.batch_size must be >= 1, got {batch_size}")
        self.class_names: list[str] = []
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.val_fraction, self.seed = num_workers, val_fraction, seed
        self.augment = load_pipeline(train_augment, self.augment_bboxes) if train_augment else None  # validated now
        self.preprocess = preprocess
        self._sets: dict[str, Dataset] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # --- what a task's base class provides --------------------------------------------------------
    augment_bboxes = False  # the augment pipeline carries boxes (``load_pipeline(..., bboxes=True)``)
    collate_fn: Any = None  # samples -> batch

    def _wrap(self, samples: Dataset, preprocess: PreprocessCfg, augment) -> Dataset:
        """Samples as the model's inputs: the PreprocessCfg step, after ``augment`` when given (training)."""
        raise NotImplementedError

    # --- what data subclasses provide -------------------------------------------------------------
    def split_set(self, split: str) -> Dataset | None:
        """The samples of ``split`` (``train``, ``val``, ``test``) as the data gives them, or None. ``train`` is
        required; without ``val``, ``val_fraction`` of ``train`` is held out; without ``test``, test runs on val."""
        raise NotImplementedError

    # --- Lightning hooks --------------------------------------------------------------------------
    def _resolve_preprocess(self) -> PreprocessCfg:
        if self.preprocess is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            self.preprocess = getattr(module, "preprocess", None)
        if self.preprocess is None:
            raise VitlabError("the datamodule needs a PreprocessCfg: attach it to a Trainer with a vitlab task, "
                              "or pass preprocess=model.preprocess")
        return self.preprocess

    def _train_val(self) -> tuple[Dataset, Dataset]:
        """The training pool and the validation set: ``split_set("val")``, else ``val_fraction`` held out by seed."""
        pool, val = self.split_set("train"), self.split_set("val")
        if val is None:
            order = np.random.default_rng(self.seed).permutation(len(pool))  # type: ignore[arg-type]
            n_val = int(round(len(order) * self.val_fraction))
            val, pool = Subset(pool, order[:n_val].tolist()), Subset(pool, np.sort(order[n_val:]).tolist())
        return pool, val

    def setup(self, stage: str) -> None:
        stage = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum
        pre = self._resolve_preprocess()
        if stage in ("fit", "validate"):
            pool, val = self._train_val()
            self._sets["train"] = self._wrap(pool, pre, self.augment)
            seed_augment(self.augment)
            self._sets["val"] = self._wrap(val, pre, None)
        if stage in ("test", "predict"):
            test = self.split_set("test")
            if test is None:
                test = self._train_val()[1]
                if not len(test):  # type: ignore[arg-type]
                    raise VitlabError(f"{type(self).__name__} has no test or validation split for {stage}: give a "
                                      "test folder / CSV, or set data.init_args.val_fraction > 0")
                log.warning("%s has no test split: %s runs on the validation split", type(self).__name__, stage)
            self._sets["test"] = self._wrap(test, pre, None)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self._sets[split]
        train = split == "train"
        return DataLoader(ds, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, collate_fn=self.collate_fn,
                          worker_init_fn=seed_augment_worker if train and self.num_workers else None,
                          persistent_workers=self.num_workers > 0,
                          drop_last=train and len(ds) > self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class ClassificationDataModule(VitlabDataModule):
    """Classification data: samples are ``(HWC uint8 image, int label)``, batches ``collate``'s."""

    collate_fn = staticmethod(collate)

    def _wrap(self, samples: Dataset, preprocess: PreprocessCfg, augment) -> Dataset:
        return TransformedDataset(samples, make_sample_transform(preprocess, augment),
                                  ArrayBatches.for_samples(samples, preprocess, augment), augment)


class FashionMNISTDataModule(ClassificationDataModule):
    """Fashion-MNIST (Xiao et al., 2017): 60k train (val split from it) + the official 10k test set.

    ``limit`` keeps the first N images of each split (tests, smoke runs). ``label_fraction`` < 1 keeps that share
    of the training images, the same share of every class, chosen by ``seed`` (label-scarce experiments); the
    validation split (``val_fraction``) is then held out of those labeled images only. The files are looked for in
    ``data_dir``, ``$VITLAB_DATA``, ``./data`` and Debian's folder (``fashion_mnist_root``); ``download: true``
    fetches them, when found nowhere, into ``<data_dir>/fashion-mnist`` (default ``./data/fashion-mnist``, where
    every later reader finds them).
    """

    def __init__(self, data_dir: str | None = None, download: bool = False, limit: int | None = None,
                 label_fraction: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 < label_fraction <= 1.0:
            raise VitlabError(f"data.label_fraction must be in (0, 1], got {label_fraction}")
        self.class_names = list(FMNIST_LABELS)
        self.data_dir, self.download, self.limit, self.label_fraction = data_dir, download, limit, label_fraction
        fashion_mnist_root(data_dir, download)  # fail at config time when the data is missing

    def _split(self, split: str) -> ArrayDataset:
        images, labels = fashion_mnist_arrays(split, self.data_dir, self.download)
        n = self.limit or len(labels)
        images, labels = images[:n], labels[:n]
        if split == "train" and self.label_fraction < 1.0:
            keep = balanced_subset(labels, self.label_fraction, self.seed)
            images, labels = images[keep], labels[keep]
        return ArrayDataset(images, labels)

    def split_set(self, split: str) -> Dataset | None:
        return self._split(split) if split != "val" else None  # val: held out of the 60k training images


class _FileListDataModule(ClassificationDataModule):
    """Train/val/test as (files, labels, class names) triples read at construction (``_use_lists``).

    Subclasses call ``super().__init__(**kwargs)`` and then ``_use_lists``: LightningCLI follows ``**kwargs`` to
    the base class, so every constructor shows only real options in ``--help`` and ``--print_config``."""

    def _use_lists(self, train, val, test, on_bad_image: str) -> None:
        if on_bad_image not in ("skip", "raise"):
            raise VitlabError(f"data.on_bad_image must be 'skip' or 'raise', got {on_bad_image!r}")
        self.class_names = list(train[2])
        for name, split in (("val", val), ("test", test)):
            if split is not None and split[2] != self.class_names:
                raise VitlabError(f"{name} classes {split[2]} differ from the training classes {self.class_names}")
        self._lists = {"train": train, "val": val, "test": test}
        self.on_bad_image = on_bad_image

    def split_set(self, split: str) -> FileListDataset | None:
        lst = self._lists[split]
        return FileListDataset(lst[0], lst[1], self.on_bad_image) if lst else None


class ImageFolderDataModule(_FileListDataModule):
    """Your own images as ``train_dir/<class>/<image>`` (torchvision's layout), optional val/test folders."""

    def __init__(self, train_dir: str, val_dir: str | None = None, test_dir: str | None = None,
                 on_bad_image: str = "skip", unlabeled: bool = False, **kwargs: Any) -> None:
        """
        Args:
            train_dir: the training images, one sub-folder per class.
            val_dir: validation images (default: ``val_fraction`` of ``train_dir`` held out).
            test_dir: test images (default: ``test`` runs on the validation split).
            on_bad_image: ``skip`` (count and warn) or ``raise`` for unreadable files.
            unlabeled: every image under each folder, sub-folders or not, with one label ``image``
                (self-supervised pretraining: ``MAETask``).
        """
        super().__init__(**kwargs)
        scan = scan_unlabeled_folder if unlabeled else scan_image_folder
        self._use_lists(*(scan(d) if d else None for d in (train_dir, val_dir, test_dir)),
                        on_bad_image=on_bad_image)


class CSVDataModule(_FileListDataModule):
    """Your own images listed in CSV files with columns ``path,label`` (label: the class name).

    Relative paths resolve against the CSV's folder."""

    def __init__(self, train_csv: str, val_csv: str | None = None, test_csv: str | None = None,
                 class_names: list[str] | None = None, on_bad_image: str = "skip", **kwargs: Any) -> None:
        """
        Args:
            train_csv: the training list.
            val_csv: validation list (default: ``val_fraction`` of ``train_csv`` held out).
            test_csv: test list (default: ``test`` runs on the validation split).
            class_names: class order (default: the training labels, sorted).
            on_bad_image: ``skip`` (count and warn) or ``raise`` for unreadable files.
        """
        super().__init__(**kwargs)
        train = read_csv_list(train_csv, class_names)
        self._use_lists(train, *(read_csv_list(c, train[2]) if c else None for c in (val_csv, test_csv)),
                        on_bad_image=on_bad_image)
