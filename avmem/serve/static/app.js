// avmem web page: choose a source, watch it, ask questions (answers stream in), memory telemetry.
// Plain JS, no build step, nothing fetched from elsewhere. API: docs/serving.md.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  sid: null, tab: "camera", ws: null, media: null, frameTimer: null, audio: null, poll: null,
  history: [], t0: 0, sentFrames: 0, skippedFrames: 0, objectUrl: null, asking: false,
};
const HISTORY = 240;       // telemetry points kept for the chart (one a second)
const WINDOW = 30;         // the chart spans at least this many points
const MAX_SIDE = 640;      // pushed camera frames are scaled to at most this many pixels per side
const MAX_BUFFERED = 4e6;  // bytes waiting in the WebSocket before a camera frame is skipped

// --- HTTP --------------------------------------------------------------------------------------------------

function apiKey() { return $("apikey").value.trim(); }

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: "Bearer " + key } : extra;
}

async function api(method, path, body) {
  const opts = { method, headers: authHeaders() };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) {
    opts.body = JSON.stringify(body);
    opts.headers["Content-Type"] = "application/json";
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!r.ok) {
    if (r.status === 401) needKey(true);
    const msg = (data && data.error && data.error.message) || r.statusText || "request failed";
    throw new Error(`HTTP ${r.status}: ${msg}`);
  }
  return data;
}

function needKey(flag) {
  $("keybox").classList.toggle("need", flag);
  $("apikey").placeholder = flag ? "this server needs an API key" : "not needed on this server";
}

// --- the push message format (avmem/serve/push.py): uint32 BE header length | JSON header | payload -------

function pushMessage(header, payload) {
  const head = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(4 + head.length + payload.byteLength);
  new DataView(out.buffer).setUint32(0, head.length, false);
  out.set(head, 4);
  out.set(new Uint8Array(payload.buffer || payload, payload.byteOffset || 0, payload.byteLength), 4 + head.length);
  return out.buffer;
}

// --- sessions ----------------------------------------------------------------------------------------------

function settings() {
  const fps = Number($("fps").value);
  if (!(fps > 0)) throw new Error("frames per second must be a number > 0");
  return { fps };
}

async function start() {
  $("start").disabled = true;
  try {
    await closeSession(false);
    state.sentFrames = 0;
    const s = settings();
    let created;
    if (state.tab === "camera") created = await startCamera(s);
    else if (state.tab === "upload") created = await startUpload(s);
    else if (state.tab === "url") created = await startUrl(s);
    else created = { id: $("sessions").value };
    if (!created || !created.id) throw new Error("choose a session");
    attach(created.id);
  } catch (e) {
    say(String(e.message || e), "error");
    stopMedia();
  } finally {
    $("start").disabled = false;
  }
}

async function startCamera(s) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia)
    throw new Error("this browser gives no camera here (the page needs https or localhost)");
  let media;
  try {
    media = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360 }, audio: true });
  } catch (e) {
    media = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  }
  state.media = media;
  showPlayer({ stream: media });
  const hasAudio = media.getAudioTracks().length > 0;  // without a microphone, frames must not wait for audio
  const created = await api("POST", "/v1/sessions", { push: true, settings: hasAudio ? s : { ...s, use_audio: false } });
  const info = await api("GET", `/v1/sessions/${created.id}`);
  openPush(created.id, s.fps, info.settings.use_audio && hasAudio);
  return created;
}

async function startUpload(s) {
  const file = $("file").files[0];
  if (!file) throw new Error("choose a file to upload");
  showPlayer({ url: URL.createObjectURL(file), local: true });
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("settings", JSON.stringify(s));
  form.append("live", $("upload-live").checked ? "true" : "false");
  return api("POST", "/v1/sessions", form);
}

