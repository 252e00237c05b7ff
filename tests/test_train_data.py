"""Training data in the official video-SALMONN S format: loading, validation, media checks, decoding."""

from __future__ import annotations

import json
import os
import re
from fractions import Fraction

import av
import numpy as np
import pytest
from torch.utils.data import DataLoader

from avmem.synth import write_test_pattern_clip
from avmem.train.data import (
    Record,
    Sample,
    Skipped,
    VideoQADataset,
    check_media,
    collate_single,
    load_records,
)

QA = [{"from": "human", "value": "<video>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    a = write_test_pattern_clip(folder / "a.mp4", seconds=6, fps=10, size=(96, 128), seed=1)
    b = write_test_pattern_clip(folder / "b.mp4", seconds=4, fps=10, size=(64, 64), seed=2, audio=False)
    tone = folder / "tone.m4a"
    with av.open(str(tone), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 16000, 0, Fraction(1, 16000)
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return {"a": str(a), "b": str(b), "tone": str(tone)}


def write_json(path, items):
    path.write_text(json.dumps(items))
    return path


def write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def item(video="a.mp4", conversations=None, **extra):
    return {"video": video, "conversations": QA if conversations is None else conversations, **extra}


def one(tmp_path, **kwargs) -> Record:
    (record,) = load_records(write_json(tmp_path / "d.json", [item(**kwargs)]))
    return record


def make_record(videos, *, use_audio=False, timestamps=None) -> Record:
    return Record(source="mem[0]", videos=tuple(videos), use_audio=use_audio, turns=(("q", "a"),),
                  timestamps=timestamps)


# -- loading ----------------------------------------------------------------------------------------------------


def test_json_and_jsonl_joined_by_comma(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    first = write_json(data / "a.json", [item("clips/x.mp4"), item("/abs/y.mp4", use_audio=True)])
    second = write_jsonl(data / "b.jsonl", [item(["p.mp4", "../q.mp4"]), "", item("r.mp4", timestamps=[1, 2.5])])
    records = load_records(f"{first}, {second}")
    assert [r.source for r in records] == [f"{first}[0]", f"{first}[1]", f"{second}:1", f"{second}:3"]
    assert records[0].videos == (str(data / "clips" / "x.mp4"),)
    assert records[1].videos == ("/abs/y.mp4",) and records[1].use_audio is True
    assert records[0].use_audio is False
    assert records[2].videos == (str(data / "p.mp4"), str(tmp_path / "q.mp4"))
    assert records[3].timestamps == (1.0, 2.5) and records[0].timestamps is None
    assert records[0].turns == (("What colour?", "Red."),)
    assert load_records([first, second]) == records


def test_relative_paths_resolve_against_the_data_file_not_the_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "sub"
    sub.mkdir()
    write_json(sub / "d.json", [item("v.mp4")])
    monkeypatch.chdir(tmp_path)
    (record,) = load_records("sub/d.json")
    assert record.videos == (str(tmp_path / "sub" / "v.mp4"),)
    assert os.path.isabs(record.videos[0]) and record.source == "sub/d.json[0]"


@pytest.mark.parametrize("question, expected", [
    ("<video>\nWhat colour?", "What colour?"),
    ("What colour?", "What colour?"),
    ("<image>\nWhat colour?", "What colour?"),
    ("  Look: <video>\n what colour?  ", "Look:  what colour?"),
])
def test_video_tag_handling(tmp_path, question, expected):
    record = one(tmp_path, conversations=[{"from": "human", "value": question}, {"from": "gpt", "value": " Red. "}])
    assert record.turns == ((expected, "Red."),)


def test_multi_turn_and_ignored_keys(tmp_path):
    conversations = [{"from": "human", "value": "<video>\nQ1"}, {"from": "gpt", "value": "A1"},
                     {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]
    record = one(tmp_path, conversations=conversations, ref_answer="x", num_tokens=12)
    assert record.turns == (("Q1", "A1"), ("Q2", "A2"))


def test_timestamps_on_the_first_turn_are_read(tmp_path):
    conversations = [{"from": "human", "value": "Q", "timestamps": [0, 3]}, {"from": "gpt", "value": "A"}]
    assert one(tmp_path, conversations=conversations).timestamps == (0.0, 3.0)


def human(value):
    return {"from": "human", "value": value}


def gpt(value):
    return {"from": "gpt", "value": value}


BAD_ITEMS = [
    ([1, 2], "must be a JSON object"),
    ({"video": "a.mp4"}, "missing 'conversations'"),
    (item(conversations=[]), "'conversations' must be a non-empty list"),
    (item(conversations="hi"), "'conversations' must be a non-empty list"),
    (item(conversations=[{"from": "human"}, gpt("A")]), "turn 0 must be an object with 'from' and 'value'"),
    (item(conversations=[{"value": "Q"}, gpt("A")]), "turn 0 must be an object"),
    (item(conversations=[gpt("A"), human("Q")]), "turn 0 is from \"gpt\", expected \"human\""),
    (item(conversations=[human("Q"), human("Q2")]), "turn 1 is from \"human\", expected \"gpt\""),
    (item(conversations=[human("Q"), gpt("A"), human("Q2")]), "turn 2\\) has no answer"),
    (item(conversations=[human("Q")]), "turn 0\\) has no answer"),
    (item(conversations=[human("Q"), gpt("  ")]), "answer in turn 1 is empty"),
    (item(conversations=[human("Q"), {"from": "gpt", "value": 3}]), "turn 1 'value' must be a string"),
    (item(conversations=[human("<video> and <image>"), gpt("A")]), "2 <video> tags"),
    (item(conversations=[human("Q"), gpt("A"), human("<video> Q2"), gpt("A2")]), "must be in the first question"),
    ({"conversations": QA}, "missing 'video'"),
    ({"conversations": QA, "audio": "x.wav"}, "audio-only samples are not supported"),
    ({"conversations": QA, "image": "x.png"}, "image samples are not supported"),
    (item(video=3), "'video' must be a path or a non-empty list of paths"),
    (item(video=[]), "'video' must be a path or a non-empty list"),
    (item(video=["a.mp4", 2]), "'video' must be a path or a non-empty list"),
    (item(video=" "), "empty path"),
    (item(use_audio="yes"), "'use_audio' must be true or false"),
    (item(use_audio=1), "'use_audio' must be true or false"),
    (item(timestamps=[3, 1]), "'timestamps' must be \\[t0, t1\\]"),
    (item(timestamps=[-1, 1]), "'timestamps' must be"),
    (item(timestamps=[1]), "'timestamps' must be"),
    (item(timestamps=[0, "5"]), "'timestamps' must be"),
    (item(timestamps=[0, float("inf")]), "'timestamps' must be"),
    (item(timestamps=[True, 2]), "'timestamps' must be"),
    (item(video=["a.mp4", "b.mp4"], timestamps=[[0, 1], [0, 2]]), "per-clip timestamps are not supported"),
]


@pytest.mark.parametrize("bad, message", BAD_ITEMS)
def test_bad_items_name_the_jsonl_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "d.jsonl", [item(), bad])
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:2: .*{message}") as info:
        load_records(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad, message", BAD_ITEMS[:4] + BAD_ITEMS[-8:])
def test_bad_items_name_the_json_index(tmp_path, bad, message):
    path = write_json(tmp_path / "d.json", [item(), item(), bad])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}\[2\]: .*{message}"):
        load_records(path)


def test_bad_files(tmp_path):
    good = write_json(tmp_path / "good.json", [item()])
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'missing.json'))}: no such file"):
        load_records(f"{good},{tmp_path / 'missing.json'}")
    with pytest.raises(ValueError, match="is a directory"):
        load_records(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"video": "a.mp4",\n')
    with pytest.raises(ValueError, match=f"^{re.escape(str(broken))}: malformed JSON .*line 2"):
        load_records(broken)
    lines = write_jsonl(tmp_path / "d.jsonl", [item(), item(), '{"video": "a.mp4", '])
    with pytest.raises(ValueError, match=f"^{re.escape(str(lines))}:3: malformed JSON"):
        load_records(lines)
    not_list = write_json(tmp_path / "obj.json", item())
    with pytest.raises(ValueError, match=f"^{re.escape(str(not_list))}: a .json data file must hold a list"):
        load_records(not_list)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=f"^{re.escape(str(binary))}: cannot read"):
        load_records(binary)


def test_empty_dataset(tmp_path):
    empty_json = write_json(tmp_path / "e.json", [])
    empty_jsonl = tmp_path / "e.jsonl"
    empty_jsonl.write_text("\n\n")
    with pytest.raises(ValueError, match="no items"):
        load_records([empty_json, empty_jsonl])
    with pytest.raises(ValueError, match="no data files"):
        load_records(" , ")
    with pytest.raises(ValueError, match="no data files"):
        load_records([])


# -- media checks -----------------------------------------------------------------------------------------------


def test_check_media(tmp_path, clips):
    path = write_jsonl(tmp_path / "d.jsonl", [item(clips["a"]), item([clips["a"], clips["b"]]),
                                              item(str(tmp_path / "gone.mp4")), item(clips["tone"])])
    records = load_records(path)
    check_media(records, 2)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:3: .*gone.mp4: no such file"):
        check_media(records, 3)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:4: .*tone.m4a: no video stream"):
        check_media(records[3:], 1)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(ValueError, match="mem\\[0\\]: .*junk.mp4: cannot open"):
        check_media([make_record([junk])], 5)
    with pytest.raises(ValueError, match="starts? at 10 s but the video is 6"):
        check_media([make_record([clips["a"]], timestamps=(10.0, 12.0))], 1)
    with pytest.raises(ValueError, match="n must be"):
        check_media(records, -1)


# -- decoding ---------------------------------------------------------------------------------------------------


def test_frames_at_fps(clips):
    sample = VideoQADataset([make_record([clips["a"]])], fps=2.0)[0]
    assert isinstance(sample, Sample)
    assert sample.frames.dtype == np.uint8 and sample.frames.shape == (12, 96, 128, 3)
    np.testing.assert_allclose(sample.times, np.arange(12) / 2.0)
    assert sample.times.dtype == np.float64
    assert sample.audio is None and sample.turns == (("q", "a"),) and sample.source == "mem[0]"
    assert sample.index == 0


def test_pixel_budget_is_applied(clips):
    sample = VideoQADataset([make_record([clips["a"]])], fps=1.0, max_pixels=32 * 32 * 4, factor=32)[0]
    h, w = sample.frames.shape[1:3]
    assert h % 32 == 0 and w % 32 == 0 and h * w <= 32 * 32 * 4


def test_frame_cap_keeps_uniformly_spaced_frames(clips):
    full = VideoQADataset([make_record([clips["a"]])], fps=4.0)[0]
    assert len(full.frames) == 24
    capped = VideoQADataset([make_record([clips["a"]])], fps=4.0, max_frames=15)[0]
    keep = np.linspace(0, 23, 15).astype(int)
    np.testing.assert_allclose(capped.times, keep / 4.0)
    np.testing.assert_array_equal(capped.frames, full.frames[keep])


def test_frame_cap_of_a_long_video_selects_while_decoding(clips):
    sample = VideoQADataset([make_record([clips["a"]])], fps=4.0, max_frames=5)[0]
    assert len(sample.frames) == 5 and np.all(np.diff(sample.times) > 0)
    assert sample.times[0] == 0.0 and sample.times[-1] >= 5.0
    np.testing.assert_allclose(np.diff(sample.times), 1.5, atol=0.25)


def test_timestamps_window(clips):
    full = VideoQADataset([make_record([clips["a"]], use_audio=True)], fps=2.0)[0]
    part = VideoQADataset([make_record([clips["a"]], use_audio=True, timestamps=(2.0, 4.5))], fps=2.0)[0]
    np.testing.assert_allclose(part.times, [0.0, 0.5, 1.0, 1.5, 2.0])
    np.testing.assert_array_equal(part.frames, full.frames[4:9])
    assert part.audio_start == 0.0 and part.audio.dtype == np.float32
    assert part.audio.shape == (5 * 8000,)
    np.testing.assert_array_equal(part.audio, full.audio[2 * 16000:int(4.5 * 16000)])


def test_window_off_the_grid_shifts_to_the_first_sample(clips):
    sample = VideoQADataset([make_record([clips["a"]], use_audio=True, timestamps=(1.2, 2.0))], fps=2.0)[0]
    np.testing.assert_allclose(sample.times, [0.3])
    assert sample.audio_start == pytest.approx(0.3) and sample.audio.shape == (8000,)


def test_two_clips_concatenate_with_offset_times(clips):
    record = make_record([clips["a"], clips["b"]], use_audio=True)
    sample = VideoQADataset([record], fps=2.0)[0]
    assert sample.frames.shape == (20, 96, 128, 3)
    np.testing.assert_allclose(sample.times, np.arange(20) / 2.0)
    assert sample.audio.shape == (20 * 8000,)
    assert np.abs(sample.audio[: 6 * 16000]).max() > 0.1
    assert not sample.audio[6 * 16000:].any()
    alone = VideoQADataset([make_record([clips["b"]])], fps=2.0)[0]
    assert alone.frames.shape == (8, 64, 64, 3) and alone.audio is None
    means = sample.frames[12:].reshape(8, -1, 3).mean(axis=1)
    np.testing.assert_allclose(means, alone.frames.reshape(8, -1, 3).mean(axis=1), atol=4)


def test_window_across_two_clips(clips):
    record = make_record([clips["a"], clips["b"]], timestamps=(5.0, 7.0))
    sample = VideoQADataset([record], fps=2.0)[0]
    np.testing.assert_allclose(sample.times, [0.0, 0.5, 1.0, 1.5])
    assert sample.frames.shape == (4, 96, 128, 3)


def test_use_audio_gives_16khz_float32(clips):
    sample = VideoQADataset([make_record([clips["a"]], use_audio=True)], fps=1.0)[0]
    assert sample.audio.dtype == np.float32 and sample.audio.ndim == 1
    assert sample.audio.shape[0] == pytest.approx(6 * 16000, abs=1600)
    assert 0.1 < np.abs(sample.audio).max() <= 1.0
    assert sample.audio_start == 0.0


def test_corrupt_and_missing_files_are_skipped_not_raised(tmp_path, clips):
    good = write_test_pattern_clip(tmp_path / "good.mp4", seconds=2, fps=10, size=(64, 64))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"x")
    path = write_jsonl(tmp_path / "d.jsonl", [item("good.mp4"), item("bad.mp4"), item("gone.mp4"),
                                              item([str(good), "bad.mp4"])])
    records = load_records(path)
    bad.write_bytes(os.urandom(4096))
    dataset = VideoQADataset(records, fps=2.0)
    assert isinstance(dataset[0], Sample)
    for i in (1, 2, 3):
        skipped = dataset[i]
        assert isinstance(skipped, Skipped) and skipped.index == i and skipped.source == f"{path}:{i + 1}"
        assert skipped.reason and "\n" not in skipped.reason
    assert "no such file" in dataset[2].reason
    items = list(DataLoader(dataset, batch_size=1, collate_fn=collate_single))
    assert [type(x).__name__ for x in items] == ["Sample", "Skipped", "Skipped", "Skipped"]


