"""The data directory: CIFAR-10 arrays, frost overlays and checkpoints, located and checked.

Layout (``DYNBN_DATA`` or ``--data-dir``; default ``~/.cache/dynbn/data``)::

    cifar10/train.npz, cifar10/test.npz   uint8 images (N, 32, 32, 3) RGB + int64 labels
    frost/frost1.png .. frost6.jpg        overlays for the frost corruption
    models/resnet{20,32,44,56}-*.th       pretrained CIFAR ResNets (akamaster)

``fetch()`` fills it for users with internet: the official CIFAR-10 archive through
torchvision (lossless, unlike the JPEG-decoded copy some mirrors ship), the checkpoints
and frost overlays from their public URLs, every download checked against its sha256.
``load_images`` reads a user's own images (a folder or an npz) for fitting a bundle.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ENV_VAR = "DYNBN_DATA"
DEFAULT_DIR = Path("~/.cache/dynbn/data")
_log = logging.getLogger(__name__)

IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "bmp", "webp")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/d5489e8995e81e91ce6b1d69dcc98ad579b0b153/pretrained_models/"
_HENDRYCKS = "https://github.com/hendrycks/robustness/raw/8190fe329f5f072a06e3a2aea02bb5dda69aed9f/ImageNet-C/create_c/"

# file name -> (url, sha256)
CHECKPOINTS = {
    "resnet20-12fca82f.th": (_AKAMASTER + "resnet20-12fca82f.th", "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
    "resnet32-d509ac18.th": (_AKAMASTER + "resnet32-d509ac18.th", "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
    "resnet44-014dd654.th": (_AKAMASTER + "resnet44-014dd654.th", "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
    "resnet56-4bfd9763.th": (_AKAMASTER + "resnet56-4bfd9763.th", "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
}
FROST = {
    "frost1.png": "ff9f907860bd7a835d459e32f9d588062b7f61ee267343cc7222b56753a14755",
    "frost2.png": "fe211a89b336999c207a852ce05818d4545d0b57c5beadd824b4cc9d9a9b6137",
    "frost3.png": "2d0d50b4a9bb213f38b024ef7768731bb83cc08d2f26b5766bbc167cdfa0e504",
    "frost4.jpg": "3f8b91ca1a9fa7167b09e773da53f5ae60d0a1fd88f02a783f6e328a72887f6e",
    "frost5.jpg": "5fc6a19df4a429ba68abdcc8f8a4278d4c9f81c9ccafd2c92ab0c8cf8992ebd2",
    "frost6.jpg": "1f92b2f48408748085b68dd81d816ef239f42cef3029c25d041fcb6760fb4f25",
}


class DataError(RuntimeError):
    """A data file is missing or damaged; the message names the file and the fix."""


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """Resolve the data directory: explicit argument, then ``$DYNBN_DATA``, then the cache default."""
    chosen = path or os.environ.get(ENV_VAR) or DEFAULT_DIR
    return Path(chosen).expanduser()


def _missing(path: Path, what: str) -> DataError:
    return DataError(
        f"{what} not found: {path}. Point {ENV_VAR} (or --data-dir) at a data directory "
        f"holding cifar10/, frost/ and models/, or fill one with `dynbn data fetch`."
    )


@dataclass(frozen=True)
class Split:
    """Images and labels: uint8 (N, H, W, 3) RGB and int64 (N,); -1 marks an unknown label (``load_images``)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None, seed: int) -> "Split":
        """A seeded random subset of n rows (all rows, shuffled, when n is None)."""
        order = np.random.default_rng(seed).permutation(len(self))
        if n is not None:
            order = order[:n]
        return Split(self.images[order], self.labels[order])


