// surg3d operator view: a Foxglove WebSocket client (subprotocol foxglove.sdk.v1, JSON channels) with a
// software point renderer (2D canvas, no WebGL needed), images, status, controls and region marking.
// No build step, no dependencies. The bridge URL comes from ?ws=... or config.json (written by `surg3d ui`).
"use strict";

const $ = (id) => document.getElementById(id);
const LEVELS = ["OK", "WARN", "ERROR", "STALE"];

// ---------------------------------------------------------------- state (window.surg3d: also for tests)
const S = {
  connected: false, channels: new Map(), subs: new Map(), services: new Map(), counts: new Map(),
  cloud: null, drawn: 0, rois: [], camera: null, calib: null, trainer: null, health: null,
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
const WANTED = ["/recon/points", "/recon/status", "/recon/render/image", "/recon/deoccluded/image",
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
    case "/recon/points": setCloud(m); break;
    case "/recon/status": onTrainer(m); break;
    case "/ui/live": showJpeg("img-live", m); break;
    case "/recon/render/image": showJpeg("img-render", m); break;
    case "/recon/deoccluded/image": showJpeg("img-deoccluded", m); break;
    case "/recon/view/image": showJpeg("img-view", m); break;
    case "/recon/render/depth": showDepth("img-depth", m); break;
    case "/ui/camera_calibration": S.calib = m; scheduleDraw(); break;
    case "/ui/rois": S.rois = m.entities.map(roiOf); renderRois(); scheduleDraw(); break;
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
      scheduleDraw();
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

// ---------------------------------------------------------------- 3D view (software renderer)
const view = { target: [0, 0, 0.1], dist: 0.15, yaw: 0, pitch: 0, fov: 50 * Math.PI / 180, fitted: false };
let drawPending = false;
let screen = null;     // projected points of the last frame: {x, y, z} Float32Arrays

function setCloud(m) {
  const bytes = b64bytes(m.data), stride = m.point_stride, n = Math.floor(bytes.length / stride);
  const dv = new DataView(bytes.buffer);
  const off = Object.fromEntries(m.fields.map((f) => [f.name, f.offset]));
  const xyz = new Float32Array(3 * n), rgba = new Uint8Array(4 * n);
  for (let i = 0; i < n; i++) {
    const b = i * stride;
    xyz[3 * i] = dv.getFloat32(b + off.x, true); xyz[3 * i + 1] = dv.getFloat32(b + off.y, true);
    xyz[3 * i + 2] = dv.getFloat32(b + off.z, true);
    rgba[4 * i] = off.red !== undefined ? bytes[b + off.red] : 200;
    rgba[4 * i + 1] = off.green !== undefined ? bytes[b + off.green] : 200;
    rgba[4 * i + 2] = off.blue !== undefined ? bytes[b + off.blue] : 200;
    rgba[4 * i + 3] = off.alpha !== undefined ? bytes[b + off.alpha] : 255;
  }
  S.cloud = { n, xyz, rgba };
  if (!view.fitted && n > 0) fitView();
  $("cloud-info").textContent = `${n} points`;
  scheduleDraw();
}

function fitView() {
  const { n, xyz } = S.cloud;
  const c = [0, 0, 0];
  for (let i = 0; i < n; i++) for (let k = 0; k < 3; k++) c[k] += xyz[3 * i + k] / n;
  let r = 0;
  for (let i = 0; i < n; i++) r = Math.max(r, Math.hypot(xyz[3 * i] - c[0], xyz[3 * i + 1] - c[1], xyz[3 * i + 2] - c[2]));
  view.target = c; view.dist = Math.max(2.2 * r, 0.01); view.yaw = 0; view.pitch = 0; view.fitted = true;
}

function basis() {   // optical convention: x right, y down, z forward; orbit about the target
  const cp = Math.cos(view.pitch), f = [cp * Math.sin(view.yaw), Math.sin(view.pitch), cp * Math.cos(view.yaw)];
  let r = cross([0, 1, 0], f);
  const rn = Math.hypot(...r) || 1;
  r = r.map((v) => v / rn);
  const d = cross(f, r);
  const eye = view.target.map((t, k) => t - view.dist * f[k]);
  return { f, r, d, eye };
}
function cross(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
function quatToMat(q) {
  const { x, y, z, w } = q;
  return [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
    [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
    [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]];
}

function scheduleDraw() { if (!drawPending) { drawPending = true; requestAnimationFrame(draw); } }

function project(B, W, H, p) {
  const v = [p[0] - B.eye[0], p[1] - B.eye[1], p[2] - B.eye[2]];
  const z = v[0] * B.f[0] + v[1] * B.f[1] + v[2] * B.f[2];
  if (z <= 1e-4) return null;
  const fpx = 0.5 * H / Math.tan(view.fov / 2);
  return [W / 2 + fpx * (v[0] * B.r[0] + v[1] * B.r[1] + v[2] * B.r[2]) / z,
    H / 2 + fpx * (v[0] * B.d[0] + v[1] * B.d[1] + v[2] * B.d[2]) / z, z, fpx];
}

function draw() {
  drawPending = false;
  const cv = $("scene"), ctx = cv.getContext("2d"), W = cv.width, H = cv.height;
  const img = ctx.createImageData(W, H), px = img.data, zbuf = new Float32Array(W * H).fill(Infinity);
  for (let i = 0; i < W * H; i++) { px[4 * i] = 11; px[4 * i + 1] = 13; px[4 * i + 2] = 16; px[4 * i + 3] = 255; }
  const B = basis();
  let drawn = 0;
  if (S.cloud) {
    const { n, xyz, rgba } = S.cloud;
    const sx = new Float32Array(n), sy = new Float32Array(n), sz = new Float32Array(n);
    const fpx = 0.5 * H / Math.tan(view.fov / 2);
    for (let i = 0; i < n; i++) {
      const vx = xyz[3 * i] - B.eye[0], vy = xyz[3 * i + 1] - B.eye[1], vz = xyz[3 * i + 2] - B.eye[2];
      const z = vx * B.f[0] + vy * B.f[1] + vz * B.f[2];
      sz[i] = z;
      if (z <= 1e-4) { sx[i] = -1; continue; }
      const u = W / 2 + fpx * (vx * B.r[0] + vy * B.r[1] + vz * B.r[2]) / z;
      const v = H / 2 + fpx * (vx * B.d[0] + vy * B.d[1] + vz * B.d[2]) / z;
      sx[i] = u; sy[i] = v;
      const x0 = Math.floor(u), y0 = Math.floor(v);
      if (x0 < 0 || y0 < 0 || x0 >= W - 1 || y0 >= H - 1 || rgba[4 * i + 3] < 20) continue;
      drawn++;
      for (let dy = 0; dy < 2; dy++) for (let dx = 0; dx < 2; dx++) {
        const k = (y0 + dy) * W + x0 + dx;
        if (z < zbuf[k]) {
          zbuf[k] = z; px[4 * k] = rgba[4 * i]; px[4 * k + 1] = rgba[4 * i + 1]; px[4 * k + 2] = rgba[4 * i + 2];
        }
      }
    }
    screen = { sx, sy, sz, W, H };
  }
  S.drawn = drawn;
  ctx.putImageData(img, 0, 0);
  drawFrustum(ctx, B, W, H);
  drawRois(ctx, B, W, H);
}

function drawFrustum(ctx, B, W, H) {
  if (!S.camera) return;
  const { t, R } = S.camera, c = S.calib;
  const w = c ? c.width : 640, h = c ? c.height : 512, K = c ? c.K : [500, 0, 320, 0, 500, 256, 0, 0, 1];
  const depth = Math.max(view.dist * 0.25, 0.005);
  const toWorld = (p) => [0, 1, 2].map((k) => R[k][0] * p[0] + R[k][1] * p[1] + R[k][2] * p[2] + t[k]);
  const corners = [[0, 0], [w, 0], [w, h], [0, h]].map(([u, v]) =>
    toWorld([(u - K[2]) / K[0] * depth, (v - K[5]) / K[4] * depth, depth]));
  const o = project(B, W, H, t), pc = corners.map((p) => project(B, W, H, p));
  if (!o || pc.some((p) => !p)) return;
  ctx.strokeStyle = "#7fd3ff"; ctx.lineWidth = 1.5; ctx.beginPath();
  for (const p of pc) { ctx.moveTo(o[0], o[1]); ctx.lineTo(p[0], p[1]); }
  ctx.moveTo(pc[3][0], pc[3][1]);
  for (const p of pc) ctx.lineTo(p[0], p[1]);
  ctx.stroke();
}

function drawRois(ctx, B, W, H) {
  for (const r of S.rois) {
    const p = project(B, W, H, r.c);
    if (!p) continue;
    const rad = Math.max(4, p[3] * r.r / p[2]);
    ctx.strokeStyle = "#ffd700"; ctx.fillStyle = "rgba(255, 215, 0, 0.25)"; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(p[0], p[1], rad, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
    ctx.fillStyle = "#ffd700"; ctx.font = "12px sans-serif";
    ctx.fillText(`#${r.id} ${r.label}`, p[0] + rad + 3, p[1] - 3);
  }
}

// nearest drawn point to a canvas pixel (front-most among those within `tol` px), or -1
function pick(u, v, tol = 6) {
  if (!screen || !S.cloud) return -1;
  let best = -1, bestZ = Infinity;
  for (let i = 0; i < S.cloud.n; i++) {
    if (screen.sx[i] < 0 || Math.abs(screen.sx[i] - u) > tol || Math.abs(screen.sy[i] - v) > tol) continue;
    if (screen.sz[i] < bestZ) { bestZ = screen.sz[i]; best = i; }
  }
  return best;
}
// for tests: canvas-pixel position of a drawn point near the image centre
S.samplePoint = () => {
  if (!screen) return null;
  let best = null, bd = Infinity;
  for (let i = 0; i < S.cloud.n; i++) {
    const d = Math.hypot(screen.sx[i] - screen.W / 2, screen.sy[i] - screen.H / 2);
    if (screen.sx[i] >= 0 && d < bd) { bd = d; best = [screen.sx[i], screen.sy[i], screen.W, screen.H]; }
  }
  return best;
};

function setupScene() {
  const cv = $("scene");
  let drag = null;
  const toCanvas = (e) => {
    const r = cv.getBoundingClientRect();
    return [(e.clientX - r.left) * cv.width / r.width, (e.clientY - r.top) * cv.height / r.height];
  };
  cv.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, moved: false, shift: e.shiftKey }; });
  window.addEventListener("mouseup", (e) => {
    if (drag && !drag.moved && marking) markAt(...toCanvas(e));
    drag = null;
  });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) < 3 && !drag.moved) return;
    drag.moved = true; drag.x = e.clientX; drag.y = e.clientY;
    if (drag.shift) {
      const B = basis(), s = view.dist * 0.002;
      view.target = view.target.map((t, k) => t - s * (dx * B.r[k] + dy * B.d[k]));
    } else {
      view.yaw += dx * 0.01;
      view.pitch = Math.max(-1.5, Math.min(1.5, view.pitch + dy * 0.01));
    }
    scheduleDraw();
  });
  cv.addEventListener("wheel", (e) => { e.preventDefault(); view.dist *= Math.exp(e.deltaY * 0.001); scheduleDraw(); },
    { passive: false });
  cv.addEventListener("dblclick", () => { if (S.cloud) fitView(); scheduleDraw(); });
}

