// surg3d operator view: a Foxglove WebSocket client (subprotocol foxglove.sdk.v1; JSON channels and the binary
// splat channel) with the 3D view (scene3d.js: the live Gaussian model as splats, three + Spark from
// node_modules, no build step), a time slider, images, status, controls and region marking. Without the 3D
// libraries (npm ci not run) the rest of the page works. The bridge URL comes from ?ws=... or config.json.

const $ = (id) => document.getElementById(id);
const LEVELS = ["OK", "WARN", "ERROR", "STALE"];

// ---------------------------------------------------------------- state (window.surg3d: also for tests)
const S = {
  connected: false, channels: new Map(), subs: new Map(), services: new Map(), counts: new Map(),
  splats: null, rois: [], camera: null, calib: null, trainer: null, health: null, span: null,
  calls: new Map(), nextCall: 1, nextSub: 1, clientChannels: new Map(), params: new Map(), log: [],
};
window.surg3d = S;

function log(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("log").prepend(li);
  S.log.push(text);
  while ($("log").children.length > 100) $("log").lastChild.remove();
}

function b64bytes(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// ---------------------------------------------------------------- protocol
let ws = null;
const enc = new TextEncoder(), dec = new TextDecoder();
const WANTED = ["/ui/splats", "/depth/image", "/surg3d/node_status", "/recon/status", "/recon/render/image", "/recon/deoccluded/image",
  "/recon/render/depth", "/ui/live", "/ui/camera_calibration", "/ui/rois", "/tf", "/diagnostics",
  "/surg3d/health", "/recon/view/image"];

async function bridgeUrl() {
  const q = new URLSearchParams(location.search).get("ws");
  if (q) return q;
  try {
    const cfg = await (await fetch("config.json", { cache: "no-store" })).json();
    if (cfg.ws) return cfg.ws;
  } catch (e) { /* no config.json: fall back to the default bridge */ }
  return `ws://${location.hostname || "127.0.0.1"}:8765`;
}

async function connect() {
  const url = await bridgeUrl();
  ws = new WebSocket(url, ["foxglove.sdk.v1"]);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { S.connected = true; setBadge($("conn"), 0, "connected"); log(`connected to ${url}`); };
  ws.onclose = () => {
    S.connected = false; setBadge($("conn"), 2, "disconnected");
    S.channels.clear(); S.subs.clear(); S.services.clear(); S.clientChannels.clear();
    setTimeout(connect, 1500);
  };
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onJson(JSON.parse(ev.data)) : onBinary(ev.data));
}

function send(op) { if (ws && ws.readyState === 1) ws.send(JSON.stringify(op)); }

function onJson(op) {
  switch (op.op) {
    case "serverInfo":
      send({ op: "getParameters", parameterNames: [], id: "init" });
      break;
    case "advertise": {
      const subs = [];
      for (const ch of op.channels) {
        S.channels.set(ch.id, ch);
        if (WANTED.includes(ch.topic)) {
          const id = S.nextSub++;
          S.subs.set(id, ch.topic);
          subs.push({ id, channelId: ch.id });
        }
      }
      if (subs.length) send({ op: "subscribe", subscriptions: subs });
      renderTopics();
      break;
    }
    case "unadvertise":
      for (const id of op.channelIds) S.channels.delete(id);
      renderTopics();
      break;
    case "advertiseServices":
      for (const s of op.services) S.services.set(s.name, s.id);
      break;
    case "parameterValues":
      for (const p of op.parameters) S.params.set(p.name, p);
      renderParams();
      break;
    case "status":
      log(`bridge: ${op.message}`);
      break;
    case "serviceCallFailure": {
      const p = S.calls.get(op.callId);
      if (p) { S.calls.delete(op.callId); p.reject(new Error(op.message)); }
      break;
    }
    default:
      break;
  }
}