def test_truncated_files(tmp_path):
    clip = write_test_pattern_clip(tmp_path / "t.mp4", seconds=4, fps=10, size=(64, 64))
    stream = tmp_path / "t.ts"
    with av.open(str(clip)) as src, av.open(str(stream), "w", format="mpegts") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    for path in (clip, stream):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    dataset = VideoQADataset([make_record([clip]), make_record([stream])], fps=2.0)
    cut_index = dataset[0]
    assert isinstance(cut_index, Skipped) and "cannot open media" in cut_index.reason
    partial = dataset[1]
    assert isinstance(partial, Sample) and 0 < len(partial.frames) < 8
    np.testing.assert_allclose(partial.times, np.arange(len(partial.frames)) / 2.0)


def test_window_after_the_end_is_skipped(clips):
    result = VideoQADataset([make_record([clips["a"]], timestamps=(20.0, 30.0))], fps=2.0)[0]
    assert isinstance(result, Skipped) and "no frames in the window [20, 30] s" in result.reason


def test_indexing(clips):
    dataset = VideoQADataset([make_record([clips["b"]])] * 2, fps=1.0)
    assert len(dataset) == 2 and dataset[-1].index == 1
    with pytest.raises(IndexError):
        dataset[2]


def test_collate_single():
    skipped = Skipped(0, "x", "r")
    assert collate_single([skipped]) is skipped
    with pytest.raises(ValueError, match="batch_size=1"):
        collate_single([skipped, skipped])


@pytest.mark.parametrize("kwargs, message", [
    ({"fps": 0}, "fps"), ({"fps": 300}, "fps"), ({"fps": True}, "fps"),
    ({"max_frames": 0}, "max_frames"), ({"max_frames": 2.5}, "max_frames"),
    ({"max_pixels": 0}, "max_pixels"), ({"max_pixels": 100}, "max_pixels"),
    ({"min_pixels": 10**9}, "min_pixels"), ({"factor": 0}, "factor"), ({"factor": 1000}, "factor"),
])
def test_dataset_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VideoQADataset([make_record(["/x.mp4"])], **kwargs)


def test_dataset_needs_records():
    with pytest.raises(ValueError, match="no records"):
        VideoQADataset([])
    with pytest.raises(ValueError, match="not a Record"):
        VideoQADataset([{"video": "x"}])
