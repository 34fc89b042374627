"""Frame sources of ``dynbn publish``: real videos, image folders and npz files, decoded lazily; damaged ones refused."""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
import zlib

import av
import cv2
import numpy as np
import pytest
from PIL import Image
from streaming import joined

from dynbn.corruptions import ALL
from simulator.frames import SourceError, open_frames, parse_corruption
from simulator.sources import decode_video, write_demo_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory, data_dir):
    """A real 48-frame 64x64 H.264 mp4 at 24 fps (index at the end, as PyAV writes it)."""
    return write_demo_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames=48, size=64, root=data_dir)


@pytest.fixture(scope="module")
def clean(clip):
    return decode_video(clip, 32)


def remux(src, dst, **options):
    """Copy a video's packets into another container (no re-encoding)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options=options) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:  # the demuxer's final flush packet
                packet.stream = stream
                out.mux(packet)
    return dst


def truncate(src, dst, fraction=0.5):
    data = src.read_bytes()
    dst.write_bytes(data[:int(len(data) * fraction)])
    return dst


def test_video_yields_what_pyav_decodes(clip, clean):
    with open_frames(str(clip), 32) as src:
        assert (src.kind, src.native_fps, src.total) == ("video", 24.0, 48) and len(clean) == 48
        frames = list(src)
    assert all(f.dtype == np.uint8 and f.shape == (32, 32, 3) for f in frames)
    assert np.array_equal(np.stack(frames), clean)  # bit for bit


def test_loop_starts_over(clip, clean):
    src = open_frames(clip, 32, loop=True)
    frames = np.stack(list(itertools.islice(src, 120)))  # 2.5 passes
    assert np.array_equal(frames[:48], clean) and np.array_equal(frames[48:96], clean)
    assert np.array_equal(frames[96:], clean[:24])
    src.close()
    assert next(src, None) is None


def test_without_loop_iteration_ends(clip):
    src = open_frames(clip, 16)
    assert sum(1 for _ in src) == 48 and next(src, None) is None


def test_folder_in_name_order_resized(tmp_path):
    rng = np.random.default_rng(0)
    shapes = {"b.png": (40, 30), "10.png": (32, 32), "a.bmp": (7, 90), "9.jpg": (64, 48), "c.webp": (33, 17)}
    originals = {}
    for name, (h, w) in shapes.items():
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / name)
        originals[name] = np.asarray(Image.open(tmp_path / name).convert("RGB"))  # jpg/webp are lossy
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "._b.png").write_bytes(b"macOS resource fork")
    src = open_frames(str(tmp_path), 24)
    assert (src.kind, src.total, src.native_fps) == ("folder", 5, None)
    frames = list(src)
    order = ["10.png", "9.jpg", "a.bmp", "b.png", "c.webp"]
    expected = [cv2.resize(originals[n], (24, 24), interpolation=cv2.INTER_AREA) for n in order]
    assert len(frames) == 5 and all(np.array_equal(f, e) for f, e in zip(frames, expected))


def test_folder_loops(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i * 50, np.uint8)).save(tmp_path / f"{i}.png")
    values = [int(f[0, 0, 0]) for f in itertools.islice(open_frames(tmp_path, 8, loop=True), 7)]
    assert values == [0, 50, 100, 0, 50, 100, 0]


def test_npz_frames_and_bad_arrays(tmp_path, data_dir):
    images = np.random.default_rng(1).integers(0, 256, (5, 20, 30, 3), dtype=np.uint8)
    np.savez(tmp_path / "ok.npz", images=images, labels=np.arange(5))
    src = open_frames(tmp_path / "ok.npz", 10)
    assert (src.kind, src.total) == ("npz", 5)
    expected = [cv2.resize(x, (10, 10), interpolation=cv2.INTER_AREA) for x in images]
    assert all(np.array_equal(f, e) for f, e in zip(src, expected))

    np.savez(tmp_path / "float.npz", images=images / 255.0)
    np.savez(tmp_path / "gray.npz", images=images[..., 0])
    np.savez(tmp_path / "other.npz", frames=images)
    np.save(tmp_path / "plain.npy", images)
    (tmp_path / "plain.npz").write_bytes((tmp_path / "plain.npy").read_bytes())
    for name, why in [("float.npz", "float64"), ("gray.npz", r"\(5, 20, 30\)"), ("other.npz", "no 'images' array"),
                      ("plain.npz", "not an .npz archive")]:
        with pytest.raises(SourceError, match=f"{name}.*{why}"):
            open_frames(tmp_path / name, 10)


def test_corruption_changes_frames_deterministically(clip, clean, data_dir):
    def run(seed, spec="gaussian_noise:5"):
        return np.stack(list(open_frames(clip, 32, corrupt=spec, seed=seed)))

    a, b, c = run(0), run(0), run(1)
    assert a.shape == clean.shape and a.dtype == np.uint8  # 48 frames: three chunks of 16
    assert not np.array_equal(a, clean) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.mean(np.abs(a.astype(int) - clean)) > 10
    frosted = np.stack(list(open_frames(clip, 32, corrupt="frost:2", frost_dir=data_dir / "frost")))
    assert frosted.shape == clean.shape and not np.array_equal(frosted, clean)


@pytest.mark.parametrize("spec, message", [
    ("nosuch:3", "unknown corruption 'nosuch'; valid names: gaussian_noise, shot_noise"),
    ("fog:9", "severity must be one of 1, 2, 3, 4, 5, got '9'"),
    ("fog:0", "severity must be one of 1, 2, 3, 4, 5"),
    ("fog", "expected NAME:SEVERITY"),
])
def test_bad_corruption_refused_at_open(clip, spec, message):
    with pytest.raises(SourceError, match=message):
        open_frames(clip, 32, corrupt=spec)


def test_parse_corruption_accepts_every_name_and_severity():
    assert [parse_corruption(f"{n}:{s}") for n in ALL for s in range(1, 6)] == [(n, s) for n in ALL for s in range(1, 6)]


def test_corruption_that_cannot_run_at_this_size_refused_at_open(clip, data_dir):
    with pytest.raises(SourceError, match="frost supports images up to"):
        open_frames(clip, 100, corrupt="frost:1", frost_dir=data_dir / "frost")
    with pytest.raises(SourceError, match="frost needs frost_dir"):
        open_frames(clip, 32, corrupt="frost:1")


def test_missing_and_non_video_files(tmp_path):
    with pytest.raises(SourceError, match="nothing.mp4: no such file or folder"):
        open_frames(str(tmp_path / "nothing.mp4"), 32)
    (tmp_path / "notes.mp4").write_text("a text file renamed\n" * 50)
    with pytest.raises(SourceError, match="notes.mp4: cannot open video: Invalid data"):
        open_frames(tmp_path / "notes.mp4", 32)


def test_truncated_mp4_with_index_at_the_end_is_refused_at_open(clip, tmp_path):
    with pytest.raises(SourceError, match="cut.mp4: cannot open video.*truncated"):
        open_frames(truncate(clip, tmp_path / "cut.mp4"), 32)
    with pytest.raises(SourceError, match="cut90.mp4"):  # cut inside the index: the stream has no codec
        open_frames(truncate(clip, tmp_path / "cut90.mp4", 0.9), 32)


@pytest.mark.parametrize("corrupt", [None, "gaussian_noise:1"])
def test_video_broken_mid_stream_yields_the_frames_before_then_names_the_frame(clip, clean, tmp_path, corrupt):
    cut = truncate(remux(clip, tmp_path / "fast.mp4", movflags="faststart"), tmp_path / "cut.mp4")
    src, frames = open_frames(cut, 32, corrupt=corrupt), []
    with pytest.raises(SourceError, match=r"cut.mp4: video broke off at frame (\d+)") as err:
        frames.extend(src)
    assert 0 < len(frames) < len(clean) and f"frame {len(frames)}:" in str(err.value)
    if corrupt is None:
        assert np.array_equal(np.stack(frames), clean[:len(frames)])


def test_truncated_matroska_ends_early_without_error(clip, clean, tmp_path):
    cut = truncate(remux(clip, tmp_path / "clip.mkv"), tmp_path / "cut.mkv")
    src = open_frames(cut, 32)
    frames = list(src)  # FFmpeg decodes up to the cut and stops silently
    assert src.total is None and 0 < len(frames) < len(clean)
    assert np.array_equal(np.stack(frames), clean[:len(frames)])


def test_oversized_video_refused(clip):
    with pytest.raises(SourceError, match="video is 64x64, larger than max_side=63"):
        open_frames(clip, 32, max_side=63)


def test_empty_folder_and_corrupt_image(tmp_path):
    with pytest.raises(SourceError, match="folder holds no images"):
        open_frames(tmp_path, 32)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_text("a text file renamed")
    with pytest.raises(SourceError, match="b.jpg: not an image that Pillow can read"):
        open_frames(tmp_path, 32)
    (tmp_path / "b.jpg").unlink()
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(SourceError, match="c.png: cannot read image: Truncated File Read"):
        open_frames(tmp_path, 32)


def test_image_cut_short_named_when_decoded(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data[:len(data) // 2])  # header intact: passes open, fails on decode
    src = open_frames(tmp_path, 32)
    assert next(src).shape == (32, 32, 3)
    with pytest.raises(SourceError, match="b.png: cannot read image"):
        next(src)


def png_claiming(path, width, height):
    """A tiny PNG whose header claims width x height (CRC fixed so the header itself is valid)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts after signature, length, type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("width, height, message", [
    (20000, 20000, "bomb.png: cannot read image: Image size .* could be decompression bomb"),
    (12000, 12000, "bomb.png: cannot read image: Image size .* could be decompression bomb"),  # PIL only warns
    (5000, 100, "bomb.png: image is 5000x100, larger than max_side=4096"),
])
def test_image_bomb_refused_from_its_header(tmp_path, width, height, message):
    png_claiming(tmp_path / "bomb.png", width, height)
    start = time.monotonic()
    with pytest.raises(SourceError, match=message) as err:
        open_frames(tmp_path, 32)
    assert time.monotonic() - start < 1  # nothing was decoded
    assert str(err.value).count("bomb.png") == 1, "the file is named once, not wrapped twice"