function onBinary(buf) {
  const dv = new DataView(buf);
  const opcode = dv.getUint8(0);
  if (opcode === 1) {            // message data: u32 subscription, u64 log time, payload
    const topic = S.subs.get(dv.getUint32(1, true));
    if (!topic) return;
    S.counts.set(topic, (S.counts.get(topic) || 0) + 1);
    if (topic === "/ui/splats") {
      if (!view3d) return;
      view3d.onSplats(buf.slice(13));
      if (S.splats) $("cloud-info").textContent = `${S.splats.n} splats` + (S.shownStamp ? " (past moment)" : "");
      return;
    }
    onMessage(topic, JSON.parse(dec.decode(new Uint8Array(buf, 13))));
  } else if (opcode === 3) {     // service call response: u32 service, u32 call, u32 encoding length, ...
    const callId = dv.getUint32(5, true), n = dv.getUint32(9, true);
    const p = S.calls.get(callId);
    if (!p) return;
    S.calls.delete(callId);
    const body = dec.decode(new Uint8Array(buf, 13 + n));
    p.resolve(body ? JSON.parse(body) : {});
  }
}

function call(service, request) {
  const sid = S.services.get(service);
  if (sid === undefined) return Promise.reject(new Error(`service ${service} not offered by the bridge`));
  const callId = S.nextCall++;
  const payload = enc.encode(JSON.stringify(request || {})), e = enc.encode("json");
  const buf = new Uint8Array(13 + e.length + payload.length);
  const dv = new DataView(buf.buffer);
  dv.setUint8(0, 2); dv.setUint32(1, sid, true); dv.setUint32(5, callId, true); dv.setUint32(9, e.length, true);
  buf.set(e, 13); buf.set(payload, 13 + e.length);
  ws.send(buf);
  return new Promise((resolve, reject) => {
    S.calls.set(callId, { resolve, reject });
    setTimeout(() => { if (S.calls.delete(callId)) reject(new Error(`${service}: no answer`)); }, 15000);
  });
}

function publish(topic, msg) {
  let id = S.clientChannels.get(topic);
  if (id === undefined) {
    id = S.clientChannels.size + 1;
    S.clientChannels.set(topic, id);
    send({ op: "advertise", channels: [{ id, topic, encoding: "json", schemaName: "" }] });
  }
  const payload = enc.encode(JSON.stringify(msg));
  const buf = new Uint8Array(5 + payload.length);
  new DataView(buf.buffer).setUint8(0, 1);
  new DataView(buf.buffer).setUint32(1, id, true);
  buf.set(payload, 5);
  ws.send(buf);
}

// ---------------------------------------------------------------- messages
function onMessage(topic, m) {
  switch (topic) {
    case "/depth/image": if (view3d) view3d.setDepth(m, S.calib, S.camera); break;
    case "/surg3d/node_status": onNodeStatus(m); break;
    case "/recon/status": onTrainer(m); break;
    case "/ui/live": showJpeg("img-live", m); break;
    case "/recon/render/image": showJpeg("img-render", m); break;
    case "/recon/deoccluded/image": showJpeg("img-deoccluded", m); break;
    case "/recon/view/image": showJpeg("img-view", m); break;
    case "/recon/render/depth": showDepth("img-depth", m); break;
    case "/ui/camera_calibration": S.calib = m; break;
    case "/ui/rois": S.rois = m.entities.map(roiOf); renderRois(); if (view3d) view3d.setRois(S.rois); break;
    case "/tf": onTf(m); break;
    case "/diagnostics": renderDiag(m); break;
    case "/surg3d/health": S.health = m; setBadge($("health"), m.level, LEVELS[m.level] || "?", m.message); break;
    default: break;
  }
}

function setBadge(el, level, text, title) {
  el.className = `badge lvl${Math.min(3, Math.max(0, level))}`;
  el.textContent = text;
  if (title !== undefined) el.title = title;
}

function onTrainer(m) {
  S.trainer = m;
  $("trainer-state").textContent = m.state;
  $("trainer-info").textContent = `${m.num_gaussians} Gaussians, ${m.iterations} it (${Number(m.iterations_per_second).toFixed(1)}/s), ` +
    `PSNR ${Number(m.psnr_recent).toFixed(1)} dB, ${m.frames_used}/${m.frames_received} frames, ${m.backend} ${m.device}`;
}

