"""Moving a session between Ray replicas (the move logic on two in-process :class:`Replica` objects; no Ray
cluster): a move to a replica that holds the id is refused before anything stops, and a failed import leaves no
files behind and resumes the session on its first replica."""

from __future__ import annotations

import asyncio
import inspect
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[dev]'")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -e '.[ray]'")

from avmem.serve import ServeConfig, snapshots
from avmem.serve.manager import SourceSpec
from avmem.serve.ray_app import MoveError, Replica, move_session

SMALL = dict(video_tokens=48, audio_tokens=32, chunk_frames=4, max_new_tokens=6, use_audio=False)


def replica(tmp_path, index: int, model: str = "tiny-qwen3-vl") -> Replica:
    return Replica(ServeConfig(model=model, session_defaults=dict(SMALL), snapshot_dir=str(tmp_path)), index)


def caller(r: Replica):
    async def call(name, *args):
        out = getattr(r, name)(*args)
        return await out if inspect.isawaitable(out) else out
    return call


def pushing_session(r: Replica):
    """A push session on ``r`` with a client attached and frames taken in (the source holds the last one back)."""
    e = r.manager.create("local", SourceSpec("push"))
    source = r.manager.push_source(e)
    for i in range(4):
        source.push_frame(float(i), np.full((64, 96, 3), 40 * i, np.uint8))
    deadline = time.monotonic() + 60
    while r.manager.describe(e)["frames"] < 3:
        assert time.monotonic() < deadline, "frames not taken in"
        time.sleep(0.05)
        r.manager.call(lambda: None).result(timeout=30)
    return e, source


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    a, b = replica(root, 0), replica(root, 1)
    yield a, b, root
    a.manager.stop(snapshot=False)
    b.manager.stop(snapshot=False)


def test_move_to_a_replica_holding_the_id_is_refused_before_anything_stops(pair):
    a, b, root = pair
    e, source = pushing_session(a)
    gen = a.manager.call(lambda: a.manager.snapshot_now(e)).result(timeout=60)
    b.import_session(e.id, snapshots.export_generation(gen))  # the id exists on b already
    with pytest.raises(ValueError, match="holds a session"):  # a second import writes nothing
        b.import_session(e.id, snapshots.export_generation(gen))
    assert [p.name for p in (root / "replica-1" / e.id).iterdir()] == ["gen-0000000001"]
    with pytest.raises(MoveError, match="holds a session") as err:
        asyncio.run(move_session(caller(a), caller(b), e.id, None))
    assert err.value.status == 409
    assert e.source is source and e.status == "streaming" and not e.closed  # untouched on a
    b.manager.close(e.id, None)
    a.manager.close(e.id, None)


def test_failed_import_removes_its_files_and_resumes_the_session(pair, tmp_path):
    a, _, _ = pair
    foreign = replica(tmp_path, 1, model="tiny-qwen2.5-vl")  # cannot load a tiny-qwen3-vl snapshot
    try:
        e, source = pushing_session(a)
        frames = a.manager.describe(e)["frames"]
        with pytest.raises(MoveError, match="stays on replica 0") as err:
            asyncio.run(move_session(caller(a), caller(foreign), e.id, None))
        assert err.value.status == 500 and "\n" not in str(err.value)
        assert not (tmp_path / "replica-1" / e.id).exists() and not foreign.has(e.id)
        assert a.has(e.id) and e.status == "waiting" and source._closed  # back on a, waiting for a new client
        assert a.manager.describe(e)["frames"] == frames
        a.manager.push_source(e)  # a client can push again
        a.manager.close(e.id, None)
    finally:
        foreign.manager.stop(snapshot=False)


def test_move_between_replicas(pair):
    a, b, root = pair
    e, _ = pushing_session(a)
    stats = asyncio.run(move_session(caller(a), caller(b), e.id, None))
    assert stats["frames"] == a.manager.describe(e)["frames"] >= 3 and not a.has(e.id) and b.has(e.id)
    assert not (root / "replica-0" / e.id).exists() and (root / "replica-1" / e.id).is_dir()
    with pytest.raises(KeyError):
        asyncio.run(move_session(caller(a), caller(b), "nope", None))
    b.manager.close(e.id, None)


def test_replica_takes_the_log_level_and_reports_skipped_snapshots(tmp_path):
    import logging

    (tmp_path / "replica-0" / "corrupt" / "gen-0000000001").mkdir(parents=True)
    logger = logging.getLogger("avmem.serve")
    level = logger.level
    try:
        r = Replica(ServeConfig(model="tiny-qwen3-vl", session_defaults=dict(SMALL), snapshot_dir=str(tmp_path)), 0,
                    "ERROR")
        assert logger.level == logging.ERROR
        errors = r.restore_errors()
        assert len(errors) == 1 and "skipping snapshot" in errors[0]  # what `avmem serve --ray` notes at start
        r.manager.stop(snapshot=False)
    finally:
        logger.setLevel(level)
