"""Datasets: ImageFolder splits (from a folder or straight from a .tar.gz, extracted once to a
cache), random crops of photographs, a generated dataset for tests, and WebDataset shards as
the path to ImageNet-scale data; and the training data of each kind behind one protocol
(`TrainingData`), made by one factory (`training_data`).

CIFAR-sized data is decoded once into one uint8 tensor held in memory (45,000 images are
138 MB) and augmented a whole batch at a time: with 2 CPU cores, per-image loader workers
would cost more than the network.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import DEFAULT_EPOCH_SIZE, SHARD_IMAGES, TrainConfig
from .errors import ConfigError, TicaError
from .extras import require
from .io import atomic_write, atomic_write_text

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff"}


def cache_dir() -> Path:
    """$TICA_CACHE, else ~/.cache/tica."""
    return Path(os.environ.get("TICA_CACHE", Path.home() / ".cache" / "tica"))


SOURCE_MARK = ".tica-source"       # in an extracted copy: the archive it came from
STALE_AFTER_S = 3600                # a superseded copy unused this long is removed


def extract_archive(archive: str | Path) -> Path:
    """Extract a .tar(.gz) once into the cache (atomically: a killed extraction leaves no
    half-extracted folder behind) and return the folder.

    A copy is keyed by the archive's path, size and time, so a replaced archive is extracted
    again; the copies of its earlier versions, and their cached splits, are removed once no
    process has asked for them for an hour (each call marks its copy used)."""
    archive = Path(archive)
    stat = archive.stat()
    source = str(archive.resolve())
    key = hashlib.sha256(f"{source}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = archive.name.split('.')[0]
    target = cache_dir() / f"{stem}-{key}"
    if not target.is_dir():
        _extract(archive, source, target)
    try:
        os.utime(target)            # its last use, which keeps it from eviction
    except OSError:
        pass                        # a cache shared read-only: nothing is evicted from it
    _evict_superseded(stem, source, target)
    return target


def _extract(archive: Path, source: str, target: Path) -> None:
    """Extract `archive` into `target` in one pass over the (compressed) stream."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            _extract_members(archive, tar, tmp)
        (tmp / SOURCE_MARK).write_text(source)
        os.replace(tmp, target)
    except tarfile.TarError as exc:          # not a tar archive, or a member the filter refuses
        raise TicaError(f"{archive}: not a .tar(.gz) archive of images tica can extract: "
                        f"{exc}") from None
    except OSError as exc:
        # Another process finished first: renaming onto its non-empty folder fails with
        # ENOTEMPTY (or EEXIST). Use its copy; anything else (a full disk) is the user's to see.
        if not target.is_dir():
            raise TicaError(f"cannot extract {archive} into {target.parent}: "
                            f"{exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_members(archive: Path, tar: tarfile.TarFile, folder: Path) -> None:
    """Extract member by member (a gzip stream is read once, not listed and then read again),
    refusing with a TicaError as soon as the files would no longer fit in the space that was
    free with a margin of a tenth: a small archive that unpacks to more than the disk holds
    stops instead of filling it."""
    room = 0.9 * shutil.disk_usage(folder).free
    size = 0
    for member in tar:
        if member.isfile():
            size += member.size
            if size > room:
                raise TicaError(f"{archive} unpacks to more than {size / 2**30:.1f} GiB; "
                                f"{folder.parent} has {room / 0.9 / 2**30:.1f} GiB free "
                                "(TICA_CACHE names another folder)")
        tar.extract(member, folder, filter="data")


def _evict_superseded(stem: str, source: str, keep: Path) -> None:
    """Remove the other copies of the same archive (earlier versions of it; a copy without a
    source mark is from before marks and counts as one), with their cached split arrays,
    when unused for STALE_AFTER_S."""
    now = time.time()
    for left in keep.parent.glob(".evict-*"):          # an eviction killed half-way
        try:
            if now - left.stat().st_mtime >= STALE_AFTER_S:
                shutil.rmtree(left, ignore_errors=True)
        except OSError:
            continue
    for copy in keep.parent.glob(f"{stem}-" + "[0-9a-f]" * 12):
        if copy == keep or not copy.is_dir():
            continue
        mark = copy / SOURCE_MARK
        try:
            if mark.is_file() and mark.read_text() != source:
                continue
            if now - copy.stat().st_mtime < STALE_AFTER_S:
                continue
            doomed = Path(tempfile.mkdtemp(prefix=f".evict-{copy.name}-", dir=keep.parent))
        except OSError:
            continue
        try:
            os.replace(copy, doomed)         # gone from its name at once, then deleted
        except OSError:                      # another process is evicting it
            shutil.rmtree(doomed, ignore_errors=True)
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        for array in keep.parent.glob(f"{copy.name}-*.npy"):
            array.unlink(missing_ok=True)


@dataclass
class CacheEntry:
    """One thing in the cache: an extracted archive ("archive", with the archive it came
    from), a decoded split ("split"), or a half-done extraction or eviction ("partial"). All
    are derived data that tica makes again when asked; training runs (runs/) are not
    entries and are never cleared."""

    path: Path
    kind: str
    bytes: int
    idle_s: float                    # since its last use (an archive copy: its last lookup)
    source: str | None = None


_CACHE_NAME = re.compile(r"[A-Za-z0-9_.-]+-[0-9a-f]{12}(?P<npy>\.npy)?")


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def cache_entries(folder: Path | None = None) -> list[CacheEntry]:
    """What the cache holds that tica can make again, largest first."""
    folder = folder or cache_dir()
    now, out = time.time(), []
    if not folder.is_dir():
        return out
    for path in folder.iterdir():
        try:
            ours = _CACHE_NAME.fullmatch(path.name)   # nothing else in the folder is touched
            if path.name.startswith((".extract-", ".evict-")) and path.is_dir():
                kind, source = "partial", None
            elif path.is_dir() and (path / SOURCE_MARK).is_file():
                kind, source = "archive", (path / SOURCE_MARK).read_text()
            elif path.is_dir() and ours and not ours["npy"]:
                kind, source = "archive", None        # extracted before copies were marked
            elif path.is_file() and ours and ours["npy"]:
                kind, source = "split", None
            else:
                continue
            out.append(CacheEntry(path, kind, _tree_bytes(path), now - path.stat().st_mtime,
                                  source))
        except OSError:
            continue                                  # removed while being listed
    return sorted(out, key=lambda e: -e.bytes)


def clear_cache(idle_s: float = STALE_AFTER_S, folder: Path | None = None) -> list[CacheEntry]:
    """Remove what the cache holds that tica can make again (extracted archives, decoded
    splits, partial leftovers) and that nothing has used for `idle_s` seconds (0: all of
    it); never training runs. Returns what was removed."""
    removed = []
    for entry in cache_entries(folder):
        if entry.idle_s < idle_s:
            continue
        if entry.path.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            entry.path.unlink(missing_ok=True)
        if not entry.path.exists():
            removed.append(entry)
    return removed


HELD_OUT_SPLITS = ("test", "val")     # CIFAR-10 has a test split, Imagenette a val split


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name (no sub-folders)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_image_folder(data: str | Path) -> bool:
    """Whether `data` is a plain folder of images (e.g. Kodak: any sizes, no labels) rather
    than a class-per-folder data set or its archive."""
    path = Path(data)
    return (path.is_dir() and not any(p.is_dir() for p in path.iterdir())
            and bool(image_files(path)))


def data_name(data: str | Path) -> str:
    """A data set's short name, its file or folder name up to the first '-' or '.':
    cifar10-jpeg.tar.gz -> cifar10, imagenette-224.tar.gz -> imagenette, kodak -> kodak."""
    name = Path(str(data).rstrip("/")).name
    return name.replace(".", "-").split("-")[0] or name


def _data_folder(data: str | Path) -> Path:
    path = Path(data)
    if not path.exists():
        raise TicaError(f"data not found: {path}")
    return extract_archive(path) if path.is_file() else path


def _named_split(path: Path, split: str) -> Path | None:
    for candidate in (path, path / split, *(p / split for p in sorted(path.iterdir()) if p.is_dir())):
        if candidate.name == split and candidate.is_dir():
            return candidate
    return None


def resolve_split(data: str | Path, split: str) -> Path:
    """The ImageFolder root of `split` ("train"/"test"/"val") under a folder or inside an
    archive. Accepts the split folder itself, its parent, or the archive holding either."""
    path = _data_folder(data)
    found = _named_split(path, split)
    if found is not None:
        return found
    if any(p.is_dir() for p in path.iterdir()) and not any(
            _named_split(path, name) for name in ("train", *HELD_OUT_SPLITS)):
        return path            # already a class-per-folder root
    raise TicaError(f"no '{split}' split under {data}")


def held_out_split(data: str | Path) -> str:
    """The name of the held-out split of `data`: "test" or "val", whichever it has ("test"
    for a bare class-per-folder root)."""
    path = _data_folder(data)
    for name in HELD_OUT_SPLITS:
        if _named_split(path, name) is not None:
            return name
    return HELD_OUT_SPLITS[0]


@dataclass
class ImageFolderSplit:
    """All images of a class-per-folder split, decoded to one uint8 tensor (N, 3, H, W)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


def _list_images(root: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not classes:
        raise TicaError(f"{root} has no class folders")
    files, labels = [], []
    for i, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(i)
    return files, labels, classes


def split_files(data: str | Path, split: str = "train"
                ) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """(image files, their labels, the class names) of a split, in load_split's order."""
    return _list_images(resolve_split(data, split))


def split_classes(data: str | Path, split: str = "train") -> tuple[str, ...]:
    """The class names of a split (its folder names, sorted: the label order of load_split)."""
    return _list_images(resolve_split(data, split))[2]


def save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:            # a file object: np.save would append ".npy" to a name
        np.save(f, array)


def spread(n: int, limit: int) -> list[int]:
    """`limit` of n indexes evenly spaced over all of them (i * n // limit): a subset of a
    split listed class by class that holds every class in proportion (every k-th file when
    limit divides n; stepping by n // limit and cutting at `limit` would leave the last
    classes out whenever it does not)."""
    return [i * n // limit for i in range(min(limit, n))]


def load_split(data: str | Path, split: str, limit: int | None = None) -> ImageFolderSplit:
    """Decode a split once and cache it as .npy beside the extracted data (same-size images);
    `limit`: that many images spread over the whole split (`spread`), every class in
    proportion."""
    root = resolve_split(data, split)
    files, labels, classes = _list_images(root)
    if limit is not None and limit < len(files):
        picked = spread(len(files), limit)
        files, labels = [files[i] for i in picked], [labels[i] for i in picked]
    # the files' names, sizes and times: a folder whose images were replaced decodes again
    key = hashlib.sha256("\n".join(f"{f}:{st.st_size}:{st.st_mtime_ns}" for f, st in
                                   ((f, f.stat()) for f in files)).encode()).hexdigest()[:12]
    cached = cache_dir() / f"{_cache_prefix(root)}-{split}-{key}.npy"
    if cached.is_file():
        array = np.load(cached)
        try:
            os.utime(cached)                 # its last use, which `clear_cache` goes by
        except OSError:
            pass
    else:
        array = _decode_all(files)
        atomic_write(cached, lambda tmp: save_npy(tmp, array))   # a temporary name of its own
    images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    return ImageFolderSplit(images, torch.tensor(labels), classes)


def _cache_prefix(root: Path) -> str:
    """The name a split's cached array starts with: the extracted copy it is in, so that the
    array leaves with the copy, else the split folder's parent."""
    try:
        return root.resolve().relative_to(cache_dir().resolve()).parts[0]
    except ValueError:
        return root.parent.name


def _decode_all(files: list[Path]) -> np.ndarray:
    """The split's images as one (N, H, W, 3) uint8 array; TicaError naming the file that is
    not a readable image, or whose size is not the first one's (a split is one size)."""
    if not files:
        raise TicaError("the split holds no images")
    out = None
    for i, f in enumerate(files):
        try:
            with Image.open(f) as img:
                if out is None:
                    out = np.empty((len(files), img.height, img.width, 3), np.uint8)
                if (img.height, img.width) != out.shape[1:3]:
                    raise TicaError(f"{f} is {img.width}x{img.height}, the split's first image "
                                    f"{out.shape[2]}x{out.shape[1]}: a split is of one size "
                                    "(a folder of images of any sizes is read without labels)")
                out[i] = np.asarray(img.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise TicaError(f"{f}: not an image tica can read: {exc}") from None
    return out


def synthetic_split(n: int = 64, size: int = 32, num_classes: int = 10, seed: int = 0
                    ) -> ImageFolderSplit:
    """A learnable toy dataset for tests: each class is a colour with a noisy texture."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    palette = torch.rand(num_classes, 3, 1, 1, generator=g)
    noise = torch.rand(n, 3, size, size, generator=g) * 0.3
    images = ((palette[labels] * 0.7 + noise) * 255).round().clamp(0, 255).to(torch.uint8)
    return ImageFolderSplit(images, labels, tuple(f"class_{i}" for i in range(num_classes)))


def padded_crop(batch: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None
            ) -> torch.Tensor:
    """Random crop with reflect padding and horizontal flip, a whole float batch at once.

    Runs where `batch` is (with a generator of that device): on a GPU nothing waits for the
    host, no index or mask is read back."""
    B, _, H, W = batch.shape
    dev = batch.device
    padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator, device=dev)
    rows = (dy[:, None] + torch.arange(H, device=dev))[:, None, :, None]      # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(W, device=dev))[:, None, None, :]      # (B, 1, 1, W)
    out = padded[torch.arange(B, device=dev)[:, None, None, None],
                 torch.arange(3, device=dev)[None, :, None, None], rows, cols]
    flip = torch.rand(B, generator=generator, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def resized_crop(batch: torch.Tensor, min_area: float = 0.35,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Random resized crop and horizontal flip (DeiT's augmentation, at a milder smallest
    area), a whole float batch at once: each image keeps a crop of min_area..1 of its area
    (log-uniform aspect 3/4..4/3, inside the image), scaled back to the image's size
    (bilinear), mirrored half the time. Where `batch` is, with no read-back."""
    B, C, H, W = batch.shape
    dev = batch.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(B, generator=generator, device=dev)

    area = uniform(min_area, 1.0)
    aspect = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    w = torch.sqrt(area * aspect).clamp(max=1.0)           # the crop's share of each side
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx, cy = (1 - w) * uniform(-1.0, 1.0), (1 - h) * uniform(-1.0, 1.0)   # its centre, in [-1, 1]
    sign = torch.where(torch.rand(B, generator=generator, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3, device=dev, dtype=batch.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [B, C, H, W], align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)


Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]   # (batch, generator) -> batch


def augmenter(kind: str = "crop", min_area: float = 0.35) -> Augment:
    """The training augmentation TrainConfig.augment names, as (batch, generator) -> batch."""
    if kind == "crop":
        return lambda x, g: padded_crop(x, generator=g)
    if kind == "resized":
        return lambda x, g: resized_crop(x, min_area, generator=g)
    raise ConfigError(f"unknown augmentation {kind!r}")


class RandomCrops:
    """Random crops of a folder of photographs, for training a natural-image codec."""

    def __init__(self, folder: str | Path, crop: int = 256) -> None:
        self.files = image_files(folder)
        if not self.files:
            raise TicaError(f"no images in {folder}")
        self.images = [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                       for f in self.files]
        self.crop = crop

    def batch(self, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(size, 3, crop, crop) uint8 crops, flipped at random."""
        out = []
        for i in torch.randint(0, len(self.images), (size,), generator=generator).tolist():
            img = self.images[i]
            H, W = img.shape[1:]
            c = min(self.crop, H, W)
            y = int(torch.randint(0, H - c + 1, (1,), generator=generator))
            x = int(torch.randint(0, W - c + 1, (1,), generator=generator))
            out.append(F.interpolate(img[None, :, y:y + c, x:x + c].float(), size=self.crop)[0]
                       if c < self.crop else img[:, y:y + c, x:x + c].float())
        batch = torch.stack(out)
        flip = torch.rand(size, generator=generator) < 0.5
        batch[flip] = batch[flip].flip(-1)
        return batch.round().to(torch.uint8)


class DeviceCrops:
    """Random crops of photographs held on one device (a GPU): the photos sit in one
    zero-padded uint8 tensor, and a batch of crops is drawn, gathered and flipped there,
    with no host work and no read-back per batch. Photos smaller than the crop are resized
    up once, here. The same distribution as `RandomCrops`, not the same draws."""

    def __init__(self, images: list[torch.Tensor], crop: int, device: str | torch.device) -> None:
        if not images:
            raise TicaError("DeviceCrops needs at least one photo")
        fitted = []
        for img in images:
            h, w = img.shape[1:]
            if min(h, w) < crop:
                s = crop / min(h, w)
                size = (max(crop, round(h * s)), max(crop, round(w * s)))
                img = F.interpolate(img[None].float(), size=size, mode="bilinear",
                                    align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
            fitted.append(img)
        H = max(img.shape[1] for img in fitted)
        W = max(img.shape[2] for img in fitted)
        packed = torch.zeros(len(fitted), 3, H, W, dtype=torch.uint8)
        for i, img in enumerate(fitted):
            packed[i, :, : img.shape[1], : img.shape[2]] = img
        self.device = torch.device(device)
        self.images = packed.to(self.device)
        self.sizes = torch.tensor([img.shape[1:] for img in fitted]).to(self.device)   # (n, 2)
        self.crop = crop

    def batch(self, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(size, 3, crop, crop) uint8 crops on the device, flipped at random."""
        dev, c = self.device, self.crop
        idx = torch.randint(0, len(self.images), (size,), generator=generator, device=dev)
        room = self.sizes[idx] - c + 1                                        # (size, 2)
        corner = (torch.rand(size, 2, generator=generator, device=dev) * room).long()
        ar = torch.arange(c, device=dev)
        rows = (corner[:, 0, None] + ar)[:, None, :, None]
        cols = (corner[:, 1, None] + ar)[:, None, None, :]
        out = self.images[idx[:, None, None, None], torch.arange(3, device=dev)[None, :, None, None],
                          rows, cols]
        flip = torch.rand(size, generator=generator, device=dev) < 0.5
        return torch.where(flip[:, None, None, None], out.flip(-1), out)


# ---- WebDataset shards ---------------------------------------------------------------------

def write_shards(data: str | Path, split: str, out_dir: str | Path,
                 per_shard: int = SHARD_IMAGES) -> list[Path]:
    """Write an ImageFolder split as WebDataset tar shards (`{key}.jpg|png`, `{key}.cls`),
    the layout to put ImageNet-scale data on shared or object storage."""
    wds = require("webdataset", "train", "writing WebDataset shards")

    root = resolve_split(data, split)
    files, labels, classes = _list_images(root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "classes.txt", "\n".join(classes) + "\n")
    order = np.random.default_rng(0).permutation(len(files))     # shuffle across shards
    pattern = str(out_dir / f"{split}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
        for n, i in enumerate(order):
            f = files[i]
            sink.write({"__key__": f"{n:08d}", f.suffix.lower().lstrip("."): f.read_bytes(),
                        "cls": str(labels[i]).encode()})
    atomic_write_text(out_dir / f"{split}.json",
                      json.dumps({"count": len(files), "classes": classes}))
    return sorted(out_dir.glob(f"{split}-*.tar"))


def read_shards(paths: list[str | Path]):
    """Iterate (uint8 image (3, H, W), label) over WebDataset shards."""
    wds = require("webdataset", "train", "reading WebDataset shards")

    for sample in wds.WebDataset([str(p) for p in paths], shardshuffle=False):
        key = next(k for k in sample if k.lstrip(".") in {s.lstrip(".") for s in IMAGE_SUFFIXES})
        img = Image.open(io.BytesIO(sample[key])).convert("RGB")
        yield torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), int(sample["cls"])


# ---- training data: one protocol, one factory ------------------------------------------------

@runtime_checkable
class TrainingData(Protocol):
    """What the training loop draws its batches from. A batch is a function of the step,
    the rank and the generator alone, so a resumed run draws the batches it would have."""

    device: torch.device

    def __len__(self) -> int:
        """Images per epoch (sets the steps of an epoch)."""

    def get(self, step: int, steps_per_epoch: int, batch_size: int, rank: int, world: int,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's share of global batch `step`: float images in [0, 1] (B, 3, H, W)
        and their labels (None for unlabelled photographs)."""

    def to(self, device: torch.device) -> "TrainingData":
        """The data resident on `device` where its kind allows, else itself."""


class SplitData:
    """Labelled 32x32-style data held in memory, augmented a batch at a time. The order of an
    epoch is a permutation seeded by (seed, epoch); rank r takes every world-th image of
    each global batch. `to(device)` makes it resident on a GPU (uint8: CIFAR-10's 45,000
    training images are 138 MB): batches are then gathered and augmented there."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int,
                 augment: Augment | None = None) -> None:
        self.images, self.labels, self.seed = images, labels, seed
        self.augment = augment or augmenter()
        self.device = images.device
        self._perm, self._perm_epoch = torch.empty(0, dtype=torch.long), -1

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> "SplitData":
        return SplitData(self.images.to(device), self.labels.to(device), self.seed, self.augment)

    def batch(self, indices: torch.Tensor, generator: torch.Generator):
        x = self.augment(self.images[indices].float().div_(255), generator)
        return x, self.labels[indices]

    def get(self, step: int, steps_per_epoch: int, batch_size: int, rank: int, world: int,
            generator: torch.Generator):
        epoch = step // steps_per_epoch
        if epoch != self._perm_epoch:
            self._perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(
                self.seed * 7919 + epoch)).to(self.device)      # the same order on any device
            self._perm_epoch = epoch
        offset = (step % steps_per_epoch) * batch_size
        return self.batch(self._perm[offset:offset + batch_size][rank::world], generator)


class CropData:
    """Unlabelled photographs: random crops (codec training, alpha = 0); an epoch is
    `epoch_size` crops."""

    def __init__(self, folder: str, crop: int, epoch_size: int = DEFAULT_EPOCH_SIZE) -> None:
        self.crops, self.epoch_size = RandomCrops(folder, crop), epoch_size
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return self.epoch_size

    def batch(self, indices: torch.Tensor, generator: torch.Generator):
        return self.crops.batch(len(indices), generator).float().div_(255), None

    def get(self, step, steps_per_epoch, batch_size, rank, world, generator):
        return self.batch(torch.arange(max(1, batch_size // world)), generator)

    def to(self, device: torch.device) -> "DeviceCropData":
        return DeviceCropData(DeviceCrops(self.crops.images, self.crops.crop, device), self.epoch_size)


class DeviceCropData:
    """`CropData` resident on a GPU: crops are drawn and gathered there (`DeviceCrops`)."""

    def __init__(self, crops: DeviceCrops, epoch_size: int) -> None:
        self.crops, self.epoch_size, self.device = crops, epoch_size, crops.device

    def __len__(self) -> int:
        return self.epoch_size

    def get(self, step, steps_per_epoch, batch_size, rank, world, generator):
        return self.crops.batch(max(1, batch_size // world), generator).float().div_(255), None

    def to(self, device: torch.device) -> "DeviceCropData":
        return self                                   # made resident once, by CropData.to


class ShardData:
    """WebDataset shards, streamed: each epoch shuffles the shard list with (seed, epoch),
    rank r reads shards r, r + world, ...; a buffer seeded by (seed, epoch, rank) shuffles
    samples. Position is a function of the step, so resume replays the same batches."""

    def __init__(self, shards: list[str], count: int, size: int, seed: int,
                 buffer: int = 2000, augment: Augment | None = None) -> None:
        self.shards, self.count, self.size, self.seed = shards, count, size, seed
        self.augment = augment or augmenter()
        self.buffer = max(1, min(buffer, count))
        self.device = torch.device("cpu")
        self._stream, self._position = None, (-1, -1)

    def __len__(self) -> int:
        return self.count

    def to(self, device: torch.device) -> "ShardData":
        return self                                   # streamed: batches move in the loop

    def _samples(self, epoch: int, rank: int, world: int):
        order = torch.randperm(len(self.shards), generator=torch.Generator().manual_seed(
            self.seed * 7919 + epoch)).tolist()
        mine = [self.shards[i] for i in order][rank::world] or self.shards[rank % len(self.shards):][:1]
        rng = torch.Generator().manual_seed(self.seed * 104729 + epoch * 31 + rank)
        pool: list = []
        while True:                                  # cycle: every rank yields enough
            for sample in read_shards(mine):
                pool.append(sample)
                if len(pool) >= self.buffer:
                    yield pool.pop(int(torch.randint(len(pool), (1,), generator=rng)))

    def _fit(self, img: torch.Tensor) -> torch.Tensor:
        """Resize the shorter side to `size` and centre-crop (augment adds crops and flips)."""
        img = img.float()[None]
        h, w = img.shape[-2:]
        scale = self.size / min(h, w)
        if scale != 1:
            img = F.interpolate(img, size=(max(self.size, round(h * scale)), max(self.size, round(w * scale))),
                                mode="bilinear", antialias=True, align_corners=False)
        h, w = img.shape[-2:]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return img[0, :, top:top + self.size, left:left + self.size]

    def get(self, step, steps_per_epoch, batch_size, rank, world, generator):
        epoch, batch_index = step // steps_per_epoch, step % steps_per_epoch
        if self._position != (epoch, batch_index):
            self._stream = self._samples(epoch, rank, world)
            for _ in range(batch_index * max(1, batch_size // world)):    # replay to the step
                next(self._stream)
        samples = [next(self._stream) for _ in range(max(1, batch_size // world))]
        self._position = (epoch, batch_index + 1)
        x = torch.stack([self._fit(img) for img, _ in samples]).clamp(0, 255).div_(255)
        return self.augment(x, generator), torch.tensor([label for _, label in samples])


def data_kind(data: str | None) -> str:
    """"synthetic", "shards" (a folder of train-*.tar), "photos" (a folder of images) or
    "split" (an ImageFolder folder or archive)."""
    if data is None:
        raise ConfigError("no training data: set TrainConfig.data (tica train --data, or the "
                          "TICA_DATA environment variable)")
    if data == "synthetic":
        return "synthetic"
    path = Path(data)
    if path.is_dir() and any(path.glob("train-*.tar")):
        return "shards"
    if path.is_dir() and not any(p.is_dir() for p in path.iterdir()):
        return "photos"
    return "split"


def training_data(cfg: TrainConfig, img_size: int) -> TrainingData:
    """The training data `cfg.data` names, as the loop draws it, on the CPU."""
    kind = data_kind(cfg.data)
    aug = augmenter(cfg.augment, cfg.min_area)
    if kind == "synthetic":
        split = synthetic_split(n=cfg.train_limit or 256, size=img_size)
        return SplitData(split.images, split.labels, cfg.seed, aug)
    if kind == "shards":
        path = Path(cfg.data)
        try:
            count = int(json.loads((path / "train.json").read_text())["count"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TicaError(f"{path}: its train.json (written with the shards: {{\"count\": "
                            f"images}}) is missing or malformed: {exc}") from None
        return ShardData([str(s) for s in sorted(path.glob("train-*.tar"))], count, img_size,
                         cfg.seed, augment=aug)
    if kind == "photos":
        return CropData(cfg.data, img_size, cfg.epoch_size)
    split = load_split(cfg.data, "train", limit=cfg.train_limit)
    return SplitData(split.images, split.labels, cfg.seed, aug)


def held_out_data(cfg: TrainConfig, img_size: int) -> ImageFolderSplit | None:
    """Held-out images for the epoch-end score: the test split where there is one."""
    kind = data_kind(cfg.data)
    if kind == "synthetic":
        return synthetic_split(n=64, size=img_size, seed=1)
    if kind != "split" or cfg.eval_images <= 0:
        return None
    return load_split(cfg.data, held_out_split(cfg.data), limit=cfg.eval_images)


def on_device(data: TrainingData, device: torch.device) -> TrainingData:
    """Training data resident on an accelerator where its kind allows (in-memory splits and
    photographs); on the CPU the data as it is."""
    return data if device.type == "cpu" else data.to(device)


def batch_generator(data: TrainingData, seed: int) -> torch.Generator:
    """A generator of augmentation draws on the device the data lives on."""
    return torch.Generator(device=data.device).manual_seed(seed)
