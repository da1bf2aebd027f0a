"""Datasets: archives extracted once, cached splits, batch augmentation, crops, shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tica.data import (RandomCrops, augment, extract_archive, load_split, read_shards,
                       resolve_split, synthetic_split, write_shards)
from tica.errors import TicaError


def test_archive_is_extracted_once_and_splits_resolve(archive):
    first = extract_archive(archive)
    assert extract_archive(archive) == first
    assert resolve_split(archive, "train") == first / "data" / "train"
    assert resolve_split(first / "data", "test").name == "test"
    assert not list(first.parent.glob(".extract-*"))
    with pytest.raises(TicaError):
        resolve_split(archive.parent / "missing.tar.gz", "train")


def test_concurrent_extraction_uses_the_winners_copy(archive, monkeypatch):
    """Two processes extracting the same archive: the one that finishes second finds the
    target already there (rename onto a non-empty folder fails with ENOTEMPTY) and uses it."""
    import tarfile
    real_extract = tarfile.TarFile.extractall

    def extract_while_another_process_wins(self, path, *args, **kwargs):
        real_extract(self, path, *args, **kwargs)
        monkeypatch.setattr(tarfile.TarFile, "extractall", real_extract)
        extract_archive(archive)                     # the other process, finishing first

    monkeypatch.setattr(tarfile.TarFile, "extractall", extract_while_another_process_wins)
    target = extract_archive(archive)
    assert sorted(p.name for p in (target / "data" / "train").iterdir()) == ["a", "b"]
    assert not list(target.parent.glob(".extract-*"))


def test_split_is_decoded_and_cached(archive):
    split = load_split(archive, "train")
    assert split.images.shape == (6, 3, 32, 32) and split.images.dtype == torch.uint8
    assert split.classes == ("a", "b") and split.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert split.images[0, 0].float().mean() == 255 and split.images[3, 2].float().mean() == 255
    cached = list(Path(archive.parent / "cache").glob("*.npy"))
    assert len(cached) == 1
    again = load_split(archive, "train")
    assert torch.equal(again.images, split.images)
    assert len(load_split(archive, "test", limit=2)) == 2


def test_augment_crops_and_flips_deterministically():
    batch = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    a = augment(batch, pad=2, generator=torch.Generator().manual_seed(0))
    b = augment(batch, pad=2, generator=torch.Generator().manual_seed(0))
    assert a.shape == batch.shape and torch.equal(a, b)
    # with no padding, augmentation can only flip
    c = augment(batch, pad=0, generator=torch.Generator().manual_seed(1))
    for img, orig in zip(c, batch):
        assert torch.equal(img, orig) or torch.equal(img, orig.flip(-1))


def test_random_crops_of_photos(tmp_path):
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
    crops = RandomCrops(tmp_path, crop=32).batch(5, torch.Generator().manual_seed(0))
    assert crops.shape == (5, 3, 32, 32) and crops.dtype == torch.uint8
    small = RandomCrops(tmp_path, crop=64).batch(2, torch.Generator().manual_seed(0))
    assert small.shape == (2, 3, 64, 64)             # smaller photos are resized up


def test_synthetic_split_is_learnable_shape():
    split = synthetic_split(n=20, size=16, num_classes=4)
    assert split.images.shape == (20, 3, 16, 16) and set(split.labels.tolist()) == {0, 1, 2, 3}


def test_webdataset_shards_round_trip(archive, tmp_path):
    shards = write_shards(archive, "train", tmp_path / "shards", per_shard=4)
    assert len(shards) == 2
    samples = list(read_shards(shards))
    assert len(samples) == 6
    assert sorted(label for _, label in samples) == [0, 0, 0, 1, 1, 1]
    for img, label in samples:
        assert img.shape == (3, 32, 32)
        assert img[2 if label else 0].float().mean() == 255
    assert (tmp_path / "shards" / "classes.txt").read_text().split() == ["a", "b"]


def test_the_held_out_split_is_test_or_val(tmp_path):
    """CIFAR-10 holds out `test`, Imagenette `val`: evaluation finds whichever there is."""
    from tica.data import held_out_split, load_split, resolve_split
    for held_out in ("test", "val"):
        root = tmp_path / f"with-{held_out}" / "imagenette"
        for split in ("train", held_out):
            for label in ("x", "y"):
                (root / split / label).mkdir(parents=True)
                Image.new("RGB", (8, 8), (9, 9, 9)).save(root / split / label / "0.png")
        data = tmp_path / f"with-{held_out}"
        assert held_out_split(data) == held_out
        assert resolve_split(data, held_out) == root / held_out
        assert load_split(data, held_out).classes == ("x", "y")
    with pytest.raises(TicaError, match="no 'test' split"):
        resolve_split(tmp_path / "with-val", "test")  # not the parent taken for a class folder