// the trainer's heartbeat carries the model's stamp range: the time slider's
function onNodeStatus(m) {
  if (!m.node.endsWith("trainer")) return;
  const v = Object.fromEntries(m.values.map((kv) => [kv.key, kv.value]));
  if (v["model.first_stamp_ns"] === undefined) return;
  S.span = [Number(v["model.first_stamp_ns"]), Number(v["model.newest_stamp_ns"])];
  $("psnr-regions").textContent = v.psnr_regions !== undefined ? `region PSNR ${v.psnr_regions} dB` : "";
}

function showJpeg(id, m) { $(id).src = `data:image/${m.format};base64,${m.data}`; }

function showDepth(id, m) {
  if (m.encoding !== "16UC1") return;
  const bytes = b64bytes(m.data), w = m.width, h = m.height, step = m.step / 2;
  const d = new Uint16Array(bytes.buffer, 0, bytes.length / 2);
  let lo = 65535, hi = 0;
  for (let i = 0; i < d.length; i++) if (d[i]) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
  const cv = $(id);
  if (cv.width !== w || cv.height !== h) { cv.width = w; cv.height = h; }
  const ctx = cv.getContext("2d"), img = ctx.createImageData(w, h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const v = d[y * step + x], o = 4 * (y * w + x);
    if (!v) { img.data[o + 3] = 255; continue; }
    const t = hi > lo ? (v - lo) / (hi - lo) : 0;   // near: warm, far: cool
    img.data[o] = 255 * (1 - t); img.data[o + 1] = 255 * (1 - Math.abs(2 * t - 1)); img.data[o + 2] = 255 * t;
    img.data[o + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function onTf(m) {
  for (const t of m.transforms) {
    if (t.parent_frame_id === "world" && t.child_frame_id.endsWith("optical")) {
      S.camera = { t: [t.translation.x, t.translation.y, t.translation.z], R: quatToMat(t.rotation) };
      if (view3d) view3d.setCamera(S.camera, S.calib);
    }
  }
}

function roiOf(e) {
  const s = e.spheres[0];
  return { id: Number(e.id.replace("roi", "")), label: (e.metadata.find((k) => k.key === "label") || {}).value || "",
    c: [s.pose.position.x, s.pose.position.y, s.pose.position.z], r: s.size.x / 2 };
}

function renderRois() {
  const ul = $("roi-list");
  ul.innerHTML = "";
  for (const r of S.rois) {
    const li = document.createElement("li");
    li.className = "roi";
    li.textContent = `#${r.id} ${r.label} (${r.c.map((v) => (v * 1000).toFixed(1)).join(", ")}) mm, r ${(r.r * 1000).toFixed(1)} mm `;
    const del = document.createElement("button");
    del.textContent = "x";
    del.onclick = () => call("/recon/roi/delete", { id: r.id }).then((res) => log(res.message), (e) => log(e.message));
    li.append(del);
    ul.append(li);
  }
}

function renderDiag(m) {
  const rows = m.status.map((s) => {
    const lvl = typeof s.level === "number" ? s.level : 3;
    return `<tr><td><span class="badge lvl${lvl}">${LEVELS[lvl]}</span></td><td>${esc(s.name.replace("surg3d: ", ""))}</td>` +
      `<td>${esc(s.message)}</td></tr>`;
  });
  $("diag").innerHTML = rows.join("");
}

function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]); }

function renderTopics() {
  const ul = $("topics");
  ul.innerHTML = "";
  for (const ch of [...S.channels.values()].sort((a, b) => a.topic.localeCompare(b.topic))) {
    const li = document.createElement("li");
    li.className = "topic";
    li.dataset.topic = ch.topic;
    li.textContent = `${ch.topic} (${ch.schemaName})`;
    ul.append(li);
  }
}

