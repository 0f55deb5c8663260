"""Training data: folder layouts, corrupt files skipped and counted, deterministic order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from trainer.data.augment import DataAugmentationDINO
from trainer.data.dataset import (
    Batch,
    EpochIndexSampler,
    SafeImageDataset,
    collate_skip_none,
    make_loader,
    make_sampler,
    sample_seed,
)
from trainer.data.images import scan_image_folder


def make_image_folder(
    root: Path,
    classes: dict[str, int],
    size: tuple[int, int] = (20, 24),
    corrupt: int = 0,
    seed: int = 0,
) -> Path:
    """Random-noise JPEGs: ``classes`` maps a class folder ('' = root) to an image count."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i:03d}.jpg")
    first = root / next(iter(classes)) if next(iter(classes)) else root
    for i in range(corrupt):
        (first / f"corrupt{i}.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    return root


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_image_folder_tree_gets_labels_from_sorted_class_names(tmp_path):
    make_image_folder(tmp_path, {"zebra": 2, "ant": 3})
    (tmp_path / "notes.txt").write_text("ignored")
    samples, classes = scan_image_folder(tmp_path)
    assert classes == ["ant", "zebra"]
    assert [label for _, label in samples] == [0, 0, 0, 1, 1]
    assert all(p.suffix == ".jpg" for p, _ in samples)


def test_plain_folder_of_images_is_one_unlabelled_class(tmp_path):
    make_image_folder(tmp_path, {"": 4})
    samples, classes = scan_image_folder(tmp_path)
    assert len(samples) == 4 and {label for _, label in samples} == {0} and len(classes) == 1


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        scan_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_image_folder(tmp_path / "missing")


def test_corrupt_file_gives_none_and_collate_counts_it(tmp_path):
    make_image_folder(tmp_path, {"a": 3}, corrupt=1)
    samples, _ = scan_image_folder(tmp_path)
    dataset = SafeImageDataset(samples, lambda img: torch.zeros(3, 4, 4))
    items = [dataset[i] for i in range(len(dataset))]
    assert sum(it is None for it in items) == 1
    batch = collate_skip_none(items)
    assert batch.skipped == 1 and len(batch) == 3 and batch.images.shape == (3, 3, 4, 4)


def test_corrupt_count_adds_up_through_a_loader(tmp_path):
    make_image_folder(tmp_path, {"a": 5}, corrupt=3)
    samples, _ = scan_image_folder(tmp_path)
    dataset = SafeImageDataset(samples, lambda img: torch.zeros(1))
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate_skip_none)
    batches = list(loader)
    assert sum(b.skipped for b in batches) == 3
    assert sum(len(b) for b in batches) == 5


def test_all_corrupt_batch_is_empty_not_an_error():
    batch = collate_skip_none([None, None])
    assert isinstance(batch, Batch) and len(batch) == 0 and batch.skipped == 2


def test_multicrop_collate_stacks_crop_wise(tmp_path):
    make_image_folder(tmp_path, {"a": 3})
    samples, _ = scan_image_folder(tmp_path)
    aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 3, global_crops_size=16, local_crops_size=8)
    dataset = SafeImageDataset(samples, aug, seed=0)
    batch = collate_skip_none([dataset[(0, i)] for i in range(3)])
    assert [tuple(c.shape) for c in batch.images] == [(3, 3, 16, 16)] * 2 + [(3, 3, 8, 8)] * 3


def test_crops_depend_only_on_seed_epoch_and_index(tmp_path):
    make_image_folder(tmp_path, {"a": 2})
    samples, _ = scan_image_folder(tmp_path)
    aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 2, global_crops_size=16, local_crops_size=8)
    first = SafeImageDataset(samples, aug, seed=7)
    second = SafeImageDataset(samples, aug, seed=7)
    torch.manual_seed(123)  # global RNG state must not matter
    a = first[(3, 1)][0]
    torch.manual_seed(999)
    b = second[(3, 1)][0]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    other_epoch = first[(4, 1)][0]
    assert not all(torch.equal(x, y) for x, y in zip(a, other_epoch, strict=True))
    assert sample_seed(7, 3, 1) != sample_seed(7, 1, 3)


def test_sampler_order_is_a_function_of_seed_and_epoch(tmp_path):
    dataset = list(range(10))
    s1 = EpochIndexSampler(make_sampler(dataset, shuffle=True, seed=5))
    s2 = EpochIndexSampler(make_sampler(dataset, shuffle=True, seed=5))
    s1.set_epoch(2)
    s2.set_epoch(2)
    order = list(s1)
    assert order == list(s2) and {e for e, _ in order} == {2}
    assert sorted(i for _, i in order) == dataset
    s2.set_epoch(3)
    assert [i for _, i in s2] != [i for _, i in order]


def test_distributed_sampler_splits_ranks_without_overlap():
    dataset = list(range(12))
    shards = [set(make_sampler(dataset, True, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert set().union(*shards) == set(dataset) and sum(len(s) for s in shards) == 12


def test_loader_uses_persistent_workers_and_prefetch_only_with_workers():
    dataset = list(range(8))
    with_workers = make_loader(dataset, 2, None, num_workers=2, pin_memory=False, drop_last=True)
    assert (
        with_workers.persistent_workers
        and with_workers.prefetch_factor == 4
        and with_workers.drop_last
    )
    without = make_loader(dataset, 2, None, num_workers=0, pin_memory=False, drop_last=False)
    assert not without.persistent_workers
