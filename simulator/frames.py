"""Frame sources for ``dynbn publish``: a video file or URL, a folder of images, or an ``.npz``, decoded lazily.

``open_frames`` opens the source at once, so that a bad one fails before anything is
published, and returns a ``FrameSource``: a one-shot iterator of uint8 (size, size, 3) RGB
frames, area-resized with the aspect not kept (as ``simulator.sources.decode_video``),
optionally corrupted by one of ``dynbn.corruptions`` with a seeded generator.

What PyAV (FFmpeg) does with damaged input, measured with PyAV 18 / FFmpeg 8:

* an mp4 cut short whose index (``moov``) sits at the end, as PyAV writes it: the file
  does not open ("Invalid data found"), so ``open_frames`` raises;
* an mp4 with its index in front (``movflags=faststart``) cut short: the frames before
  the cut decode, then the decoder raises; the iterator yields those frames and then
  raises ``SourceError`` naming the index of the frame it stopped at;
* Matroska / MPEG-TS cut short: FFmpeg decodes the frames before the cut and ends
  silently, so the iterator simply ends early (``total`` may be unknown for these);
* a URL nobody listens on: refused at once; a server that accepts but never answers:
  PyAV's interrupt callback gives up after ``timeout`` seconds.
"""

from __future__ import annotations

import os
import time
import warnings
import zipfile
from collections.abc import Iterator

import av
import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from dynbn import corruptions