// camera-to-world pose of the current 3D view (optical frame: columns right, down, forward) as a ROS Pose
function viewPose() {
  const B = basis(), m = [[B.r[0], B.d[0], B.f[0]], [B.r[1], B.d[1], B.f[1]], [B.r[2], B.d[2], B.f[2]]];
  const tr = m[0][0] + m[1][1] + m[2][2];
  let q;
  if (tr > 0) {
    const s = 2 * Math.sqrt(tr + 1);
    q = [(m[2][1] - m[1][2]) / s, (m[0][2] - m[2][0]) / s, (m[1][0] - m[0][1]) / s, s / 4];
  } else {
    const i = m[0][0] > m[1][1] ? (m[0][0] > m[2][2] ? 0 : 2) : (m[1][1] > m[2][2] ? 1 : 2);
    const j = (i + 1) % 3, k = (i + 2) % 3, s = 2 * Math.sqrt(1 + m[i][i] - m[j][j] - m[k][k]);
    q = [0, 0, 0, (m[k][j] - m[j][k]) / s];
    q[i] = s / 4; q[j] = (m[j][i] + m[i][j]) / s; q[k] = (m[k][i] + m[i][k]) / s;
  }
  return { position: { x: B.eye[0], y: B.eye[1], z: B.eye[2] }, orientation: { x: q[0], y: q[1], z: q[2], w: q[3] } };
}

let marking = false;
function markAt(u, v) {
  const i = pick(u, v);
  if (i < 0) { log("no point of the cloud under the cursor"); return; }
  const p = S.cloud.xyz.slice(3 * i, 3 * i + 3);
  publish("/recon/roi", { center: { x: p[0], y: p[1], z: p[2] }, label: `roi ${S.rois.length + 1}` });
  log(`marked a region at (${[...p].map((x) => (x * 1000).toFixed(1)).join(", ")}) mm`);
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
    publish("/recon/view_request", { pose: viewPose(), width: 0, height: 0, deoccluded: $("chk-deocc").checked });
    log("asked for a render of this view");
  };
  $("btn-roi-clear").onclick = run("clear regions", "/recon/roi/clear", {});
  $("btn-mark").onclick = () => {
    marking = !marking;
    $("btn-mark").classList.toggle("on", marking);
    $("scene").classList.toggle("marking", marking);
  };
}

setupScene();
setupControls();
scheduleDraw();
connect();
