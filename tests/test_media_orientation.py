"""orientation_of on real frames: the display matrix is read from frame side data on every PyAV the
project supports (the side-data API changed in PyAV 19), and frames without one stay as decoded."""

from __future__ import annotations

import av
import numpy as np
import pytest

from avmem.media._decode import Orientation, orientation_of

from .conftest import shared_path
from .test_media_files import needs_pyav17, write_clip


def _first_frame(path) -> av.VideoFrame:
    with av.open(str(path)) as container:
        return next(container.decode(video=0))


def test_real_phone_clip_display_matrix_is_read():
    frame = _first_frame(shared_path("media", "h264_aac_vfr_720p.mp4"))
    orient, note = orientation_of(frame)
    assert orient == Orientation(k=2, vflip=False, rotation=-180) and note is None
    assert type(orient.vflip) is bool
    assert orient.rotation == frame.rotation, "must agree with PyAV's own reading of the display matrix"
    raw = frame.to_ndarray(format="rgb24")
    assert np.array_equal(orient.apply(raw), raw[::-1, ::-1])


@pytest.mark.parametrize("name", ["h264_aac_portrait_1080x1920.mp4", "real_standup_portrait_46s.mp4"])
def test_portrait_coded_frames_without_a_display_matrix_stay_as_decoded(name):
    frame = _first_frame(shared_path("media", name))
    assert frame.height > frame.width
    orient, note = orientation_of(frame)
    assert orient == Orientation() and note is None and not orient.transposes


def test_other_side_data_is_not_taken_for_a_display_matrix():
    frame = _first_frame(shared_path("media", "h264_aac_portrait_1080x1920.mp4"))
    assert len(frame.side_data) > 0, "this file's frames carry SEI side data"
    assert orientation_of(frame) == (Orientation(), None)


@needs_pyav17
@pytest.mark.parametrize("rotation, expected, corner", [
    (90, Orientation(k=1, vflip=False, rotation=90), (-1, 0)),
    (-90, Orientation(k=3, vflip=False, rotation=-90), (0, -1)),
    (180, Orientation(k=2, vflip=False, rotation=-180), (-1, -1)),
])
def test_written_display_rotation_is_read(tmp_path, rotation, expected, corner):
    frame = _first_frame(write_clip(tmp_path / "rot.mp4", [0.0, 0.1], size=(48, 96), rotation=rotation))
    orient, note = orientation_of(frame)
    assert orient == expected and note is None
    upright = orient.apply(frame.to_ndarray(format="rgb24"))
    assert upright.shape[:2] == ((48, 96) if rotation == 180 else (96, 48))
    r, g, b = upright[corner].astype(int)
    assert r > 200 and g < 60 and b < 60, "the top-left red block must land where the rotation puts it"