__all__ = ["FrameSource", "SourceError", "open_frames", "parse_corruption", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Frames per call into a corruption. Corruptions are vectorised, so files are corrupted a
# few frames at a time; a live stream goes frame by frame, since buffering 16 frames of a
# 25 fps camera would delay each frame by up to 0.6 s (and costs < 1 ms a frame at 32 px).
CHUNK, LIVE_CHUNK = 16, 1
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class SourceError(ValueError):
    """A source that cannot be opened or decoded; the message names it and says why."""


def parse_corruption(spec: str) -> tuple[str, int]:
    """``"fog:3"`` -> ``("fog", 3)``; raises SourceError naming the valid names or severities."""
    name, sep, sev = str(spec).rpartition(":")
    if not sep:
        raise SourceError(f"corruption {spec!r}: expected NAME:SEVERITY, e.g. fog:3")
    if name not in corruptions.ALL:
        raise SourceError(f"unknown corruption {name!r}; valid names: {', '.join(corruptions.ALL)}")
    if not sev.strip().isdigit() or int(sev) not in corruptions.SEVERITIES:
        raise SourceError(f"corruption {spec!r}: severity must be one of "
                          f"{', '.join(map(str, corruptions.SEVERITIES))}, got {sev!r}")
    return name, int(sev)


def _why(exc: BaseException) -> str:
    """FFmpeg's or the OS's reason without the path it repeats (the caller names the source)."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class _Video:
    """A video file or stream URL, opened and probed (first frame decoded) at construction."""

    kind = "video"

    def __init__(self, source: str, max_side: int, timeout: float) -> None:
        self.name, self.max_side = source, max_side
        self.is_url = "://" in source
        self.timeout = timeout if self.is_url else None
        self._container, self._decoder, self._first = self._open()
        stream = self._container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        self.native_fps = float(rate) if rate else None
        self.total = stream.frames or None  # 0 for live streams and containers without a count

    def _open(self):
        """Open the container, check its video stream's size, and decode the first frame."""
        start = time.monotonic()
        try:
            container = av.open(self.name, timeout=self.timeout)
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceError(f"{self.name}: cannot open video: {self._reason(exc, start, opening=True)}") from None
        try:
            if not container.streams.video:
                raise SourceError(f"{self.name}: no video stream")
            ctx = container.streams.video[0].codec_context
            if ctx is None:  # seen on an mp4 cut inside its index: the stream's codec is unknown
                raise SourceError(f"{self.name}: no decoder for the video stream (unknown codec, or a truncated file)")
            self._check_side(ctx.width, ctx.height, "video")
            decoder = container.decode(video=0)
            first = self._to_rgb(next(decoder), 0)
        except StopIteration:
            container.close()
            raise SourceError(f"{self.name}: no video frames decoded") from None
        except (av.error.FFmpegError, OSError) as exc:
            container.close()
            raise SourceError(f"{self.name}: cannot decode video: {self._reason(exc, start, opening=True)}") from None
        except SourceError:
            container.close()
            raise
        return container, decoder, first

    def _reason(self, exc: BaseException, since: float, opening: bool = False) -> str:
        """Why FFmpeg failed, in words: its "Invalid data" also reports a silent server or a cut file."""
        if self.timeout and time.monotonic() - since >= 0.9 * self.timeout:
            return f"no answer within {self.timeout:g} s ({_why(exc)})"
        if opening and isinstance(exc, av.error.InvalidDataError) and not self.is_url:
            return f"{_why(exc)} (not a video, or a truncated file)"
        return _why(exc)

    def _check_side(self, width: int, height: int, what: str) -> None:
        if max(width, height) > self.max_side:
            raise SourceError(f"{self.name}: {what} is {width}x{height}, larger than max_side={self.max_side}")

    def _to_rgb(self, frame: av.VideoFrame, index: int) -> np.ndarray:
        self._check_side(frame.width, frame.height, f"frame {index}")
        return frame.to_ndarray(format="rgb24")

    def one_pass(self) -> Iterator[np.ndarray]:
        """Frames to the end of the video; passes after the first reopen it (a stream reconnects)."""
        if self._container is None:
            self._container, self._decoder, self._first = self._open()
        container, decoder, first = self._container, self._decoder, self._first
        self._first = None
        n = 1
        try:
            yield first
            asked = time.monotonic()  # when the consumer asked for frame n: a stalled stream times out after it
            for frame in decoder:
                yield self._to_rgb(frame, n)
                n, asked = n + 1, time.monotonic()
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceError(f"{self.name}: video broke off at frame {n}: {self._reason(exc, asked)}") from None
        finally:
            container.close()
            self._container = None

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class _Stored:
    """A source of stored images: no frame rate of its own, nothing to release."""

    native_fps = None

    def close(self) -> None:
        """Nothing to release: files are opened and closed frame by frame."""


class _Folder(_Stored):
    """Images of a folder in name order; every header is read (not decoded) at construction."""

    kind = "folder"

    def __init__(self, source: str, max_side: int) -> None:
        self.name, self.max_side = source, max_side
        # Hidden files (macOS "._x.png" forks, editors' temporaries) are not frames.
        try:
            names = sorted(f for f in os.listdir(source) if f.lower().endswith(IMAGE_SUFFIXES)
                           and not f.startswith(".") and os.path.isfile(os.path.join(source, f)))
        except OSError as exc:
            raise SourceError(f"{source}: cannot list the folder: {_why(exc)}") from None
        if not names:
            raise SourceError(f"{source}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.files = [os.path.join(source, f) for f in names]
        for path in self.files:
            self._read(path, decode=False)
        self.total = len(self.files)

    def _read(self, path: str, decode: bool) -> np.ndarray | None:
        """An image as uint8 RGB; with decode=False only its header is read and checked."""
        try:
            with warnings.catch_warnings():
                # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse those too.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    w, h = im.size
                    if max(w, h) > self.max_side:
                        raise SourceError(f"{path}: image is {w}x{h}, larger than max_side={self.max_side}")
                    return np.asarray(im.convert("RGB")) if decode else None
        except SourceError:
            raise
        except UnidentifiedImageError:
            raise SourceError(f"{path}: not an image that Pillow can read") from None
        except (*_PIL_ERRORS, Image.DecompressionBombWarning) as exc:
            raise SourceError(f"{path}: cannot read image: {exc}") from None

    def one_pass(self) -> Iterator[np.ndarray]:
        for path in self.files:
            yield self._read(path, decode=True)


class _Npz(_Stored):
    """The ``images`` array of an ``.npz`` (N, H, W, 3) uint8, loaded without pickle at construction."""

    kind = "npz"

    def __init__(self, source: str, max_side: int) -> None:
        try:
            archive = np.load(source, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise SourceError(f"{source}: not an .npz archive (holds a single array)")
            with archive:
                if "images" not in archive.files:
                    raise SourceError(f"{source}: no 'images' array (holds {', '.join(archive.files) or 'nothing'})")
                images = archive["images"]
        except SourceError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise SourceError(f"{source}: not a readable .npz archive: {exc}") from None
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or not len(images):
            raise SourceError(f"{source}: 'images' must be uint8 (N, H, W, 3) with N >= 1, "
                              f"got {images.dtype} {images.shape}")
        if max(images.shape[1:3]) > max_side or min(images.shape[1:3]) < 1:
            raise SourceError(f"{source}: images are {images.shape[2]}x{images.shape[1]}, "
                              f"outside 1..max_side={max_side}")
        self.images, self.total = images, len(images)

    def one_pass(self) -> Iterator[np.ndarray]:
        yield from self.images


class FrameSource:
    """A one-shot iterator of uint8 (size, size, 3) RGB frames from an opened source.

    kind: "video" | "folder" | "npz"; name: the source as given; native_fps: the video's
    own frame rate when known; total: frames in one pass when known (None for a live
    stream). Raises SourceError mid-iteration when the source breaks (frames before the
    break are yielded first). ``close()`` (or ``with``) releases the decoder.
    """

    def __init__(self, reader: _Video | _Folder | _Npz, name: str, size: int, *, loop: bool,
                 corruption: tuple[str, int] | None, seed: int, frost_dir, chunk: int) -> None:
        self.kind, self.name = reader.kind, name
        self.native_fps, self.total = reader.native_fps, reader.total
        self._reader, self._size, self._loop = reader, size, loop
        self._corruption, self._frost_dir, self._chunk = corruption, frost_dir, chunk
        self._rng = np.random.default_rng(seed)
        frames = self._resized()
        self._frames = self._corrupted(frames) if corruption else frames

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        return next(self._frames)

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop iterating and release the container; further ``next`` raises StopIteration."""
        self._frames.close()
        self._reader.close()

    def _resized(self) -> Iterator[np.ndarray]:
        """Pass after pass (one without loop) of frames resized to size x size."""
        while True:
            count = 0
            for rgb in self._reader.one_pass():
                count += 1
                yield cv2.resize(rgb, (self._size, self._size), interpolation=cv2.INTER_AREA)
            if not self._loop:
                return
            if count == 0:  # reopened and empty: looping would spin forever
                raise SourceError(f"{self.name}: a pass yielded no frames; cannot loop")

    def _corrupted(self, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """The frames corrupted ``chunk`` at a time; a source error is raised after the frames before it."""
        name, severity = self._corruption
        buffer, error = [], None
        try:
            for frame in frames:
                buffer.append(frame)
                if len(buffer) == self._chunk:
                    yield from corruptions.corrupt(np.stack(buffer), name, severity, self._rng, frost_dir=self._frost_dir)
                    buffer = []
        except SourceError as exc:
            error = exc
        if buffer:
            yield from corruptions.corrupt(np.stack(buffer), name, severity, self._rng, frost_dir=self._frost_dir)
        if error is not None:
            raise error


def open_frames(source: str | os.PathLike, size: int, *, loop: bool = False, corrupt: str | None = None, seed: int = 0,
                frost_dir=None, max_side: int = 4096, timeout: float = 10.0) -> FrameSource:
    """Open SOURCE now (so a bad source fails here, before anything is published) and return its frames.

    source: a video file, any URL PyAV opens (rtsp://, http://, ...), a folder of images
    (IMAGE_SUFFIXES, name order), or an ``.npz`` with an ``images`` uint8 (N, H, W, 3) array.
    loop: start over at the end (a video is reopened, so a dropped stream reconnects).
    corrupt: "NAME:SEVERITY" from ``dynbn.corruptions.ALL``, applied after resizing with
    ``np.random.default_rng(seed)``; frost_dir: the frost photos (frost only).
    max_side: larger frames are refused (from the header where there is one) before decoding.
    timeout: seconds a URL may stay silent, when opening and between reads.
    Raises SourceError (a ValueError) naming the source and the problem.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise SourceError(f"size must be a positive integer, got {size!r}")
    corruption = parse_corruption(corrupt) if corrupt else None
    if corruption:  # fails now on what parse_corruption cannot see: frames too small, frost's folder or size
        try:
            probe = np.zeros((1, size, size, 3), np.uint8)
            corruptions.corrupt(probe, *corruption, np.random.default_rng(0), frost_dir=frost_dir)
        except ValueError as exc:
            raise SourceError(f"corruption {corrupt!r} at size {size}: {exc}") from None
    source = os.fspath(source)
    if "://" in source:
        reader = _Video(source, max_side, timeout)
    elif not os.path.exists(source):
        raise SourceError(f"{source}: no such file or folder")
    elif os.path.isdir(source):
        reader = _Folder(source, max_side)
    elif source.lower().endswith(".npz"):
        reader = _Npz(source, max_side)
    else:
        reader = _Video(source, max_side, timeout)
    live = "://" in source and reader.total is None
    return FrameSource(reader, source, int(size), loop=loop, corruption=corruption, seed=seed,
                       frost_dir=frost_dir, chunk=LIVE_CHUNK if live else CHUNK)
