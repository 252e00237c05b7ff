"""avmem serve on Ray Serve: a local Ray cluster (2 CPUs, 200 MB object store, no dashboard), 2 replicas of the
tiny model behind the router; sessions stick to their replica, answer the same after moving to the other one
(through a snapshot), and push frames through the router's WebSocket before and after the move."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[dev]'")
ray = pytest.importorskip("ray", reason="Ray Serve is not installed: pip install -e '.[ray]'")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -e '.[ray]'")
from websockets.sync.client import connect

from avmem.serve import ServeConfig
from avmem.serve.background import free_port
from avmem.serve.push import encode_message
from avmem.synth import write_test_pattern_clip

from .serve_common import wait_for

SMALL = {"video_tokens": 48, "audio_tokens": 32, "chunk_frames": 4, "max_new_tokens": 6}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray import serve

    from avmem.serve.ray_app import build

    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ServeConfig(model="tiny-qwen3-vl", session_defaults=dict(SMALL),
                             snapshot_dir=str(tmp_path_factory.mktemp("ray-snaps")), snapshot_every=0)
        serve.run(build(config, 2, cpus_per_replica=0.5), name="avmem", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            yield client, port
    finally:
        serve.shutdown()
        ray.shutdown()


def frame(t: float, value: int) -> bytes:
    img = np.full((64, 96, 3), value, np.uint8)
    return encode_message({"type": "frame", "t": t, "format": "rgb24", "width": 96, "height": 64}, img.tobytes())


def replicas(c) -> list[int]:
    return [r["sessions"] for r in c.get("/v1/replicas").json()["replicas"]]


def ask(c, sid: str) -> str:
    r = c.post(f"/v1/sessions/{sid}/ask", json={"question": "What is shown?"})
    assert r.status_code == 200, r.text
    return r.json()["answer"]


def test_sessions_stick_to_replicas_and_move_through_snapshots(cluster, tmp_path):
    c, port = cluster
    assert c.get("/health").json() == {"status": "ok", "replicas": 2, "sessions": 0}
    assert "avmem" in c.get("/").text  # the web page through the router

    clip = write_test_pattern_clip(tmp_path / "clip.mp4", seconds=4, fps=10, size=(64, 96))
    r = c.post("/v1/sessions", files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")})
    assert r.status_code == 201, r.text
    up = r.json()["id"]
    wait_for(lambda: c.get(f"/v1/sessions/{up}").json()["status"] == "ended")
    push = c.post("/v1/sessions", json={"push": True}).json()["id"]
    assert replicas(c) == [1, 1]  # new sessions go to the replica holding fewest

    url = f"ws://127.0.0.1:{port}/v1/sessions/{push}/push"
    with connect(url, max_size=None) as ws:
        for i in range(6):
            ws.send(frame(float(i), 40 * i))
        ws.send(json.dumps({"type": "stats"}))
        assert json.loads(ws.recv(timeout=30))["id"] == push
    wait_for(lambda: c.get(f"/v1/sessions/{push}").json()["frames"] == 6)

    before_up, before_push = ask(c, up), ask(c, push)
    with c.stream("POST", f"/v1/sessions/{up}/ask", json={"question": "What is shown?", "stream": True}) as s:
        events = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-1][6:])["answer"] == before_up and len(events) >= 2

    where = {s["id"] for s in c.get("/v1/sessions").json()["sessions"]}
    assert where == {up, push}
    frames_up = c.get(f"/v1/sessions/{up}").json()["frames"]
    moved = c.post(f"/v1/sessions/{up}/move", json={})
    assert moved.status_code == 200, moved.text
    src, dst = moved.json()["from"], moved.json()["to"]
    assert src != dst and replicas(c)[dst] == 2 and replicas(c)[src] == 0
    assert ask(c, up) == before_up  # the same memory on the other replica
    assert c.get(f"/v1/sessions/{up}").json()["frames"] == frames_up > 0

    moved = c.post(f"/v1/sessions/{push}/move", json={"to": src})
    assert moved.status_code == 200 and moved.json()["to"] == src, moved.text
    assert replicas(c) == [1, 1]
    assert ask(c, push) == before_push
    with connect(url, max_size=None) as ws:  # pushing continues on the new replica
        for i in range(2):
            ws.send(frame(float(i), 200))
    wait_for(lambda: c.get(f"/v1/sessions/{push}").json()["frames"] == 8)

    assert c.post("/v1/sessions/nope/move", json={}).status_code == 404
    assert c.post(f"/v1/sessions/{up}/move", json={"to": 7}).status_code == 400
    metrics = c.get("/metrics").text
    assert f'avmem_session_frames_total{{replica="{src}",session="{push}"}} 8' in metrics
    assert c.delete(f"/v1/sessions/{up}").status_code == 200 and c.get(f"/v1/sessions/{up}").status_code == 404