def test_unreachable_url_refused_quickly():
    start = time.monotonic()
    with pytest.raises(SourceError, match=r"rtsp://127.0.0.1:9/none: cannot open video: Connection refused"):
        open_frames("rtsp://127.0.0.1:9/none", 32)  # port 9 (discard): nothing listens
    assert time.monotonic() - start < 15


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_silent_server_times_out(scheme):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)  # the kernel accepts the connection; nobody ever answers
        url = f"{scheme}://127.0.0.1:{server.getsockname()[1]}/stream"
        start = time.monotonic()
        with pytest.raises(SourceError, match=f"{url}: cannot open video: no answer within 1 s"):
            open_frames(url, 32, timeout=1.0)
        assert time.monotonic() - start < 5


def test_stream_that_stalls_mid_way_times_out_naming_the_frame(clip, tmp_path):
    data = remux(clip, tmp_path / "fast.mp4", movflags="faststart").read_bytes()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def serve_half_then_stall():
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                head = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: %d\r\n\r\n" % len(data)
                conn.sendall(head + data[:len(data) // 2])
                time.sleep(2)

        thread = threading.Thread(target=serve_half_then_stall, daemon=True)
        thread.start()
        url, frames = f"http://127.0.0.1:{server.getsockname()[1]}/clip.mp4", []
        start = time.monotonic()
        with pytest.raises(SourceError, match=r"clip.mp4: video broke off at frame \d+: no answer within 1 s"):
            frames.extend(open_frames(url, 32, timeout=1.0))
        assert len(frames) > 0 and time.monotonic() - start < 5
        joined(thread, 10)


def test_bad_size_refused(clip):
    for size in (0, -3, 2.5, True):
        with pytest.raises(SourceError, match="size must be a positive integer"):
            open_frames(clip, size)
