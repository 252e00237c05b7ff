"""FileSource and probe on generated clips and edge-case files written here with PyAV."""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from avmem.media import SAMPLE_RATE, AudioChunk, FileSource, MediaError, MediaWarning, VideoFrame, probe, sample_frames
from avmem.synth import write_test_pattern_clip

TONE_HZ = 440.0
PYAV_MAJOR = int(av.__version__.split(".")[0])
needs_pyav17 = pytest.mark.skipif(
    PYAV_MAJOR < 17, reason=f"writing the test file needs PyAV >= 17 (Stream.set_display_rotation, assigning "
                            f"Stream.disposition); PyAV {av.__version__} is installed (the library supports >= 15.0)")


def _gray(i: int) -> int:
    return (20 + 20 * i) % 240


def write_clip(path: Path, times: list[float], *, size: tuple[int, int] = (48, 64), rotation: int | None = None,
               sar: Fraction | None = None, audio: tuple[float, float, int] | None = None) -> Path:
    """H.264 clip whose frame i (presented at ``times[i]`` s) is gray level ``_gray(i)`` with a red block
    in the top-left corner; optional display rotation (degrees counter-clockwise), sample aspect ratio,
    and a 440 Hz PCM tone ``audio = (start s, seconds, sample rate)``."""
    h, w = size
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, 1000)
        video.options = {"preset": "ultrafast", "crf": "10"}
        if sar is not None:
            video.codec_context.sample_aspect_ratio = sar
        if rotation is not None:
            video.set_display_rotation(rotation)
        tone = None
        if audio is not None:
            tone = out.add_stream("pcm_s16le", rate=audio[2])
            tone.layout = "mono"
        for i, t in enumerate(times):
            img = np.full((h, w, 3), _gray(i), np.uint8)
            img[: h // 3, : w // 4] = (255, 0, 0)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if tone is not None:
            start, seconds, rate = audio
            n = int(seconds * rate)
            pcm = (0.5 * np.sin(2 * np.pi * TONE_HZ * np.arange(n) / rate) * 32767).astype(np.int16)
            for s in range(0, n, 1024):
                frame = av.AudioFrame.from_ndarray(pcm[None, s:s + 1024], format="s16", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, round(start * rate) + s, Fraction(1, rate)
                out.mux(tone.encode(frame))
            out.mux(tone.encode())
    return path


def write_raw(path: Path, height: int, width: int, frames: int = 2) -> Path:
    """Uncompressed RGB video of any size (NUT container)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("rawvideo", rate=5)
        video.width, video.height, video.pix_fmt = width, height, "rgb24"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 5)
            out.mux(video.encode(frame))
        out.mux(video.encode())
    return path


def split(items):
    frames = [i for i in items if isinstance(i, VideoFrame)]
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    return frames, chunks


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_test_pattern_clip(tmp_path_factory.mktemp("clip") / "c.mp4", seconds=5, fps=10, size=(96, 160))


def test_frames_and_audio_chunks_alternate_on_the_sampling_grid(clip):
    src = FileSource(clip, fps=1.0, factor=28)
    items = list(src)
    assert [type(i) for i in items] == [VideoFrame, AudioChunk] * 5
    frames, chunks = split(items)
    assert [f.t for f in frames] == [0.0, 1.0, 2.0, 3.0, 4.0] == [c.t for c in chunks]
    assert [f.index for f in frames] == list(range(5)) == [c.index for c in chunks]
    assert all(f.image.shape == (84, 168, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(c.samples.dtype == np.float32 and c.samples.shape == (SAMPLE_RATE,) for c in chunks)
    spectrum = np.abs(np.fft.rfft(chunks[2].samples))
    assert np.argmax(spectrum) in {330, 440, 550, 660, 880}
    assert src.stats.frames == 5 and src.stats.audio_seconds == 5.0 and src.stats.seconds == 5.0
    assert src.stats.warnings == [] and src.stats.dropped == 0
    assert src.info.frame_size == (84, 168) and src.info.sampled_frames == 5


def test_chunk_length_follows_fps_and_iteration_restarts(clip):
    src = FileSource(clip, fps=3.0, max_pixels=None)
    frames, chunks = split(list(src))
    assert len(frames) == 15 and frames[0].image.shape == (96, 160, 3)
    assert {len(c.samples) for c in chunks} == {5333, 5334} and sum(len(c.samples) for c in chunks) == 5 * SAMPLE_RATE
    again, _ = split(list(src))
    assert len(again) == 15 and np.array_equal(again[7].image, frames[7].image)
    assert [f.t for f in split(list(FileSource(clip, fps=2.0, audio=False)))[0]] == [k / 2 for k in range(10)]


def test_vfr_samples_the_frame_on_screen_at_each_grid_point(tmp_path):
    path = write_clip(tmp_path / "vfr.mkv", [0.0, 0.1, 0.2, 2.5, 2.6, 4.0])
    src = FileSource(path, max_pixels=None)
    frames, chunks = split(list(src))
    assert not chunks
    assert [f.t for f in frames] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [f.frame_time for f in frames] == pytest.approx([0.0, 0.2, 0.2, 2.6, 4.0])
    assert [int(f.image[-1, -1, 1]) for f in frames] == pytest.approx([_gray(i) for i in (0, 2, 2, 4, 5)], abs=4)
    assert src.stats.repeated_frames == 1


def test_nonzero_start_and_audio_starting_after_video_is_zero_padded(tmp_path):
    path = write_clip(tmp_path / "late.mkv", [2.0 + i / 10 for i in range(20)], audio=(2.5, 2.0, 22050))
    src = FileSource(path, max_pixels=None)
    frames, chunks = split(list(src))
    assert [f.t for f in frames] == [0.0, 1.0] and frames[0].frame_time == 0.0
    first = chunks[0].samples
    onset = int(np.flatnonzero(np.abs(first) > 1e-3)[0])
    assert abs(onset - SAMPLE_RATE // 2) <= 16 and np.all(first[:onset] == 0)
    assert src.stats.padded_audio_seconds == pytest.approx(0.5, abs=0.002)


def test_audio_starting_before_video_is_trimmed_in_phase(tmp_path):
    path = write_clip(tmp_path / "early.mkv", [2.0 + i / 10 for i in range(20)], audio=(1.5, 3.0, 16000))
    _, chunks = split(list(FileSource(path, max_pixels=None)))
    n = np.arange(SAMPLE_RATE)
    expected = 0.5 * np.sin(2 * np.pi * TONE_HZ * (n / SAMPLE_RATE + 0.5))
    assert np.max(np.abs(chunks[0].samples - expected)) < 0.01
    assert len(chunks) == 2 and np.abs(chunks[1].samples).max() > 0.4


@needs_pyav17
@pytest.mark.parametrize("rotation, corner", [(90, (-1, 0)), (-90, (0, -1)), (180, (-1, -1))])
def test_display_rotation_is_applied(tmp_path, rotation, corner):
    path = write_clip(tmp_path / f"rot{rotation}.mp4", [i / 10 for i in range(5)], size=(48, 96), rotation=rotation)
    info = probe(path, max_pixels=None)
    assert info.video.rotation % 360 == rotation % 360
    upright = (48, 96) if rotation == 180 else (96, 48)
    assert (info.video.display_height, info.video.display_width) == upright == info.frame_size
    image = next(iter(FileSource(path, max_pixels=None, audio=False))).image
    assert image.shape == (*upright, 3)
    ys = slice(None, 8) if corner[0] == 0 else slice(-8, None)
    xs = slice(None, 8) if corner[1] == 0 else slice(-8, None)
    assert image[ys, xs, 0].mean() > 200 and image[ys, xs, 1].mean() < 60, "red marker in the wrong corner"


def test_non_square_pixels_are_resampled_square(tmp_path):
    path = write_clip(tmp_path / "sar.mp4", [i / 10 for i in range(5)], size=(48, 64), sar=Fraction(2, 1))
    info = probe(path, max_pixels=None)
    assert info.video.sample_aspect_ratio == 2 and (info.video.display_height, info.video.display_width) == (48, 128)
    assert next(sample_frames(path))[1].shape == (48, 128, 3)


def test_truncated_file_yields_what_decodes_and_warns(tmp_path, clip):
    full = write_test_pattern_clip(tmp_path / "full.mkv", seconds=10, fps=5, size=(64, 96))
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    src = FileSource(cut)
    with pytest.warns(MediaWarning, match=r"cut\.mkv: .*truncated"):
        frames, chunks = split(list(src))
    assert 4 <= len(frames) <= 8 and len(chunks) == len(frames)
    assert any("cut.mkv" in w and "decoded up to" in w for w in src.stats.warnings)
    moov_at_end = tmp_path / "cut.mp4"
    moov_at_end.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    with pytest.raises(MediaError, match=r"cut\.mp4: cannot open"):
        FileSource(moov_at_end)


def test_raw_stream_without_duration_or_timestamps(tmp_path):
    path = tmp_path / "raw.h264"
    with av.open(str(path), "w", format="h264") as out:
        video = out.add_stream("libx264", rate=5)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 10 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 5)
            out.mux(video.encode(frame))
        out.mux(video.encode())
    info = probe(path)
    assert info.duration is None and info.sampled_frames is None and info.audio is None
    src = FileSource(path, max_pixels=None)
    with pytest.warns(MediaWarning, match="no timestamps"):
        frames, _ = split(list(src))
    assert [f.t for f in frames] == [0.0, 1.0, 2.0, 3.0]
    assert [int(f.image[32, 32, 0]) for f in frames] == pytest.approx([0, 50, 100, 150], abs=4)


def test_audio_only_needs_video_false(tmp_path):
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        stream.layout = "stereo"
        pcm = (0.25 * 32767 * np.sin(2 * np.pi * 500 * np.arange(20000) / 8000)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(pcm, 2)[None, :], format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 8000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with pytest.raises(MediaError, match=r"tone\.wav: no video stream"):
        FileSource(path)
    src = FileSource(path, video=False)
    frames, chunks = split(list(src))
    assert not frames and [len(c.samples) for c in chunks] == [16000, 16000, 8000]
    assert np.argmax(np.abs(np.fft.rfft(chunks[0].samples))) == 500
    assert src.stats.audio_seconds == pytest.approx(2.5)


def test_bad_inputs_raise_one_line_media_errors(tmp_path, clip):
    cases = {tmp_path / "missing.mp4": "no such file", tmp_path: "not a file"}
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cases[empty] = "empty file"
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"definitely not a video " * 100)
    cases[junk] = "cannot open media"
    cases[write_raw(tmp_path / "dot.nut", 1, 1)] = "unsupported resolution 1x1"
    cases[write_raw(tmp_path / "line.nut", 2, 17000)] = "unsupported resolution 17000x2"
    for path, needle in cases.items():
        for build in (FileSource, probe):
            with pytest.raises(MediaError, match=needle) as err:
                build(path)
            assert str(path) in str(err.value) and "\n" not in str(err.value)
    silent = write_clip(tmp_path / "silent.mp4", [0.0, 0.1])
    with pytest.raises(MediaError, match="no audio stream"):
        FileSource(silent, video=False)
    for kwargs, needle in (({"fps": 0}, "fps"), ({"fps": 1000}, "fps"), ({"factor": 0}, "factor"),
                           ({"max_pixels": 10}, "max_pixels"), ({"video": False, "audio": False}, "nothing"),
                           ({"timeout": 0}, "timeout")):
        with pytest.raises(MediaError, match=needle):
            FileSource(clip, **kwargs)
    with pytest.raises(MediaError, match="path or URL"):
        FileSource(42)


def test_stopping_early_and_sample_frames_contract(clip):
    src = FileSource(clip)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for item in src:
            break
    assert isinstance(item, VideoFrame) and src.stats.frames == 1
    frames = list(sample_frames(clip, fps=1.0))
    assert [t for t, _ in frames] == [0.0, 1.0, 2.0, 3.0, 4.0] and frames[0][1].shape == (96, 160, 3)


@needs_pyav17
def test_cover_art_is_not_a_video_stream(tmp_path):
    path = tmp_path / "cover.mp3"
    with av.open(str(path), "w") as out:
        sound = out.add_stream("mp3", rate=16000)
        sound.layout = "mono"
        art = out.add_stream("mjpeg", rate=1)
        art.width, art.height, art.pix_fmt = 32, 32, "yuvj420p"
        art.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        picture.pts, picture.time_base = 0, Fraction(1, 1)
        out.mux(art.encode(picture))
        out.mux(art.encode())
        wave = (0.3 * np.sin(2 * np.pi * 250 * np.arange(24000) / 16000)).astype(np.float32)
        for s in range(0, wave.size, 1152):
            frame = av.AudioFrame.from_ndarray(wave[None, s:s + 1152], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, s
            out.mux(sound.encode(frame))
        out.mux(sound.encode())
    assert probe(path).video is None
    with pytest.raises(MediaError, match="no video stream"):
        FileSource(path)
    chunks = list(FileSource(path, video=False))
    assert sum(len(c.samples) for c in chunks) == pytest.approx(24000, abs=1200)


def test_display_matrix_is_read_once_per_frame_geometry(tmp_path, monkeypatch):
    """Reading frame.side_data on every frame makes PyAV retain memory; it must happen once per size."""
    from avmem.media import _decode
    from avmem.synth import write_test_pattern_clip

    calls = []
    real = _decode.orientation_of
    monkeypatch.setattr(_decode, "orientation_of", lambda frame: calls.append(1) or real(frame))
    clip = write_test_pattern_clip(tmp_path / "c.mp4", seconds=6, fps=10, size=(64, 96))
    items = list(FileSource(clip, fps=1.0, audio=False))
    assert len(items) == 6 and len(calls) == 1