def load_cifar10(split: str, root: str | os.PathLike | None = None) -> Split:
    """Load ``cifar10/{split}.npz`` and check its arrays; errors name the file and the problem."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = data_dir(root) / "cifar10" / f"{split}.npz"
    if not path.is_file():
        raise _missing(path, f"CIFAR-10 {split} split")
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is damaged or not a CIFAR-10 npz ({exc}); re-create it with `dynbn data fetch`.") from exc
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f"{path}: 'images' must be uint8 (N, 32, 32, 3), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: 'labels' must be (N,) in 0..9 matching images, got {labels.shape}")
    return Split(images, labels.astype(np.int64))


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) images to (N, size, size, 3) by area interpolation (returned as is when already that size)."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, image in enumerate(images):
        out[i] = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return out


def load_images(source: str | os.PathLike, size: int) -> Split:
    """A user's images as a Split of ``size x size`` RGB frames: a folder of image files or an ``.npz``.

    A folder: every png/jpg/jpeg/bmp/webp file in it (not its sub-folders), sorted by file name,
    each squashed to ``size x size`` by area interpolation; labels unknown (-1). An ``.npz``:
    ``images`` uint8 (N, H, W, 3) RGB, resized if needed, and optional ``labels`` (N,) integers
    (-1 for unknown; all unknown when absent). Errors name the file and the problem.
    """
    path = Path(source)
    if path.is_dir():
        return _load_folder(path, size)
    if path.suffix == ".npz" and path.is_file():
        return _load_npz(path, size)
    raise DataError(f"image source not found or not supported: {path}; give a folder of "
                    f"{'/'.join(IMAGE_SUFFIXES)} files or an .npz with 'images' (N, H, W, 3) uint8")


def _load_folder(path: Path, size: int) -> Split:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path.name}: no {'/'.join(IMAGE_SUFFIXES)} files in the folder (sub-folders are not read)")
    images = np.empty((len(files), size, size, 3), np.uint8)
    for i, file in enumerate(files):
        bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)  # grey and palette images come back as 3 channels
        if bgr is None:
            raise DataError(f"{file.name}: not a readable image (damaged, or not the format its name says); "
                            "remove it or save it again")
        images[i] = cv2.resize(bgr[..., ::-1], (size, size), interpolation=cv2.INTER_AREA)  # BGR -> RGB
    return Split(images, np.full(len(files), -1, np.int64))


def _load_npz(path: Path, size: int) -> Split:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz.files:
                raise DataError(f"{path.name}: no 'images' array (it holds {npz.files}); save images=(N, H, W, 3) uint8")
            images = npz["images"]
            labels = npz["labels"] if "labels" in npz.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path.name} is damaged or not an npz of arrays ({exc}); save it again with np.savez") from exc
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or not len(images):
        raise DataError(f"{path.name}: 'images' must be uint8 (N, H, W, 3) RGB, got {images.dtype} {images.shape}")
    if labels is None:
        labels = np.full(len(images), -1, np.int64)
    elif labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < -1:
        raise DataError(f"{path.name}: 'labels' must be (N,) integers >= -1 (-1: unknown) matching images, "
                        f"got {labels.dtype} {labels.shape}")
    return Split(resize(images, size), labels.astype(np.int64))


def frost_dir(root: str | os.PathLike | None = None) -> Path:
    """The frost overlay folder (checked to exist)."""
    path = data_dir(root) / "frost"
    if not path.is_dir():
        raise _missing(path, "frost overlay folder")
    return path


def sha256(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _NotDownloaded(Exception):
    """One file ``fetch`` could not download: its URL, where it goes, and the network error."""

    def __init__(self, url: str, dest: Path, reason: OSError) -> None:
        super().__init__(url, dest, reason)
        self.url, self.dest, self.reason = url, dest, reason


def _download(url: str, dest: Path, expected: str) -> None:
    if dest.is_file() and sha256(dest) == expected:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    _log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:  # noqa: S310 - fixed https URLs
            shutil.copyfileobj(response, out)
    except OSError as exc:  # urllib's URLError and HTTPError included
        tmp.unlink(missing_ok=True)
        raise _NotDownloaded(url, dest, exc) from exc
    got = sha256(tmp)
    if got != expected:
        tmp.unlink()
        raise DataError(f"{url}: sha256 {got} does not match the expected {expected}")
    tmp.replace(dest)


def _fetch_cifar10(root: Path) -> None:
    """Write cifar10/{train,test}.npz from the official archive (torchvision checks its md5)."""
    from torchvision.datasets import CIFAR10

    cache = root / "cifar10" / "download"
    for split, train in (("train", True), ("test", False)):
        out = root / "cifar10" / f"{split}.npz"
        if out.is_file():
            continue
        try:
            ds = CIFAR10(str(cache), train=train, download=True)
        except OSError as exc:
            raise _NotDownloaded(CIFAR10.url, cache / CIFAR10.filename, exc) from exc
        np.savez_compressed(out, images=np.asarray(ds.data, np.uint8), labels=np.asarray(ds.targets, np.int64))
        _log.info("wrote %s (%d images)", out, len(ds.targets))


def fetch(root: str | os.PathLike | None = None) -> Path:
    """Fill the data directory from the public sources; files already present and valid are kept.

    Files that cannot be downloaded (no network) are skipped, then named in one DataError: each URL,
    the path it belongs at, and how to place it by hand.
    """
    base = data_dir(root)
    wanted = [(url, base / "models" / name, digest) for name, (url, digest) in CHECKPOINTS.items()]
    wanted += [(_HENDRYCKS + name, base / "frost" / name, digest) for name, digest in FROST.items()]
    failed = []
    for url, dest, digest in wanted:
        try:
            _download(url, dest, digest)
        except _NotDownloaded as exc:
            failed.append(exc)
    try:
        _fetch_cifar10(base)
    except _NotDownloaded as exc:
        failed.append(exc)
    if failed:
        files = "\n".join(f"  {f.url}\n    -> {f.dest}" for f in failed)
        reasons = "; ".join(sorted({str(f.reason) for f in failed}))
        raise DataError(f"could not download {len(failed)} file(s) ({reasons}):\n{files}\n"
                        "On a machine with network, download each URL and copy the file to the path under it, "
                        "then run `dynbn data fetch` again (it checks each file and unpacks CIFAR-10); or point "
                        f"{ENV_VAR} (or --data-dir) at an existing data folder.")
    return base


def verify(root: str | os.PathLike | None = None) -> list[str]:
    """Check every expected file; return one line per problem (empty when all is well)."""
    base = data_dir(root)
    problems = []
    expected = [("models", n, d) for n, (_, d) in CHECKPOINTS.items()] + [("frost", n, d) for n, d in FROST.items()]
    for folder, name, digest in expected:
        path = base / folder / name
        if not path.is_file():
            problems.append(f"missing: {path}")
        elif sha256(path) != digest:
            problems.append(f"damaged (sha256 mismatch): {path}")
    for split in ("train", "test"):
        try:
            load_cifar10(split, base)
        except DataError as exc:
            problems.append(str(exc))
    return problems