async function startUrl(s) {
  const url = $("url").value.trim();
  if (!url) throw new Error("type a URL");
  const created = await api("POST", "/v1/sessions", { source: url, live: $("url-live").checked, settings: s });
  showPlayer(/^https?:\/\//.test(url) ? { url } : {});
  return created;
}

function openPush(sid, fps, withAudio) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const key = apiKey();
  const ws = new WebSocket(`${proto}//${location.host}/v1/sessions/${sid}/push` +
                           (key ? `?api_key=${encodeURIComponent(key)}` : ""));
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  ws.onopen = () => {
    state.t0 = performance.now();
    state.frameTimer = setInterval(grabFrame, 1000 / fps);
    grabFrame();
    if (withAudio) startAudio();
  };
  ws.onclose = (ev) => {
    if (state.ws === ws && ev.code !== 1000) say(`push connection closed (${ev.code}${ev.reason ? ": " + ev.reason : ""})`, "error");
    stopMedia();
  };
}

function now() { return (performance.now() - state.t0) / 1000; }

function grabFrame() {
  const video = $("player"), ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || !video.videoWidth) return;
  if (ws.bufferedAmount > MAX_BUFFERED) { state.skippedFrames++; return; }
  const scale = Math.min(1, MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
  const canvas = $("grab");
  canvas.width = Math.max(2, Math.round(video.videoWidth * scale));
  canvas.height = Math.max(2, Math.round(video.videoHeight * scale));
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  const t = now();
  canvas.toBlob(async (blob) => {
    if (!blob || state.ws !== ws || ws.readyState !== WebSocket.OPEN) return;
    const bytes = new Uint8Array(await blob.arrayBuffer());
    ws.send(pushMessage({ type: "frame", t, format: "jpeg" }, bytes));
    state.sentFrames++;
  }, "image/jpeg", 0.85);
}

function startAudio() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx || !state.media) return;
  const ctx = new Ctx();
  const input = ctx.createMediaStreamSource(state.media);
  const proc = ctx.createScriptProcessor(4096, 1, 1);
  const mute = ctx.createGain();
  mute.gain.value = 0;
  let pending = [], pendingLen = 0, startT = null;
  proc.onaudioprocess = (ev) => {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const samples = new Float32Array(ev.inputBuffer.getChannelData(0));  // copy: the buffer is reused
    if (startT === null) startT = Math.max(0, now() - samples.length / ctx.sampleRate);
    pending.push(samples);
    pendingLen += samples.length;
    if (pendingLen < ctx.sampleRate / 2) return;  // send about every half second
    const all = new Float32Array(pendingLen);
    let at = 0;
    for (const p of pending) { all.set(p, at); at += p.length; }
    ws.send(pushMessage({ type: "audio", t: startT, format: "f32le", rate: ctx.sampleRate, channels: 1 }, all));
    startT += pendingLen / ctx.sampleRate;
    pending = []; pendingLen = 0;
  };
  input.connect(proc);
  proc.connect(mute);
  mute.connect(ctx.destination);
  state.audio = ctx;
}

function stopMedia() {
  clearInterval(state.frameTimer);
  state.frameTimer = null;
  if (state.audio) { state.audio.close(); state.audio = null; }
  if (state.ws) {
    const ws = state.ws;
    state.ws = null;
    if (ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify({ type: "end" })); ws.close(1000); }
  }
  if (state.media) { state.media.getTracks().forEach((t) => t.stop()); state.media = null; }
}

function showPlayer({ stream = null, url = null, local = false }) {
  const video = $("player");
  $("noplay").classList.add("hidden");
  if (state.objectUrl) { URL.revokeObjectURL(state.objectUrl); state.objectUrl = null; }
  video.srcObject = null;
  video.removeAttribute("src");
  video.controls = !stream;
  if (stream) {
    video.srcObject = stream;
    video.play().catch(() => {});
  } else if (url) {
    if (local) state.objectUrl = url;
    video.src = url;
    video.onerror = () => $("noplay").classList.remove("hidden");
    video.play().catch(() => {});
  } else {
    $("noplay").classList.remove("hidden");
  }
}

function attach(sid) {
  state.sid = sid;
  state.history = [];
  $("stop").disabled = false;
  $("question").disabled = false;
  $("ask").disabled = false;
  clearInterval(state.poll);
  state.poll = setInterval(pollStats, 1000);
  pollStats();
  $("log").querySelectorAll(".hint").forEach((n) => n.remove());
}

