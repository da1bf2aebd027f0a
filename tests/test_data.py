"""Datasets: archives extracted once, cached splits, batch augmentation, crops, shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tica.data import (RandomCrops, extract_archive, load_split, padded_crop, read_shards,
                       resolve_split, synthetic_split, write_shards)
from tica.errors import ConfigError, TicaError


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
    import tica.data
    real_extract = tica.data._extract_members

    def extract_while_another_process_wins(*args):
        real_extract(*args)
        monkeypatch.setattr(tica.data, "_extract_members", real_extract)
        extract_archive(archive)                     # the other process, finishing first

    monkeypatch.setattr(tica.data, "_extract_members", extract_while_another_process_wins)
    target = extract_archive(archive)
    assert sorted(p.name for p in (target / "data" / "train").iterdir()) == ["a", "b"]
    assert not list(target.parent.glob(".extract-*"))


def test_a_replaced_archive_evicts_its_old_copy_once_unused(archive, tmp_path):
    """A new version of an archive is extracted again; the old version's copy and its cached
    split arrays go once unused for an hour; another archive's copy of the same name stays,
    and so does a superseded copy in use."""
    import os
    import time
    from tica.data import STALE_AFTER_S
    old = extract_archive(archive)
    load_split(archive, "test")
    cache = old.parent
    assert [p.name for p in cache.glob("*.npy")][0].startswith(old.name + "-test-")
    other = tmp_path / "elsewhere" / archive.name                # same name, another archive
    other.parent.mkdir()
    other.write_bytes(archive.read_bytes())
    elsewhere = extract_archive(other)
    assert elsewhere != old
    long_ago = time.time() - STALE_AFTER_S - 60
    killed = cache / ".evict-x-1"                                 # an eviction cut short
    (killed / "data").mkdir(parents=True)
    for copy in (old, elsewhere, killed):
        os.utime(copy, (long_ago, long_ago))
    os.utime(archive, (long_ago, long_ago))                       # the archive replaced
    new = extract_archive(archive)
    assert new != old and not old.exists() and elsewhere.is_dir() and not killed.exists()
    assert not list(cache.glob(".evict-*"))
    assert not list(cache.glob(old.name + "-*.npy"))
    os.utime(archive)                                             # replaced again: the copy
    newest = extract_archive(archive)                             # just used stays
    assert newest != new and new.is_dir()
    assert sorted(p.name for p in (newest / "data" / "test").iterdir()) == ["a", "b"]


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


def test_an_archive_tica_cannot_extract_is_a_typed_error(tmp_path, monkeypatch):
    """Not a tar, a member that escapes the folder, more than the disk holds: one TicaError
    each, nothing left in the cache."""
    import io
    import shutil
    import tarfile
    from collections import namedtuple
    monkeypatch.setenv("TICA_CACHE", str(tmp_path / "cache"))
    zipped = tmp_path / "data.zip"
    zipped.write_bytes(b"PK\x03\x04 not a tar at all")
    with pytest.raises(TicaError, match="not a .tar"):
        load_split(zipped, "train")
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        member = tarfile.TarInfo("../../outside.txt")
        member.size = 2
        tar.addfile(member, io.BytesIO(b"hi"))
    with pytest.raises(TicaError, match="not a .tar"):
        extract_archive(evil)
    assert not (tmp_path / "outside.txt").exists()
    big = tmp_path / "big.tar.gz"
    with tarfile.open(big, "w:gz") as tar:
        member = tarfile.TarInfo("data/train/a/0.bin")
        member.size = 1 << 20
        tar.addfile(member, io.BytesIO(bytes(1 << 20)))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 0, 1 << 20))
    with pytest.raises(TicaError, match="unpacks to"):
        extract_archive(big)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_a_split_with_a_bad_or_odd_sized_image_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TICA_CACHE", str(tmp_path / "cache"))
    for name in ("a", "b"):
        (tmp_path / "test" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "test" / name / "0.png")
    Image.new("RGB", (9, 8)).save(tmp_path / "test" / "b" / "1.png")
    with pytest.raises(TicaError, match="1.png is 9x8, the split's first image 8x8"):
        load_split(tmp_path, "test")
    (tmp_path / "test" / "b" / "1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(TicaError, match="1.png: not an image tica can read"):
        load_split(tmp_path, "test")
    (tmp_path / "test" / "b" / "1.png").unlink()
    assert load_split(tmp_path, "test").labels.tolist() == [0, 1]
    Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "test" / "a" / "0.png")  # replaced
    assert load_split(tmp_path, "test").images[0, 0].float().mean() == 200   # not the cache's


def test_a_limited_split_holds_every_class_in_proportion(tmp_path, monkeypatch):
    """--limit on a split listed class by class: images spread over the whole split. 13
    images in classes of 5, 4 and 4, five of them: two, two and one (stepping by 13 // 5 and
    cutting at five left the last class out, as 1,000 of Imagenette's 3,925 left two of ten);
    where the limit divides the count, every k-th image, as before."""
    from tica.data import spread
    monkeypatch.setenv("TICA_CACHE", str(tmp_path / "cache"))
    for name, count in (("a", 5), ("b", 4), ("c", 4)):
        (tmp_path / "test" / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "test" / name / f"{i}.png")
    split = load_split(tmp_path, "test", limit=5)
    assert split.labels.tolist() == [0, 0, 1, 1, 2]
    assert len(load_split(tmp_path, "test", limit=99)) == 13
    assert spread(10000, 500) == list(range(0, 10000, 20))
    for n, limit in ((3925, 1000), (10000, 2000), (7, 7), (5, 3)):
        picked = spread(n, limit)
        assert len(set(picked)) == len(picked) == min(limit, n) and picked == sorted(picked)
        assert picked[-1] >= n - n // limit - 1                     # reaches the last class


def test_two_loaders_caching_one_split_at_once_both_succeed(archive, monkeypatch):
    # a second process that decodes and caches the same split while the first is writing
    # (two evaluations started together) once renamed the first one's temporary file away
    import tica.data as data

    save, nested = data.save_npy, {}

    def save_while_another_loads(path, array):
        if not nested:
            nested["started"] = True
            nested["split"] = load_split(archive, "test")   # the other loader, start to end
        save(path, array)

    monkeypatch.setattr(data, "save_npy", save_while_another_loads)
    split = load_split(archive, "test")
    assert torch.equal(split.images, nested["split"].images)
    cache = Path(archive.parent / "cache")
    assert not [p.name for p in cache.iterdir() if "tmp" in p.name]    # no stray temporaries


def test_augment_crops_and_flips_deterministically():
    batch = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    a = padded_crop(batch, pad=2, generator=torch.Generator().manual_seed(0))
    b = padded_crop(batch, pad=2, generator=torch.Generator().manual_seed(0))
    assert a.shape == batch.shape and torch.equal(a, b)
    # with no padding, augmentation can only flip
    c = padded_crop(batch, pad=0, generator=torch.Generator().manual_seed(1))
    for img, orig in zip(c, batch):
        assert torch.equal(img, orig) or torch.equal(img, orig.flip(-1))


def test_resized_crops_keep_the_asked_share_of_each_image_and_flip_half():
    """augment="resized": on images whose channels hold their own x and y coordinates, every
    output is one crop inside the image (coordinates monotone along each axis), of at
    least min_area of it and at most all of it, mirrored for about half the images; the
    same generator gives the same batch, and the training data applies it."""
    from tica.config import TrainConfig
    from tica.data import augmenter, resized_crop, training_data
    B, H, W, min_area = 256, 48, 64, 0.35
    xs = torch.linspace(0, 1, W).expand(H, W)
    ys = torch.linspace(0, 1, H)[:, None].expand(H, W)
    batch = torch.stack([xs, ys, xs * ys])[None].repeat(B, 1, 1, 1)
    out = resized_crop(batch, min_area, generator=torch.Generator().manual_seed(0))
    again = augmenter("resized", min_area)(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and torch.equal(out, again)
    x_span = out[:, 0, :, -1] - out[:, 0, :, 0]              # per row: right edge - left edge
    y_span = out[:, 1, -1, :] - out[:, 1, 0, :]
    assert torch.allclose(x_span, x_span[:, :1], atol=1e-5)  # the same span on every row
    steps = out[:, 0, 0, 1:] - out[:, 0, 0, :-1]
    flipped = x_span[:, 0] < 0
    assert torch.all(torch.where(flipped[:, None], steps <= 1e-6, steps >= -1e-6))
    assert (y_span > 0).all() and 0.35 < flipped.float().mean() < 0.65
    # the crop's share of the image: the spans of its pixel centres, widened by a pixel
    area = (x_span[:, 0].abs() * W / (W - 1)) * (y_span[:, 0] * H / (H - 1))
    assert area.min() > 0.95 * min_area and area.max() <= 1.0 + 1e-4
    assert (area < 0.6).any() and (area > 0.85).any()        # the whole range is drawn
    assert out.min() >= 0 and out.max() <= 1
    cfg = TrainConfig(data="synthetic", train_limit=16, augment="resized", min_area=0.5)
    data = training_data(cfg, 16)
    x, labels = data.get(0, 4, 4, 0, 1, torch.Generator().manual_seed(3))
    expect = resized_crop(data.images[data._perm[:4]].float() / 255, 0.5,
                          generator=torch.Generator().manual_seed(3))
    assert torch.allclose(x, expect) and data.to(torch.device("cpu")).augment is data.augment
    with pytest.raises(ConfigError):
        TrainConfig(augment="rotate")
    with pytest.raises(ConfigError):
        TrainConfig(augment="resized", min_area=0)


def test_random_crops_of_photos(tmp_path):
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
    crops = RandomCrops(tmp_path, crop=32).batch(5, torch.Generator().manual_seed(0))
    assert crops.shape == (5, 3, 32, 32) and crops.dtype == torch.uint8
    small = RandomCrops(tmp_path, crop=64).batch(2, torch.Generator().manual_seed(0))
    assert small.shape == (2, 3, 64, 64)             # smaller photos are resized up


def test_synthetic_split_is_learnable():
    """Each class is told apart by its mean colour: class centroids taken from some images
    classify every other image (nearest centroid) without a mistake."""
    split = synthetic_split(n=80, size=16, num_classes=4)
    assert split.images.shape == (80, 3, 16, 16) and set(split.labels.tolist()) == {0, 1, 2, 3}
    colour = split.images.float().mean(dim=(2, 3))                       # (N, 3)
    fit, held = torch.arange(80) < 40, torch.arange(80) >= 40
    centroids = torch.stack([colour[fit & (split.labels == c)].mean(0) for c in range(4)])
    predicted = torch.cdist(colour[held], centroids).argmin(1)
    assert torch.equal(predicted, split.labels[held])
    gaps = torch.cdist(centroids, centroids) + torch.eye(4) * 1e9
    spread = (colour - centroids[split.labels]).norm(dim=1).max()
    assert gaps.min() > 2 * spread                                        # classes lie apart


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
    from tica.config import TrainConfig
    from tica.data import training_data
    (tmp_path / "shards" / "train.json").unlink()          # shards copied without it
    with pytest.raises(TicaError, match="train.json .* missing or malformed"):
        training_data(TrainConfig(data=str(tmp_path / "shards")), 32)


def test_train_refuses_a_set_without_a_value(tmp_path, capsys):
    from tica.cli import main
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--data", "synthetic",
                 "--set", "depth"]) == 1
    assert "--set depth: give FIELD=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


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


# ---- training data: one protocol, one factory --------------------------------------------

def _photos(folder: Path, n: int = 2) -> Path:
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
    return folder


def test_the_factory_makes_each_kind_of_training_data(archive, tmp_path):
    from tica.config import TrainConfig
    from tica.data import (CropData, ShardData, SplitData, TrainingData, data_kind,
                           training_data)
    from tica.errors import ConfigError
    write_shards(archive, "train", tmp_path / "shards", per_shard=4)
    photos = str(_photos(tmp_path / "photos"))
    cases = {"synthetic": (SplitData, 8), str(archive): (SplitData, 6),
             str(tmp_path / "shards"): (ShardData, 6), photos: (CropData, 37)}
    for data, (cls, length) in cases.items():
        cfg = TrainConfig(data=data, train_limit=8, epoch_size=37, seed=1)
        made = training_data(cfg, img_size=32)
        assert type(made) is cls and isinstance(made, TrainingData), data
        assert len(made) == length, data
        x, labels = made.get(0, 1, 4, 0, 1, torch.Generator().manual_seed(0))
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
        assert 0 <= float(x.min()) and float(x.max()) <= 1
        assert (labels is None) == (cls is CropData)
        again, _ = training_data(cfg, 32).get(0, 1, 4, 0, 1, torch.Generator().manual_seed(0))
        assert torch.equal(x, again)                                      # a function of the step
    assert [data_kind(d) for d in cases] == ["synthetic", "split", "shards", "photos"]
    with pytest.raises(ConfigError, match="TICA_DATA"):
        training_data(TrainConfig(), 32)                                  # no data named


def test_ranks_share_out_each_global_batch():
    from tica.config import TrainConfig
    from tica.data import training_data
    data = training_data(TrainConfig(data="synthetic", train_limit=64), 32)
    g = torch.Generator().manual_seed(0)
    _, whole = data.get(3, 4, 16, 0, 1, g)
    _, first = data.get(3, 4, 16, 0, 2, g)
    _, second = data.get(3, 4, 16, 1, 2, g)
    assert len(first) == len(second) == 8
    assert sorted(torch.cat([first, second]).tolist()) == sorted(whole.tolist())
    # each epoch has its own order
    assert not torch.equal(data.get(4, 4, 16, 0, 1, g)[1], data.get(0, 4, 16, 0, 1, g)[1])


def test_the_cache_lists_and_clears_only_what_tica_can_make_again(archive, tmp_path, capsys):
    """`tica cache` lists the extracted archives and decoded splits; `--clear` removes those
    unused for an hour, `--all` the rest; training runs and anything not named as tica names
    its files stay."""
    import json
    import os
    import time
    from tica.cli import main
    from tica.data import cache_entries, clear_cache
    copy = extract_archive(archive)
    load_split(archive, "test")
    cache = copy.parent
    (cache / "runs" / "a-run").mkdir(parents=True)
    (cache / "runs" / "a-run" / "model.safetensors").write_bytes(b"weights")
    (cache / "mystuff").mkdir()
    (cache / "notes-0123456789ab.txt").write_text("not ours")
    listed = {e.path.name: e for e in cache_entries()}
    array = next(n for n in listed if n.endswith(".npy"))
    assert {e.kind for e in listed.values()} == {"archive", "split"} and len(listed) == 2
    assert listed[copy.name].source == str(archive.resolve()) and listed[copy.name].bytes > 0
    long_ago = time.time() - 7200
    os.utime(cache / array, (long_ago, long_ago))
    load_split(archive, "test")                            # a use marks it used again
    assert not clear_cache()
    os.utime(cache / array, (long_ago, long_ago))
    assert [e.path.name for e in clear_cache()] == [array]
    assert main(["cache", "--json"]) == 0
    assert [e["kind"] for e in json.loads(capsys.readouterr().out)["entries"]] == ["archive"]
    assert main(["cache", "--clear", "--all"]) == 0
    assert "removed 1 item(s)" in capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == ["mystuff", "notes-0123456789ab.txt",
                                                       "runs"]
    assert (cache / "runs" / "a-run" / "model.safetensors").read_bytes() == b"weights"
