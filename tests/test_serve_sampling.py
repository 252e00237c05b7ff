"""The server's decoding settings: the sampler (nucleus filter against a naive reference, seeded draws, greedy at
temperature 0), stop sequences cut while streaming (against cutting the whole text), and the OpenAI / native ask
endpoints honouring temperature, top_p, seed, stop, max_tokens, n and usage (tiny model, in process)."""

from __future__ import annotations

import json
import random

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[dev]'")
from fastapi.testclient import TestClient

from avmem.model import load_model
from avmem.serve import ServeConfig, create_app
from avmem.serve.sampling import Sampling, SamplingError, StopFilter, nucleus_probs, sample_token

SMALL = {"video_tokens": 48, "audio_tokens": 32, "chunk_frames": 4, "max_new_tokens": 12}


def naive_nucleus(logits: list[float], temperature: float, top_p: float) -> list[float]:
    """Nucleus probabilities computed token by token in plain Python (the reference)."""
    m = max(x / temperature for x in logits)
    e = [pow(2.718281828459045, x / temperature - m) for x in logits]
    p = [x / sum(e) for x in e]
    order = sorted(range(len(p)), key=lambda i: -p[i])
    kept, mass = set(), 0.0
    for i in order:
        if mass >= top_p:
            break
        kept.add(i)
        mass += p[i]
    z = sum(p[i] for i in kept)
    return [p[i] / z if i in kept else 0.0 for i in range(len(p))]


def test_nucleus_probs_equal_the_naive_reference():
    rng = random.Random(0)
    for _ in range(20):
        logits = [rng.uniform(-4, 4) for _ in range(rng.randint(2, 30))]
        t, p = rng.choice([0.3, 0.7, 1.0, 1.6]), rng.choice([0.05, 0.5, 0.9, 1.0])
        got = nucleus_probs(torch.tensor(logits, device="cpu"), t, p).tolist()
        assert got == pytest.approx(naive_nucleus(logits, t, p), abs=1e-5)


def test_sampler_is_seeded_follows_the_distribution_and_greedy_at_zero():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0], device="cpu")
    pick = Sampling(temperature=1.0, seed=7).picker("cpu")
    first = [pick(logits) for _ in range(2000)]
    again = Sampling(temperature=1.0, seed=7).picker("cpu")
    assert [again(logits) for _ in range(2000)] == first  # same seed: same draws
    freq = [first.count(i) / len(first) for i in range(4)]
    assert freq == pytest.approx(torch.softmax(logits, -1).tolist(), abs=0.04)
    assert len(set(first)) == 4
    nucleus = Sampling(temperature=1.0, top_p=0.5, seed=3).picker("cpu")
    assert {nucleus(logits) for _ in range(200)} == {0}  # the top token alone holds >= 0.5 of the mass
    assert Sampling(temperature=0.0, seed=3).picker("cpu") is None  # greedy: argmax in the session
    g = torch.Generator(device="cpu")
    g.manual_seed(0)
    assert sample_token(torch.tensor([0.0, 50.0], device="cpu"), 0.01, 1.0, g) == 1


@pytest.mark.parametrize("body, words", [
    ({"temperature": -0.1}, "temperature"), ({"temperature": "hot"}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"), ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"), ({"stop": 3}, "stop"),
    ({"stop": ["a"] * 5}, "stop"), ({"stop": [""]}, "stop"), ({"temperature": float("nan")}, "temperature"),
])
def test_sampling_settings_are_validated(body, words):
    with pytest.raises(SamplingError, match=words):
        Sampling.from_request(body)