async function closeSession(remove = true) {
  stopMedia();
  clearInterval(state.poll);
  const sid = state.sid;
  state.sid = null;
  $("stop").disabled = true;
  $("question").disabled = true;
  $("ask").disabled = true;
  if (sid && remove) {
    try { await api("DELETE", `/v1/sessions/${sid}`); } catch (e) { say(String(e.message || e), "error"); }
    $("session").textContent = "no session";
    refreshSessions();
  }
}

async function refreshSessions() {
  try {
    const data = await api("GET", "/v1/sessions");
    const select = $("sessions");
    select.innerHTML = "";
    for (const s of data.sessions) {
      const o = document.createElement("option");
      o.value = s.id;
      o.textContent = `${s.id} · ${s.source.kind}${s.source.url ? " " + s.source.url : ""} · ${Math.round(s.stream_seconds)} s`;
      select.appendChild(o);
    }
    if (!data.sessions.length) select.innerHTML = '<option value="">(no sessions)</option>';
  } catch (e) { /* the key box says what is missing */ }
}

// --- asking: server-sent events read from a fetch stream ----------------------------------------------------

function say(text, kind) {
  const div = document.createElement("div");
  div.className = "msg " + kind;
  div.textContent = text;
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

async function ask(question) {
  if (!state.sid || state.asking) return;
  state.asking = true;
  $("ask").disabled = true;
  say(question, "q");
  const bubble = say("", "a streaming");
  let text = "";
  try {
    const r = await fetch(`/v1/sessions/${state.sid}/ask`, {
      method: "POST", headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify({ question, stream: true }),
    });
    if (!r.ok) {
      let msg = r.statusText;
      try { msg = (await r.json()).error.message; } catch (e) { /* keep the status text */ }
      throw new Error(`HTTP ${r.status}: ${msg}`);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", done = null;
    for (;;) {
      const { value, done: end } = await reader.read();
      if (end) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (!data) continue;
        const payload = JSON.parse(data);
        if (event === "error") throw new Error(payload.error.message);
        if (event === "done") done = payload;
        else { text += payload.token; bubble.textContent = text; }
        $("log").scrollTop = $("log").scrollHeight;
      }
    }
    bubble.classList.remove("streaming");
    bubble.classList.add("done");
    if (done) bubble.textContent = done.answer;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = done ? `${done.tokens} tokens${done.finish_reason === "length" ? " · cut at the length limit" : ""}` : "";
    bubble.appendChild(meta);
  } catch (e) {
    bubble.classList.remove("streaming");
    bubble.classList.add("error");
    bubble.textContent = (text ? text + "\n" : "") + String(e.message || e);
  } finally {
    state.asking = false;
    $("ask").disabled = !state.sid;
  }
}

// --- telemetry ---------------------------------------------------------------------------------------------

async function pollStats() {
  const sid = state.sid;
  if (!sid) return;
  let s;
  try { s = await api("GET", `/v1/sessions/${sid}`); } catch (e) {
    $("session").textContent = `${sid}: ${e.message}`;
    return;
  }
  if (sid !== state.sid) return;
  state.history.push({ video: s.video_tokens_held, audio: s.audio_tokens_held, loss: s.ttt_loss, drops: s.drops });
  if (state.history.length > HISTORY) state.history.shift();
  $("v-video").textContent = s.video_tokens_held;
  $("v-audio").textContent = s.audio_tokens_held;
  $("v-loss").textContent = s.ttt_loss == null ? "–" : s.ttt_loss.toPrecision(3);
  $("v-drops").textContent = s.drops;
  $("v-frames").textContent = s.frames;
  $("v-seconds").textContent = `${s.stream_seconds.toFixed(1)} s`;
  $("v-bytes").textContent = `${(s.memory_bytes / 2 ** 20).toFixed(2)} MB`;
  $("v-fps").textContent = s.frames_per_second.toFixed(2);
  $("v-queue").textContent = s.queue_depth;
  const source = s.source.kind + (s.source.url && s.source.kind !== "upload" ? ` ${s.source.url}` : "");
  $("session").textContent = `session ${s.id} · ${source} · ${s.status}${s.error ? ": " + s.error : ""}` +
    (state.sentFrames ? ` · ${state.sentFrames} frames sent` : "");
  $("session").dataset.frames = s.frames;
  drawChart();
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const pad = { l: 46, r: 46, t: 10, b: 20 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  const pts = state.history;
  const maxTokens = niceMax(Math.max(1, ...pts.map((p) => Math.max(p.video, p.audio))));
  const losses = pts.map((p) => p.loss).filter((v) => v != null && isFinite(v));
  const maxLoss = losses.length ? niceMax(Math.max(...losses)) : 1;
  g.font = "11px system-ui, sans-serif";
  g.strokeStyle = "#e6e9ef";
  g.fillStyle = color("--muted");
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + ph - (ph * i) / 4;
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(pad.l + pw, y); g.stroke();
    g.textAlign = "right"; g.fillText(fmt(maxTokens * i / 4), pad.l - 6, y + 4);
    g.textAlign = "left"; g.fillStyle = color("--loss");
    g.fillText((maxLoss * i / 4).toPrecision(2), pad.l + pw + 6, y + 4);
    g.fillStyle = color("--muted");
  }
  g.textAlign = "left";
  g.fillText("tokens held", pad.l, h - 4);
  g.textAlign = "right";
  g.fillText(`last ${pts.length} s`, pad.l + pw, h - 4);
  if (pts.length < 1) return;
  const span = Math.max(WINDOW, pts.length) - 1;  // the x axis grows to HISTORY points, then scrolls
  const x = (i) => pad.l + (pw * i) / span;
  const line = (key, max, stroke, dash) => {
    g.strokeStyle = stroke; g.lineWidth = 2; g.setLineDash(dash || []);
    g.beginPath();
    let started = false;
    pts.forEach((p, i) => {
      const v = p[key];
      if (v == null || !isFinite(v)) return;
      const y = pad.t + ph - (ph * v) / max;
      if (started) g.lineTo(x(i), y); else { g.moveTo(x(i), y); started = true; }
    });
    g.stroke();
    g.setLineDash([]);
  };
  line("video", maxTokens, color("--video"));
  line("audio", maxTokens, color("--audio"));
  line("loss", maxLoss, color("--loss"), [5, 3]);
  g.fillStyle = color("--drops");  // a red tick where frames were dropped
  pts.forEach((p, i) => {
    if (i > 0 && p.drops > pts[i - 1].drops) g.fillRect(x(i) - 1.5, pad.t + ph - 10, 3, 10);
  });
}

function niceMax(v) {
  const e = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * e >= v) return m * e;
  return 10 * e;
}

