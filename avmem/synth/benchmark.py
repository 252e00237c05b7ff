"""A synthetic long-video benchmark with known answers (``avmem synth``).

Each video is a timeline of coloured background scenes with timed **visual events** (a coloured shape
with a digit in it, shown for a few seconds) and **audio events** (beeps and chirps of five kinds, or
spoken words when a local ``espeak-ng`` is installed), written as H.264 + AAC through PyAV. Questions are
four-way multiple choice with one correct letter, in a Video-MME-like layout, each tagged with the time
of the event it is about and the time it is asked (the end of the video), so accuracy can be split by
how far back the answer lies:

* ``recall``     which digit was on the <colour> <shape>?
* ``counting``   how many times did a <shape> appear?
* ``ordering``   which of these appeared first?
* ``av_shape``   what shape was on screen the first time <sound> played?   (on screen when the sound X played)
* ``av_sound``   which sound played while the <colour> <shape> was on screen?   (audio-visual association)
* ``scene``      what colour was the background when the digit <d> appeared?
* ``scene_shape``  what colour was the background when the <colour> <shape> appeared?

and four *live* questions about what just happened (always inside any memory):

* ``last_shape`` / ``last_colour``  the shape / colour of the most recent object;
* ``last_sound``                    the most recent sound;
* ``background_now``                the background colour now.

Questions are asked at the end of the video or, with several ask times per video, at quiet moments
(nothing on screen or sounding for 2 s, no scene change for 3 s) during it; a question asked at ``t``
only concerns what happened before ``t``.

Everything derives from ``(seed, split, index)``: the same call writes the same files, and the split
name is part of every video's seed, so train / validation / test never share a video.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 210), "yellow": (225, 200, 40),
           "purple": (150, 60, 190), "orange": (235, 130, 30)}
BACKGROUNDS = {"black": (20, 20, 20), "grey": (120, 120, 120), "white": (235, 235, 235), "navy": (20, 30, 80),
               "brown": (100, 60, 30), "teal": (20, 110, 110)}
SHAPES = ("square", "circle", "triangle", "cross")
SOUNDS = ("a low beep", "a high beep", "a rising chirp", "a falling chirp", "a double beep")
SPOKEN = ("apple", "river", "candle", "window", "rocket")
LONG_TASKS = ("recall", "counting", "ordering", "av_shape", "av_sound", "scene", "scene_shape")
LIVE_TASKS = ("last_shape", "last_colour", "last_sound", "background_now")
TASKS = LONG_TASKS + LIVE_TASKS
STYLES = ("letter", "text", "open")
RATE = 16000
LETTERS = "ABCD"
TEXT_PROMPT = "Answer the question about the video with one of the options."
OPEN_PROMPT = "Answer the question about the video in a few words."
PROMPT = ("Select the best answer to the following multiple-choice question based on the video. "
          "Respond with only the letter (A, B, C, or D) of the correct option.")

_DIGITS = {  # 5 x 7 bitmaps
    "0": ["01110", "10001", "10011", "10101", "11001", "10001", "01110"],
    "1": ["00100", "01100", "00100", "00100", "00100", "00100", "01110"],
    "2": ["01110", "10001", "00001", "00010", "00100", "01000", "11111"],
    "3": ["11110", "00001", "00001", "01110", "00001", "00001", "11110"],
    "4": ["00010", "00110", "01010", "10010", "11111", "00010", "00010"],
    "5": ["11111", "10000", "11110", "00001", "00001", "10001", "01110"],
    "6": ["00110", "01000", "10000", "11110", "10001", "10001", "01110"],
    "7": ["11111", "00001", "00010", "00100", "01000", "01000", "01000"],
    "8": ["01110", "10001", "10001", "01110", "10001", "10001", "01110"],
    "9": ["01110", "10001", "10001", "01111", "00001", "00010", "01100"],
}


@dataclass(frozen=True)
class VisualEvent:
    """A ``colour`` ``shape`` with ``digit`` inside, on screen from ``start`` to ``end`` seconds."""

    start: float
    end: float
    shape: str
    colour: str
    digit: int


@dataclass(frozen=True)
class AudioEvent:
    """``sound`` (one of :data:`SOUNDS`, or a spoken word) from ``start`` to ``end`` seconds."""

    start: float
    end: float
    sound: str


@dataclass(frozen=True)
class Scene:
    """Background ``colour`` from ``start`` to ``end`` seconds."""

    start: float
    end: float
    colour: str


@dataclass
class Timeline:
    """Everything that happens in one video."""

    seconds: int
    scenes: list[Scene]
    visual: list[VisualEvent]
    audio: list[AudioEvent]

    def background_at(self, t: float) -> str:
        return next(s.colour for s in self.scenes if s.start <= t < s.end or s is self.scenes[-1])

    def visual_at(self, t: float) -> VisualEvent | None:
        return next((e for e in self.visual if e.start <= t < e.end), None)

    def until(self, t: float) -> Timeline:
        """What happened before ``t``: events that ended by then, scenes cut at ``t``."""
        scenes = [Scene(s.start, min(s.end, t), s.colour) for s in self.scenes if s.start < t]
        return Timeline(seconds=self.seconds, scenes=scenes, visual=[e for e in self.visual if e.end <= t],
                        audio=[a for a in self.audio if a.end <= t])

    def quiet(self, t: float) -> bool:
        """Nothing on screen or sounding in [t - 2, t] and no scene change in [t - 3, t]: a clean moment to
        ask the live questions."""
        busy = any(e.start < t and e.end > t - 2 for e in [*self.visual, *self.audio])
        return not busy and not any(t - 3 < s.start < t for s in self.scenes[1:])


@dataclass
class Question:
    """A multiple-choice question: ``options`` are "A. ..." strings, ``answer`` the letter; ``event_time`` is
    when the asked-about event happened and ``asked_at`` when the question is asked (seconds)."""

    question_id: str
    task_type: str
    question: str
    options: list[str]
    answer: str
    event_time: float
    asked_at: float

    def prompt(self, style: str = "letter") -> str:
        """The prompt for this question: ``letter`` = the Video-MME prompt (answer: a letter), ``text`` = the
        question with its options listed (answer: the option's text), ``open`` = the question alone (answer:
        the option's text; the options are only scored, never shown)."""
        if style == "letter":
            return "\n".join([PROMPT, self.question, *self.options, "The best answer is:"])
        if style == "text":
            return "\n".join([TEXT_PROMPT, self.question, "Options: " + "; ".join(self.option_texts) + "."])
        if style == "open":
            return f"{OPEN_PROMPT}\n{self.question}"
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")

    @property
    def option_texts(self) -> list[str]:
        """The options without their letters."""
        return [o[3:] for o in self.options]

    @property
    def answer_text(self) -> str:
        """The correct option's text."""
        return self.option_texts[LETTERS.index(self.answer)]


@dataclass
class SynthVideo:
    """One generated video: its file, timeline and questions."""

    video_id: str
    path: Path
    timeline: Timeline
    questions: list[Question] = field(default_factory=list)


def video_seed(seed: int, split: str, index: int) -> int:
    """The seed of video ``index`` of ``split``: different splits never produce the same video."""
    digest = hashlib.sha256(f"avmem-synth/{seed}/{split}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def make_timeline(seconds: int, rng: np.random.Generator, speech: bool = False) -> Timeline:
    """Scenes of 8-20 s; a visual event (2-4 s) every 6-14 s; an audio event (1 s) every 7-15 s, half of them
    0.3 s into the next visual event."""
    if not 30 <= seconds <= 3 * 3600:
        raise ValueError(f"video length must be 30 s .. 3 h, got {seconds} s")
    scenes, t, last = [], 0.0, None
    while t < seconds:
        length = float(rng.uniform(8, 20))
        colour = rng.choice([c for c in BACKGROUNDS if c != last])
        scenes.append(Scene(t, min(seconds, t + length), str(colour)))
        t, last = t + length, colour
    visual, t = [], float(rng.uniform(1, 5))
    while t + 4 < seconds:
        length = float(rng.uniform(2, 4))
        visual.append(VisualEvent(round(t, 2), round(t + length, 2), str(rng.choice(SHAPES)),
                                  str(rng.choice(list(COLOURS))), int(rng.integers(0, 10))))
        t += length + float(rng.uniform(4, 10))
    kinds = SPOKEN if speech else SOUNDS
    audio, t = [], float(rng.uniform(1, 6))
    while t + 2 < seconds:
        upcoming = next((e for e in visual if e.start >= t), None)
        if upcoming is not None and upcoming.start - t < 8 and rng.random() < 0.5:
            t = upcoming.start + 0.3  # half the sounds play while a shape is on screen
        if t + 2 >= seconds:
            break
        audio.append(AudioEvent(round(t, 2), round(t + 1.0, 2), str(rng.choice(kinds))))
        t += float(rng.uniform(7, 15))
    return Timeline(seconds=seconds, scenes=scenes, visual=visual, audio=audio)


def _options(correct: str, pool: list[str], rng: np.random.Generator) -> tuple[list[str], str]:
    others = [p for p in dict.fromkeys(pool) if p != correct]
    if len(others) < 3:
        raise ValueError("not enough distinct distractors")
    choice = [correct, *rng.choice(others, 3, replace=False).tolist()]
    rng.shuffle(choice)
    letter = LETTERS[choice.index(correct)]
    return [f"{LETTERS[i]}. {c}" for i, c in enumerate(choice)], letter


def ask_times(tl: Timeline, rng: np.random.Generator, n: int, earliest: float = 20.0) -> list[float]:
    """``n`` ask times: the end of the video for ``n == 1``, else up to ``n`` distinct quiet whole seconds
    after ``earliest`` (see :meth:`Timeline.quiet`), in order."""
    if n == 1:
        return [float(tl.seconds)]
    quiet = [float(t) for t in range(int(min(earliest, tl.seconds)), tl.seconds + 1) if tl.quiet(t)]
    if not quiet:
        return [float(tl.seconds)]
    return sorted(rng.choice(quiet, min(n, len(quiet)), replace=False).tolist())


def make_questions(video_id: str, tl: Timeline, rng: np.random.Generator, per_video: int = 6,
                   speech: bool = False, times: list[float] | None = None,
                   tasks: tuple[str, ...] = TASKS) -> list[Question]:
    """``per_video`` questions (task types in turn from ``tasks``), asked in turn at ``times`` (default: the
    end of the video); a question asked at ``t`` concerns only what happened before ``t``."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty selection of {', '.join(TASKS)}, got {list(tasks)}")
    times = times or [float(tl.seconds)]
    sounds = list(SPOKEN if speech else SOUNDS)
    name = (lambda s: f'the word "{s}"') if speech else (lambda s: s)
    out: list[Question] = []
    order = [tasks[i % len(tasks)] for i in range(per_video)]
    rng.shuffle(order)
    for k, task in enumerate(order):
        asked = times[k % len(times)]
        seen = tl.until(asked)
        q = None
        for _ in range(20):  # a few tries: some tasks need particular events
            q = _question(task, seen, rng, sounds, name, asked)
            if q is not None:
                break
        if q is None:
            continue
        text, correct, pool, when = q
        options, letter = _options(correct, pool, rng)
        out.append(Question(f"{video_id}-{k + 1}", task, text, options, letter, round(when, 2), asked))
    out.sort(key=lambda q: q.asked_at)
    return out


def _question(task: str, tl: Timeline, rng: np.random.Generator, sounds: list[str], name, asked: float):
    """(text, correct option, option pool, event time) or None when this timeline (what happened before
    ``asked``) cannot support ``task``."""
    events = tl.visual
    if task == "background_now":
        return ("What colour is the background now?", tl.background_at(asked - 1), list(BACKGROUNDS), asked - 1)
    if task == "last_sound":
        if not tl.audio:
            return None
        a = tl.audio[-1]
        return ("What was the most recent sound?", name(a.sound), [name(s) for s in sounds], a.start)
    if not events:
        return None
    if task == "last_shape":
        e = events[-1]
        return ("What shape was shown most recently?", e.shape, list(SHAPES) + ["nothing"], e.start)
    if task == "last_colour":
        e = events[-1]
        return ("What colour was the most recent shape?", e.colour, list(COLOURS), e.start)
    if task == "scene_shape":
        e = events[int(rng.integers(len(events)))]
        if sum(1 for x in events if (x.colour, x.shape) == (e.colour, e.shape)) > 1:
            return None
        return (f"What colour was the background when the {e.colour} {e.shape} appeared?",
                tl.background_at((e.start + e.end) / 2), list(BACKGROUNDS), e.start)
    if task == "recall":
        e = events[int(rng.integers(len(events)))]
        if sum(1 for x in events if (x.colour, x.shape) == (e.colour, e.shape)) > 1:
            return None
        return (f"Which digit was shown on the {e.colour} {e.shape}?", str(e.digit), [str(d) for d in range(10)],
                e.start)
    if task == "counting":
        shape = str(rng.choice(SHAPES))
        hits = [e for e in events if e.shape == shape]
        n = len(hits)
        pool = [str(max(0, n + d)) for d in (-3, -2, -1, 1, 2, 3, 4)]
        return (f"How many times did a {shape} appear in the video?", str(n), pool,
                hits[0].start if hits else 0.0)
    if task == "ordering":
        if len(events) < 4:
            return None
        picked = [events[i] for i in sorted(rng.choice(len(events), 4, replace=False))]
        labels = [f"the {e.colour} {e.shape}" for e in picked]
        if len(set(labels)) < 4 or any(sum(1 for x in events if f"the {x.colour} {x.shape}" == lab) > 1
                                       for lab in labels):
            return None
        return ("Which of these appeared first in the video?", labels[0], labels, picked[0].start)
    if task == "av_shape":
        first = {}
        for a in tl.audio:
            first.setdefault(a.sound, a)
        candidates = [(a, tl.visual_at(a.start + 0.5)) for a in first.values()]
        candidates = [(a, v) for a, v in candidates if v is not None]
        if not candidates:
            return None
        a, v = candidates[int(rng.integers(len(candidates)))]
        return (f"What shape was on screen the first time {name(a.sound)} played?", v.shape,
                list(SHAPES) + ["nothing"], a.start)
    if task == "av_sound":
        pairs = [(v, a) for v in events for a in tl.audio if v.start <= a.start + 0.5 < v.end]
        pairs = [(v, a) for v, a in pairs if sum(1 for x in events if (x.colour, x.shape) == (v.colour, v.shape)) == 1]
        if not pairs:
            return None
        v, a = pairs[int(rng.integers(len(pairs)))]
        return (f"Which sound played while the {v.colour} {v.shape} was on screen?", name(a.sound),
                [name(s) for s in sounds], v.start)
    if task == "scene":
        e = events[int(rng.integers(len(events)))]
        if sum(1 for x in events if x.digit == e.digit) > 1:
            return None
        return (f"What colour was the background when the digit {e.digit} appeared?",
                tl.background_at((e.start + e.end) / 2), list(BACKGROUNDS), e.start)
    raise ValueError(f"unknown task {task!r}")


def render_frame(tl: Timeline, t: float, size: tuple[int, int], _cache: dict | None = None) -> np.ndarray:
    """The RGB frame [H, W, 3] at time ``t``."""
    h, w = size
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = BACKGROUNDS[tl.background_at(t)]
    e = tl.visual_at(t)
    if e is None:
        return img
    side = min(h, w) * 3 // 5
    y0, x0 = (h - side) // 2, (w - side) // 2
    yy, xx = np.mgrid[0:side, 0:side]
    c = (side - 1) / 2
    if e.shape == "square":
        mask = np.ones((side, side), dtype=bool)
    elif e.shape == "circle":
        mask = (yy - c) ** 2 + (xx - c) ** 2 <= c ** 2
    elif e.shape == "triangle":
        mask = np.abs(xx - c) <= yy / 2
    else:
        band = side // 4
        mask = (np.abs(yy - c) <= band) | (np.abs(xx - c) <= band)
    patch = img[y0:y0 + side, x0:x0 + side]
    patch[mask] = COLOURS[e.colour]
    glyph = np.array([[ch == "1" for ch in row] for row in _DIGITS[str(e.digit)]])
    scale = max(1, side // 14)
    big = np.kron(glyph, np.ones((scale, scale), dtype=bool))
    gy, gx = (side - big.shape[0]) // 2 + side // 8, (side - big.shape[1]) // 2
    patch[gy:gy + big.shape[0], gx:gx + big.shape[1]][big] = (255, 255, 255) if e.colour != "yellow" else (0, 0, 0)
    return img


def render_audio(tl: Timeline, speech: bool = False) -> np.ndarray:
    """Mono float32 samples at 16 kHz for the whole timeline (quiet noise floor + events)."""
    n = tl.seconds * RATE
    rng = np.random.default_rng(tl.seconds)
    out = (0.003 * rng.standard_normal(n)).astype(np.float32)
    for a in tl.audio:
        start = int(a.start * RATE)
        clip = _speak(a.sound) if speech else _sound(a.sound)
        clip = clip[: max(0, n - start)]
        out[start:start + len(clip)] += clip
    return np.clip(out, -1, 1)


def _sound(kind: str) -> np.ndarray:
    t = np.arange(RATE) / RATE
    env = np.minimum(1, np.minimum(t, 1 - t) * 40)
    if kind == "a low beep":
        wave = np.sin(2 * np.pi * 300 * t)
    elif kind == "a high beep":
        wave = np.sin(2 * np.pi * 1500 * t)
    elif kind == "a rising chirp":
        wave = np.sin(2 * np.pi * (400 * t + 600 * t ** 2))
    elif kind == "a falling chirp":
        wave = np.sin(2 * np.pi * (1600 * t - 600 * t ** 2))
    elif kind == "a double beep":
        wave = np.sin(2 * np.pi * 800 * t) * ((t < 0.35) | (t > 0.6))
    else:
        raise ValueError(f"unknown sound {kind!r}")
    return (0.4 * env * wave).astype(np.float32)


def _speak(word: str) -> np.ndarray:
    """``word`` spoken by espeak-ng, resampled to 16 kHz (at most 1.5 s)."""
    from ..media import resample_audio

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ValueError("speech needs espeak-ng (apt-get install espeak-ng); drop --speech for tones")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "w.wav"
        subprocess.run([exe, "-w", str(wav), word], check=True, capture_output=True)
        with av.open(str(wav)) as container:
            stream = container.streams.audio[0]
            rate = stream.rate
            pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
    pcm = pcm.astype(np.float32) / (32768.0 if np.issubdtype(pcm.dtype, np.integer) else 1.0)
    pcm = resample_audio(pcm, rate, RATE) if rate != RATE else pcm
    return (0.8 * pcm[: int(1.5 * RATE)]).astype(np.float32)


def write_video(path: Path, tl: Timeline, size: tuple[int, int] = (160, 160), fps: int = 2,
                speech: bool = False) -> Path:
    """Encode the timeline as H.264 (``fps`` frames per second) + AAC (16 kHz mono)."""
    h, w = size
    if h % 2 or w % 2 or not 32 <= min(size) <= max(size) <= 2048:
        raise ValueError(f"frame size must be even and within 32..2048, got {h}x{w}")
    if not 1 <= fps <= 30:
        raise ValueError(f"fps must be in 1..30, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = render_audio(tl, speech)
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.options = {"preset": "veryfast", "crf": "23"}
        audio = container.add_stream("aac", rate=RATE)
        audio.layout = "mono"
        for i in range(tl.seconds * fps):
            frame = av.VideoFrame.from_ndarray(render_frame(tl, i / fps, size), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        block = 1024
        for start in range(0, len(samples), block):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + block], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = RATE, start, Fraction(1, RATE)
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    return path


def generate(out: str | Path, split: str, videos: int, seconds: tuple[int, int] = (60, 600),
             size: tuple[int, int] = (160, 160), fps: int = 2, seed: int = 0, questions: int = 6,
             speech: bool = False, progress=None, times: int = 1, tasks: tuple[str, ...] = TASKS,
             style: str = "letter", group: bool = False) -> list[SynthVideo]:
    """Write ``videos`` videos of ``split`` into ``out/videos/`` and three JSON files:

    * ``out/{split}.json``: Video-MME-like annotations (one entry per video, questions nested, each with
      ``task_type``, ``options`` "A. ...", ``answer`` letter, ``event_time`` and ``asked_at``);
    * ``out/{split}_train.json``: the same questions in the official training format (``avmem train``),
      prompted in ``style`` (:meth:`Question.prompt`), each on the window [0, asked_at] of its video; with
      ``group`` one item per ask time instead, its distinct questions as the turns of one conversation
      (one streaming pass trains several answers);
    * ``out/{split}_events.json``: the ground-truth timelines.

    ``times`` ask times per video (1: all questions at the end), ``tasks`` the task types to draw from.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if times <= 0:
        raise ValueError(f"times must be > 0, got {times}")
    if not split or not split.replace("_", "").isalnum():
        raise ValueError(f"split must be a plain name such as train / val / test, got {split!r}")
    if videos <= 0 or questions <= 0:
        raise ValueError("videos and questions must be > 0")
    lo, hi = seconds
    if not 30 <= lo <= hi <= 3 * 3600:
        raise ValueError(f"video lengths must satisfy 30 <= min <= max <= 10800 s, got {lo}..{hi}")
    if speech and shutil.which("espeak-ng") is None:
        raise ValueError("speech needs espeak-ng (apt-get install espeak-ng); drop --speech for tones")
    out = Path(out)
    made: list[SynthVideo] = []
    for i in range(videos):
        rng = np.random.default_rng(video_seed(seed, split, i))
        length = int(rng.integers(lo, hi + 1))
        tl = make_timeline(length, rng, speech)
        vid = f"{split}_{i:04d}"
        path = write_video(out / "videos" / f"{vid}.mp4", tl, size, fps, speech)
        when = ask_times(tl, rng, times)
        made.append(SynthVideo(vid, path, tl, make_questions(vid, tl, rng, questions, speech, when, tasks)))
        if progress is not None:
            progress(i + 1, videos)
    annotations = [{"video_id": v.video_id, "videoID": v.video_id, "video": f"videos/{v.path.name}",
                    "duration": v.timeline.seconds, "split": split,
                    "questions": [asdict(q) for q in v.questions]} for v in made]
    (out / f"{split}.json").write_text(json.dumps(annotations, indent=1))
    train = [training_item(v, qs, style) for v in made for qs in question_groups(v.questions, group)]
    (out / f"{split}_train.json").write_text(json.dumps(train, indent=1))
    events = [{"video_id": v.video_id, "seconds": v.timeline.seconds,
               "scenes": [asdict(s) for s in v.timeline.scenes], "visual": [asdict(e) for e in v.timeline.visual],
               "audio": [asdict(a) for a in v.timeline.audio]} for v in made]
    (out / f"{split}_events.json").write_text(json.dumps(events, indent=1))
    return made


def question_groups(questions: list[Question], group: bool) -> list[list[Question]]:
    """One list per training item: each question alone, or (``group``) the questions of each ask time with
    repeated texts dropped (a second copy would let a later turn copy an earlier answer)."""
    if not group:
        return [[q] for q in questions]
    by_time: dict[float, dict[str, Question]] = {}
    for q in questions:
        by_time.setdefault(q.asked_at, {}).setdefault(q.question, q)
    return [list(qs.values()) for _, qs in sorted(by_time.items())]


def training_item(video: SynthVideo, questions: list[Question], style: str) -> dict:
    """One ``avmem train`` item: the window [0, asked_at] of ``video`` and ``questions`` (same ask time) as turns."""
    if len({q.asked_at for q in questions}) != 1:
        raise ValueError("the questions of one training item must share their ask time")
    turns = []
    for k, q in enumerate(questions):
        turns += [{"from": "human", "value": ("<video>\n" if k == 0 else "") + q.prompt(style)},
                  {"from": "gpt", "value": q.answer if style == "letter" else q.answer_text}]
    return {"video": f"videos/{video.path.name}", "use_audio": True,
            "question_id": ",".join(q.question_id for q in questions),
            "timestamps": [0.0, questions[0].asked_at], "conversations": turns}


def load_annotations(path: str | Path) -> list[tuple[Path, list[Question]]]:
    """Read ``{split}.json``: (video path, questions) per video, paths resolved against the file's folder."""
    path = Path(path)
    try:
        items = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read annotations ({exc})") from None
    out = []
    for k, item in enumerate(items):
        try:
            qs = [Question(**q) for q in item["questions"]]
            out.append((path.parent / item["video"], qs))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}[{k}]: not a synth annotation ({exc})") from None
    return out


def extract_letter(reply: str) -> str:
    """The Video-MME scorer's rule: drop the stock phrases, give up on long replies without a letter, then
    the first capital A-D ("" if none)."""
    text = reply.strip()
    for phrase in ("The best answer is", "The correct answer is", "The answer is", "The answer", "Answer:",
                   "Option:", "The correct answer", "The correct option"):
        text = text.replace(phrase, "")
    if len(text.split()) > 10 and not any(c in text for c in LETTERS):
        return ""
    return next((c for c in text if c in LETTERS), "")