function renderParams() {
  const div = $("params");
  div.innerHTML = "";
  div.className = "";
  for (const p of [...S.params.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.value = p.value;
    input.dataset.name = p.name;
    input.onchange = () => {
      const v = Number(input.value);
      const param = { name: p.name, value: input.value.trim() === "" ? input.value : v };
      if (p.type === "float64") param.type = "float64";
      send({ op: "setParameters", id: `set-${Date.now()}`, parameters: [param] });
    };
    label.append(p.name, input);
    div.append(label);
  }
}

function quatToMat(q) {
  const { x, y, z, w } = q;
  return [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
    [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
    [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]];
}

// ---------------------------------------------------------------- 3D view (scene3d.js) and time slider
let view3d = null;
S.samplePoint = () => (view3d ? view3d.samplePoint() : null);

async function setupScene() {
  try {
    const { createScene } = await import("./scene3d.js");
    view3d = createScene($("scene"), S, log);
  } catch (e) {
    log(`3D view unavailable (${e.message}): run 'npm ci' in surg3d_nodes/viewer/web`);
    return;
  }
  window.view3d = view3d;
  view3d.setupMouse((u, v) => { if (marking) markAt(u, v); });
  view3d.setRois(S.rois);
  if (S.camera) view3d.setCamera(S.camera, S.calib);
  view3d.draw();
}

// the slider's right end is live (the newest frame); elsewhere it picks a moment of the surgery
function onSlider() {
  const x = Number($("time-slider").value), live = x >= 1000 || !S.span;
  const stamp = live ? 0 : Math.round(S.span[0] + (S.span[1] - S.span[0]) * x / 1000);
  $("time-label").textContent = live ? "live" : `-${((S.span[1] - stamp) / 1e9).toFixed(1)} s`;
  publish("/ui/splats/time", { stamp_ns: stamp });
  S.shownStamp = stamp;
}

let marking = false;
function markAt(u, v) {
  const p = view3d.pick(u, v);
  if (!p) { log("no splat under the cursor"); return; }
  publish("/recon/roi", { center: { x: p[0], y: p[1], z: p[2] }, label: `roi ${S.rois.length + 1}` });
  log(`marked a region at (${p.map((x) => (x * 1000).toFixed(1)).join(", ")}) mm`);
}

// ---------------------------------------------------------------- controls
function setupControls() {
  const run = (label, service, req) => () => call(service, req).then(
    (res) => log(`${label}: ${res.success === false ? "failed" : "ok"} ${res.message || ""} ${res.path || ""}`),
    (e) => log(`${label} refused: ${e.message}`));
  $("btn-pause").onclick = run("pause", "/recon/pause", {});
  $("btn-resume").onclick = run("resume", "/recon/resume", {});
  $("btn-reset").onclick = () => { if (confirm("Discard the reconstruction and start again?")) run("reset", "/recon/reset", {})(); };
  $("btn-save").onclick = run("save", "/recon/save", { kind: "ply" });
  $("btn-checkpoint").onclick = run("checkpoint", "/recon/save", { kind: "checkpoint" });
  $("btn-view").onclick = () => {
    if (!view3d) return;
    publish("/recon/view_request", { pose: view3d.viewPose(), ...view3d.viewSize(), deoccluded: $("chk-deocc").checked });
    log("asked for a render of this view");
  };
  $("btn-scope").onclick = () => {
    if (view3d && !view3d.lookFromEndoscope(S.camera, S.calib)) log("no endoscope pose or calibration yet");
  };
  $("btn-roi-clear").onclick = run("clear regions", "/recon/roi/clear", {});
  $("time-slider").oninput = onSlider;
  $("btn-cloud").onclick = () => {
    if (!view3d) return;
    view3d.setMode(view3d.mode === "splats" ? "cloud" : "splats");
    $("btn-cloud").classList.toggle("on", view3d.mode === "cloud");
  };
  $("btn-mark").onclick = () => {
    marking = !marking;
    $("btn-mark").classList.toggle("on", marking);
    $("scene").classList.toggle("marking", marking);
  };
}

setupControls();
setupScene().then(connect);
