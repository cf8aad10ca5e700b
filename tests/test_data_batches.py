"""ArrayBatches: in-memory images cut into whole batches (vitlab.data.datamodules), the same bytes as the per-sample
path (PreprocessCfg.prepare after the augment pipeline, then collate)."""

import albumentations as A
import numpy as np
import pytest
import torch

from tests.conftest import needs_fmnist
from vitlab.data.datamodules import ArrayBatches, FashionMNISTDataModule, TransformedDataset, collate
from vitlab.data.datasets import ArrayDataset
from vitlab.data.transforms import batched_flips, load_pipeline, make_sample_transform, seed_augment_worker
from vitlab.preprocess import PreprocessCfg

GREY28 = PreprocessCfg(input_size=(1, 28, 28), mean=(0.5,), std=(0.5,))


def test_flip_pipelines_batch_and_others_do_not():
    assert batched_flips(load_pipeline("configs/augment/fmnist_flip.yaml")) == [(2, 0.5)]
    assert batched_flips(A.Compose([A.HorizontalFlip(p=1.0), A.VerticalFlip(p=0.3)])) == [(2, 1.0), (1, 0.3)]
    assert batched_flips(load_pipeline("configs/augment/fmnist_shift.yaml")) is None
    assert batched_flips(A.Compose([A.OneOf([A.HorizontalFlip(p=1.0)], p=0.5)])) is None
    assert batched_flips(A.Compose([A.HorizontalFlip(p=1.0)], p=0.5)) is None


@pytest.mark.parametrize("aug", [None, A.Compose([A.HorizontalFlip(p=1.0)]), A.Compose([A.VerticalFlip(p=1.0)]),
                                 A.Compose([A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0)])])
@pytest.mark.parametrize("shape,pre", [((20, 8, 6), PreprocessCfg(input_size=(1, 8, 6), mean=(0.5,), std=(0.5,))),
                                       ((20, 8, 6, 3), PreprocessCfg(input_size=(3, 8, 6)))])
def test_batches_equal_the_per_sample_path(shape, pre, aug):
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    samples = torch.utils.data.Subset(ArrayDataset(images, np.arange(20) % 7), [2, 5, 11, 13, 19])
    batches = ArrayBatches.for_samples(samples, pre, aug)
    transform = make_sample_transform(pre, aug)
    picked = [4, 0, 2]
    expected = collate([(transform(samples[i][0]), samples[i][1]) for i in picked])
    got = collate(batches(picked))  # collate passes a built batch through
    assert torch.equal(got["image"], expected["image"]) and got["image"].is_contiguous()
    assert torch.equal(got["target"], expected["target"]) and got["skipped"] == 0


def test_random_flips_follow_torch_seed_and_p():
    images = np.random.default_rng(0).integers(0, 256, (400, 4, 5), dtype=np.uint8)
    batches = ArrayBatches.for_samples(ArrayDataset(images, np.zeros(400)), GREY28.replace(input_size=(1, 4, 5)),
                                       A.Compose([A.HorizontalFlip(p=0.5)]))
    torch.manual_seed(0)
    a = batches(list(range(400)))["image"][:, 0].numpy()
    torch.manual_seed(0)
    assert np.array_equal(a, batches(list(range(400)))["image"][:, 0].numpy())
    flipped = np.array([np.array_equal(x, y[:, ::-1]) and not np.array_equal(x, y) for x, y in zip(a, images)])
    kept = np.array([np.array_equal(x, y) for x, y in zip(a, images)])
    assert (flipped | kept).all() and 150 < flipped.sum() < 250


def test_what_needs_a_resize_or_channel_change_stays_per_sample():
    images = np.zeros((10, 28, 28), np.uint8)
    assert ArrayBatches.for_samples(ArrayDataset(images, np.zeros(10)), GREY28.replace(input_size=(1, 32, 32)),
                                    None) is None
    assert ArrayBatches.for_samples(ArrayDataset(images, np.zeros(10)), PreprocessCfg(input_size=(3, 28, 28)),
                                    None) is None
    assert ArrayBatches.for_samples(ArrayDataset(images, np.zeros(10)), GREY28,
                                    load_pipeline("configs/augment/fmnist_shift.yaml")) is None


@needs_fmnist
def test_fmnist_loaders_use_whole_batches():
    dm = FashionMNISTDataModule(batch_size=16, limit=200, val_fraction=0.1, preprocess=GREY28,
                                train_augment="configs/augment/fmnist_flip.yaml")
    dm.setup("fit")
    assert dm._sets["train"].batches is not None and dm._sets["val"].batches.flips == []
    val = next(iter(dm.val_dataloader()))
    base = dm._sets["val"].base
    expected = collate([(GREY28.prepare(base[i][0]), base[i][1]) for i in range(16)])
    assert torch.equal(val["image"], expected["image"]) and torch.equal(val["target"], expected["target"])
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (16, 1, 28, 28) and train["image"].dtype == torch.uint8


@needs_fmnist
@pytest.mark.parametrize("workers", [0, 2])
def test_seeded_runs_augment_alike(workers):
    """Albumentations keeps its own random state: the datamodule seeds it from torch's seed (the run's seed in the
    process, torch's per-worker seed in a worker), so the same seed gives the same augmented batches, another seed
    others."""
    def batches(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        dm = FashionMNISTDataModule(batch_size=32, limit=256, val_fraction=0.0, preprocess=GREY28, num_workers=workers,
                                    train_augment="configs/augment/fmnist_dark_background.yaml")
        dm.setup("fit")
        loader = dm.train_dataloader()
        torch.manual_seed(seed)  # the sampler's order, as Lightning's seed_everything leaves it
        return [b["image"] for b, _ in zip(loader, range(4))]

    first, again, other = batches(0), batches(0), batches(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("init, apart", [(seed_augment_worker, True), (None, False)])
def test_workers_draw_their_own_augmentations(init, apart):
    """Two workers given the same images: with seed_augment_worker their textures differ; without it (the fork
    copies one random state into both) they are the same, which is what the seeding fixes."""
    pipeline = load_pipeline("configs/augment/fmnist_dark_background.yaml")
    pipeline.transforms[0].p = 1.0
    images = np.zeros((8, 28, 28), np.uint8)
    images[:, 10:18, 10:18] = 255
    ds = TransformedDataset(ArrayDataset(images, np.zeros(8)), make_sample_transform(GREY28, pipeline),
                            augment=pipeline)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate, worker_init_fn=init)
    b0, b1 = (b["image"] for b in loader)  # batch 0 from worker 0, batch 1 from worker 1
    assert torch.equal(b0, b1) is not apart


def test_ranks_draw_their_own_augmentations(monkeypatch):
    """Under DDP every rank has the run's seed: the rank is mixed in, so ranks do not repeat each other's draws."""
    import torch.distributed as dist

    from vitlab.data.transforms import seed_augment

    image = np.zeros((28, 28, 1), np.uint8)
    draws = {}
    for rank in (0, 1):
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_rank", lambda r=rank: r)
        pipeline = load_pipeline("configs/augment/fmnist_dark_background.yaml")
        pipeline.transforms[0].p = 1.0
        torch.manual_seed(0)
        seed_augment(pipeline)
        draws[rank] = pipeline(image=image)["image"]
    assert not np.array_equal(draws[0], draws[1])