def test_stop_filter_equals_cutting_the_whole_text():
    rng = random.Random(1)
    alphabet = "ab \nXY"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        cuts = [text.find(s) for s in stops if s in text]
        want = text[:min(cuts)] if cuts else text
        f, out, i = StopFilter(stops), "", 0
        while i < len(text) and not f.stopped:
            k = rng.randint(1, 4)
            out += f.feed(text[i:i + k])
            i += k
        out += f.flush()
        assert out == want == f.answer(), (text, stops)
        assert f.stopped == bool(cuts)
    assert StopFilter([]).feed("abc") == "abc"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from avmem.synth import write_test_pattern_clip

    clip = write_test_pattern_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=4, fps=10, size=(64, 96))
    cfg = ServeConfig(model="tiny-qwen3-vl", session_defaults=dict(SMALL))
    with TestClient(create_app(cfg, load_model("tiny-qwen3-vl"))) as c:
        r = c.post("/v1/sessions", content=clip.read_bytes(), headers={"content-type": "video/mp4"})
        sid = r.json()["id"]
        end = __import__("time").monotonic() + 60
        while c.get(f"/v1/sessions/{sid}").json()["status"] != "ended":
            assert __import__("time").monotonic() < end
            __import__("time").sleep(0.05)
        yield c, sid


def test_chat_completions_honour_sampling_stop_and_usage(served):
    c, sid = served

    def chat(**kw):
        body = {"messages": [{"role": "user", "content": "Describe it."}], "avmem_session": sid, **kw}
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    greedy = chat(max_tokens=12)
    assert greedy == {**greedy, "object": "chat.completion"}
    text = greedy["choices"][0]["message"]["content"]
    assert chat(max_tokens=12, temperature=0)["choices"][0]["message"]["content"] == text
    usage = greedy["usage"]
    assert usage["prompt_tokens"] > 20 and usage["completion_tokens"] >= 1  # memory + question rows, not 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    hot = [chat(max_tokens=12, temperature=1.5, seed=s)["choices"][0]["message"]["content"] for s in (1, 1, 2, 3, 4)]
    assert hot[0] == hot[1]  # seeded: reproducible
    assert len(set(hot)) > 1 or hot[0] != text  # sampled, not greedy (random tiny model: a flat distribution)
    assert chat(max_tokens=3)["usage"]["completion_tokens"] <= 3
    assert chat(max_completion_tokens=2)["usage"]["completion_tokens"] <= 2
    assert len(text) >= 3  # the random tiny model writes some text
    stop = text[1:3]
    cut = chat(max_tokens=12, stop=[stop])["choices"][0]
    assert cut["message"]["content"] == text[:text.find(stop)] and cut["finish_reason"] == "stop"
    body = {"messages": [{"role": "user", "content": "Describe it."}], "avmem_session": sid, "max_tokens": 12,
            "stop": stop, "stream": True, "stream_options": {"include_usage": True}}
    with c.stream("POST", "/v1/chat/completions", json=body) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert streamed == text[:text.find(stop)]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["prompt_tokens"] == usage["prompt_tokens"]
    native = c.post(f"/v1/sessions/{sid}/ask", json={"question": "Describe it.", "temperature": 1.5, "seed": 1,
                                                     "max_new_tokens": 12}).json()
    assert native["answer"] == hot[0] and native["prompt_tokens"] == usage["prompt_tokens"]


@pytest.mark.parametrize("extra, words", [
    ({"n": 2}, "'n'"), ({"presence_penalty": 0.5}, "presence_penalty"), ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function"}]}, "tools"), ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"temperature": 3}, "temperature"), ({"messages": [{"role": "user", "content": "q" * 8193}]}, "8192"), ({"top_p": 0}, "top_p"), ({"stream_options": {"include_usage": True}},
                                                                      "stream_options"),
])
def test_chat_completions_refuse_what_they_cannot_do(served, extra, words):
    c, sid = served
    body = {"messages": [{"role": "user", "content": "q"}], "avmem_session": sid, **extra}
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    ok = {"messages": [{"role": "user", "content": "q"}], "avmem_session": sid, "n": 1, "presence_penalty": 0,
          "logprobs": False, "max_tokens": 2}
    assert c.post("/v1/chat/completions", json=ok).status_code == 200