function fmt(v) { return v >= 1000 ? (v / 1000).toFixed(v % 1000 ? 1 : 0) + "k" : String(Math.round(v)); }

// --- wiring --------------------------------------------------------------------------------------------------

function selectTab(name) {
  state.tab = name;
  document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".pane").forEach((p) => p.classList.toggle("hidden", p.dataset.pane !== name));
  if (name === "existing") refreshSessions();
}

async function init() {
  $("apikey").value = localStorage.getItem("avmem-api-key") || "";
  $("apikey").addEventListener("change", () => {
    localStorage.setItem("avmem-api-key", apiKey());
    needKey(false);
    probe();
  });
  document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => selectTab(b.dataset.tab)));
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", () => closeSession(true));
  $("refresh").addEventListener("click", refreshSessions);
  $("ask-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("question").value.trim();
    if (!q) return;
    $("question").value = "";
    ask(q);
  });
  window.addEventListener("resize", drawChart);
  drawChart();
  await probe();
}

async function probe() {
  try {
    const h = await (await fetch("/health")).json();
    $("server").textContent = `model ${h.model} · connected`;
    await api("GET", "/v1/models");
    needKey(false);
  } catch (e) {
    if (!String(e.message).includes("401")) $("server").textContent = "server unreachable";
  }
}

init();
