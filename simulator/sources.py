"""Frame sources: clean uint8 frames per camera, with labels when they are known; ``make_source`` picks a scenario's.

``CifarSource``: the CIFAR-10 test split, each camera walking its own seeded permutation
(or, with a non-iid label order, its own ``dynbn.labels.sequence``: Dirichlet-ordered, or
video runs with per-frame jitter); labels are the dataset's. ``VideoSource``: a video file decoded with PyAV, frames resized
to the model's input; a video has no labels, so the source labels each frame with the
model's prediction on that frame *uncorrupted*, and accuracy becomes agreement with the
clean prediction (``label_kind = "model"``, stated in the report).
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from dynbn import data
from dynbn import labels as label_order
from dynbn.models import build_model
from dynbn.spectrum import to_tensor
from streamer.artifacts import artifacts_dir
from streamer.scenario import Scenario


class CifarSource:
    """CIFAR-10 frames; camera c shows images in the order of permutation (seed, c).

    With a non-iid ``labels`` order camera c walks ``dynbn.labels.sequence`` seeded (seed, c)
    instead: one Dirichlet-ordered pass, or (video:L) a permutation with each image held for L
    frames, every frame jittered by draws seeded (seed, c, 1); the walk repeats after a pass.
    """

    label_kind = "cifar10"

    def __init__(self, split: str = "test", seed: int = 0, root=None, labels: str = "iid") -> None:
        s = data.load_cifar10(split, root)
        self.images, self.labels, self.seed = s.images, s.labels, seed
        self.order = label_order.parse_order(labels)
        self._orders: dict[int, np.ndarray] = {}
        self._jitter: dict[int, label_order.Jitter] = {}

    def _walk(self, camera: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, camera])
        if self.order.iid:
            return rng.permutation(len(self.labels))
        return label_order.sequence(self.labels, len(self.labels) * self.order.hold, self.order, rng)

    def take(self, camera: int, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``start .. start+n`` of a camera: uint8 (n, 32, 32, 3) and labels (n,)."""
        order = self._orders.get(camera)
        if order is None:
            order = self._orders[camera] = self._walk(camera)
        pos = np.arange(start, start + n) % len(order)
        idx = order[pos]
        if self.order.kind != "video":
            return self.images[idx], self.labels[idx]
        jit = self._jitter.get(camera)
        if jit is None:
            jit = self._jitter[camera] = label_order.draw_jitter(len(order), np.random.default_rng([self.seed, camera, 1]))
        frames = label_order.apply_jitter(self.images[idx], label_order.Jitter(jit.shift[pos], jit.gain[pos]))
        return frames, self.labels[idx]


def decode_video(path: str | os.PathLike, size: int = 32, max_frames: int = 100_000) -> np.ndarray:
    """All frames of a video as uint8 (N, size, size, 3) RGB (area-resized, aspect not kept)."""
    frames = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                rgb = frame.to_ndarray(format="rgb24")
                frames.append(cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA))
                if len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"{path}: cannot decode video ({exc})") from None
    if not frames:
        raise ValueError(f"{path}: no video frames decoded")
    return np.stack(frames)


class VideoSource:
    """Video frames; camera c starts at offset c * N / cameras; labels from the model on clean frames."""

    label_kind = "model"

    def __init__(self, path: str | os.PathLike, model: torch.nn.Module, cameras: int = 1, size: int = 32) -> None:
        self.images = decode_video(path, size)
        with torch.no_grad():
            x = to_tensor(self.images)
            self.labels = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)]).numpy()
        self.offsets = [c * len(self.images) // max(1, cameras) for c in range(cameras)]

    def take(self, camera: int, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = (self.offsets[camera % len(self.offsets)] + np.arange(start, start + n)) % len(self.images)
        return self.images[idx], self.labels[idx]


def write_demo_video(path: str | os.PathLike, frames: int = 240, size: int = 64, seed: int = 0,
                     codec: str | None = None, root=None) -> Path:
    """Synthesise a short clip (a camera panning across CIFAR-10 test images) with PyAV.

    H.264 (libx264) when available, else MPEG-4 Part 2; used by the video scenario when no
    file is given, and by the tests (no binary video ships with the repository).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tiles = data.load_cifar10("test", root).images[np.random.default_rng(seed).permutation(10000)[:64]]
    mosaic = tiles.reshape(8, 8, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(256, 256, 3)
    mosaic = np.kron(mosaic, np.ones((2, 2, 1), np.uint8))  # 512 x 512: pan slowly
    codec = codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4")
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=24)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            y, x = (i * 3) % (512 - size * 2), (i * 7) % (512 - size * 2)
            crop = mosaic[y:y + size * 2:2, x:x + size * 2:2]
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(crop), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_source(scn: Scenario, data_dir=None, artifacts=None, model=None):
    """The scenario's frame source; a video source without a path gets a cached demo clip."""
    if scn.source.kind == "cifar10":
        return CifarSource(scn.source.split, scn.seed, data_dir, scn.labels)
    path = scn.source.path
    if path is None:
        path = artifacts_dir(artifacts) / "demo-video.mp4"
        if not path.is_file():
            write_demo_video(path, root=data_dir)
    return VideoSource(path, model or build_model(scn.model, data_dir), scn.cameras, size=32)
