// The operator page's 3D view: the live Gaussian model as splats (Spark on three.js, WebGL2), or the measured
// stereo cloud, with the endoscope's frustum and the regions of interest in the same scene. Orbit about a
// target (drag), pan (shift+drag), zoom (wheel); world frame = the reconstruction's (optical: y down).
// Splat updates arrive binary from the bridge (viewer/display.py encode_splats), in chunks.
import * as THREE from "three";
import { PackedSplats, SparkRenderer, SplatMesh, utils } from "@sparkjsdev/spark";

const BACKGROUND = 0x0b0d10;
const HEADER = 64;   // bytes of a splat chunk's header
const SPLAT_ROW = 2048;   // Spark's splat texture width

export function createScene(canvas, S, log) {
  const view = { target: [0, 0, 0.1], dist: 0.15, yaw: 0, pitch: 0, fov: 50, fitted: false, scope: null };
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: false, preserveDrawingBuffer: true });
  renderer.setPixelRatio(1);
  renderer.setSize(canvas.width, canvas.height, false);
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(BACKGROUND);
  const camera = new THREE.PerspectiveCamera(view.fov, canvas.width / canvas.height, 0.001, 10);
  scene.add(new SparkRenderer({ renderer }));
  const frustum = new THREE.LineSegments(new THREE.BufferGeometry(), new THREE.LineBasicMaterial({ color: 0x7fd3ff }));
  const rois = new THREE.Group();
  scene.add(frustum, rois);
  let splatMesh = null, measured = null, mode = "splats";
  const pending = new Map();   // update id -> partly received splat update

  function basis() {   // optical convention: x right, y down, z forward; orbit about the target
    const cp = Math.cos(view.pitch), f = [cp * Math.sin(view.yaw), Math.sin(view.pitch), cp * Math.cos(view.yaw)];
    let r = cross([0, 1, 0], f);
    const rn = Math.hypot(...r) || 1;
    r = r.map((v) => v / rn);
    const d = cross(f, r);
    return { f, r, d, eye: view.target.map((t, k) => t - view.dist * f[k]) };
  }

  // ------------------------------------------------------------ drawing (on demand, a few frames after a
  // change: Spark sorts the splats in a worker and shows the order a frame later)
  let drawUntil = 0, looping = false, frames = 0;
  // The endoscope's own view (pose and intrinsics, the image fitted into the canvas) or the orbit view.
  function scopeFit() {
    const { w, h, K } = view.scope, s = Math.min(canvas.width / w, canvas.height / h);
    return { s, x0: (canvas.width - s * w) / 2, y0: (canvas.height - s * h) / 2, fx: s * K[0], fy: s * K[4],
      cx: (canvas.width - s * w) / 2 + s * K[2], cy: (canvas.height - s * h) / 2 + s * K[5] };
  }
  function place() {
    if (view.scope) {
      const R = view.scope.R, col = (k, sg) => new THREE.Vector3(sg * R[0][k], sg * R[1][k], sg * R[2][k]);
      camera.position.set(...view.scope.t);   // optical (x right, y down, z forward) -> GL (x, -y, -z)
      camera.quaternion.setFromRotationMatrix(new THREE.Matrix4().makeBasis(col(0, 1), col(1, -1), col(2, -1)));
      const F = scopeFit(), n = camera.near;
      camera.projectionMatrix.makePerspective(-F.cx * n / F.fx, (canvas.width - F.cx) * n / F.fx, F.cy * n / F.fy,
        -(canvas.height - F.cy) * n / F.fy, n, camera.far);
      camera.projectionMatrixInverse.copy(camera.projectionMatrix).invert();
    } else {
      const B = basis();
      camera.position.set(...B.eye);
      const m = new THREE.Matrix4().makeBasis(new THREE.Vector3(...B.r), new THREE.Vector3(...B.d).negate(),
        new THREE.Vector3(...B.f).negate());
      camera.quaternion.setFromRotationMatrix(m);
      camera.updateProjectionMatrix();
    }
    camera.updateMatrixWorld();
  }

  // Look from the endoscope: its pose (R, t: optical frame in the world) and calibration (K, width, height).
  function lookFromEndoscope(cam, calib) {
    if (!cam || !calib) return false;
    view.scope = { R: cam.R.map((r) => [...r]), t: [...cam.t], K: [...calib.K], w: calib.width, h: calib.height };
    draw();
    return true;
  }

  // Leave the endoscope's view for the orbit about a point ahead of it (an orbit keeps no roll).
  function toOrbit() {
    if (!view.scope) return;
    const R = view.scope.R, f = [R[0][2], R[1][2], R[2][2]];
    view.target = view.scope.t.map((t, k) => t + view.dist * f[k]);
    Object.assign(view, { yaw: Math.atan2(f[0], f[2]), pitch: Math.asin(Math.max(-1, Math.min(1, f[1]))), scope: null });
  }

  function frame() {
    place();
    renderer.render(scene, camera);
    frames++;
    if (performance.now() < drawUntil) requestAnimationFrame(frame); else looping = false;
  }
  function draw(ms = 600) {
    drawUntil = Math.max(drawUntil, performance.now() + ms);
    if (!looping) { looping = true; requestAnimationFrame(frame); }
  }

  // ------------------------------------------------------------ splats
  function onSplats(buf) {
    const dv = new DataView(buf);
    if (dv.getUint32(0, true) !== 0x314c5053) return;   // "SPL1"
    const id = dv.getUint32(4, true), total = dv.getUint32(8, true), offset = dv.getUint32(12, true);
    const n = dv.getUint32(16, true), stamp = dv.getBigInt64(24, true);
    const lo = [0, 1, 2].map((k) => dv.getFloat32(32 + 4 * k, true));
    const hi = [0, 1, 2].map((k) => dv.getFloat32(44 + 4 * k, true));
    const lnLo = dv.getFloat32(56, true), lnHi = dv.getFloat32(60, true);
    for (const k of pending.keys()) if (k < id) pending.delete(k);   // an older update left half-received
    let u = pending.get(id);
    if (!u) {
      // Spark keeps splats in rows of a 2048-wide texture and takes only whole rows of a packed array
      const rows = Math.max(1, Math.ceil(total / SPLAT_ROW));
      u = { total, got: 0, stamp, packed: new Uint32Array(4 * SPLAT_ROW * rows), centers: new Float32Array(3 * total) };
      pending.set(id, u);
    }
    const pad = (b) => (b + 3) & ~3;
    let p = HEADER;
    const pos = new Uint16Array(buf, p, 3 * n); p += pad(6 * n);
    const lsc = new Uint8Array(buf, p, 3 * n); p += pad(3 * n);
    const rot = new Int8Array(buf, p, 4 * n); p += pad(4 * n);
    const rgba = new Uint8Array(buf, p, 4 * n);
    const step = [0, 1, 2].map((k) => (hi[k] - lo[k]) / 65535), lstep = (lnHi - lnLo) / 255;
    for (let i = 0; i < n; i++) {
      const j = offset + i;
      const x = lo[0] + pos[3 * i] * step[0], y = lo[1] + pos[3 * i + 1] * step[1], z = lo[2] + pos[3 * i + 2] * step[2];
      u.centers[3 * j] = x; u.centers[3 * j + 1] = y; u.centers[3 * j + 2] = z;
      const qw = rot[4 * i] / 127, qx = rot[4 * i + 1] / 127, qy = rot[4 * i + 2] / 127, qz = rot[4 * i + 3] / 127;
      const qn = Math.hypot(qw, qx, qy, qz) || 1;
      utils.setPackedSplat(u.packed, j, x, y, z,
        Math.exp(lnLo + lsc[3 * i] * lstep), Math.exp(lnLo + lsc[3 * i + 1] * lstep), Math.exp(lnLo + lsc[3 * i + 2] * lstep),
        qx / qn, qy / qn, qz / qn, qw / qn, rgba[4 * i + 3] / 255, rgba[4 * i] / 255, rgba[4 * i + 1] / 255, rgba[4 * i + 2] / 255);
    }
    u.got += n;
    if (u.got < u.total) return;
    pending.delete(id);
    const mesh = new SplatMesh({ packedSplats: new PackedSplats({ packedArray: u.packed, numSplats: u.total }) });
    mesh.visible = mode === "splats";
    scene.add(mesh);
    if (splatMesh) { scene.remove(splatMesh); splatMesh.dispose(); }
    splatMesh = mesh;
    S.splats = { n: u.total, stamp: Number(stamp), centers: u.centers, updates: (S.splats ? S.splats.updates : 0) + 1 };
    if (!view.fitted && u.total > 0) fitView();
    // Spark uploads and sorts a new mesh over the next frames (longer on a busy or software GPU): draw on
    // until it is ready, and a while after
    draw(1500);
    mesh.initialized.then(() => draw(1500));
  }

  // ------------------------------------------------------------ measured cloud (stereo depth, back-projected)
  function setDepth(m, calib, cam) {
    if (m.encoding !== "16UC1" || !calib || !cam) return;
    const bin = atob(m.data), bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const d = new Uint16Array(bytes.buffer), w = m.width, h = m.height, step = m.step / 2;
    const K = calib.K, sx = calib.width / w, sy = calib.height / h;   // depth may be smaller than the calibration
    const xyz = [], col = [];
    let lo = Infinity, hi = 0;
    for (let i = 0; i < d.length; i++) if (d[i]) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
    for (let v = 0; v < h; v++) for (let u = 0; u < w; u++) {
      const mm = d[v * step + u];
      if (!mm) continue;
      const z = mm / 1000, x = (u * sx - K[2]) / K[0] * z, y = (v * sy - K[5]) / K[4] * z;
      for (let k = 0; k < 3; k++) xyz.push(cam.R[k][0] * x + cam.R[k][1] * y + cam.R[k][2] * z + cam.t[k]);
      const t = hi > lo ? (mm - lo) / (hi - lo) : 0;   // near: warm, far: cool
      col.push(1 - t, 1 - Math.abs(2 * t - 1), t);
    }
    const g = new THREE.BufferGeometry();
    g.setAttribute("position", new THREE.Float32BufferAttribute(xyz, 3));
    g.setAttribute("color", new THREE.Float32BufferAttribute(col, 3));
    if (measured) { scene.remove(measured); measured.geometry.dispose(); }
    measured = new THREE.Points(g, new THREE.PointsMaterial({ size: 2, sizeAttenuation: false, vertexColors: true }));
    measured.visible = mode === "cloud";
    measured.userData.centers = new Float32Array(xyz);
    scene.add(measured);
    if (mode === "cloud") draw();
  }

  function setMode(m) {
    mode = m;
    if (splatMesh) splatMesh.visible = mode === "splats";
    if (measured) measured.visible = mode === "cloud";
    draw();
  }

  // ------------------------------------------------------------ frustum and regions
  function setCamera(cam, calib) {
    const w = calib ? calib.width : 640, h = calib ? calib.height : 512;
    const K = calib ? calib.K : [500, 0, 320, 0, 500, 256, 0, 0, 1];
    const depth = Math.max(view.dist * 0.25, 0.005);
    const world = (p) => [0, 1, 2].map((k) => cam.R[k][0] * p[0] + cam.R[k][1] * p[1] + cam.R[k][2] * p[2] + cam.t[k]);
    const c = [[0, 0], [w, 0], [w, h], [0, h]].map(([u, v]) => world([(u - K[2]) / K[0] * depth, (v - K[5]) / K[4] * depth, depth]));
    const pts = [];
    for (let i = 0; i < 4; i++) pts.push(...cam.t, ...c[i], ...c[i], ...c[(i + 1) % 4]);
    frustum.geometry.dispose();
    frustum.geometry = new THREE.BufferGeometry();
    frustum.geometry.setAttribute("position", new THREE.Float32BufferAttribute(pts, 3));
    draw();
  }

  function setRois(list) {
    for (const m of [...rois.children]) { rois.remove(m); m.geometry.dispose(); }
    for (const r of list) {
      const s = new THREE.Mesh(new THREE.SphereGeometry(r.r, 16, 12),
        new THREE.MeshBasicMaterial({ color: 0xffd700, wireframe: true, transparent: true, opacity: 0.8 }));
      s.position.set(...r.c);
      rois.add(s);
    }
    draw();
  }

  // ------------------------------------------------------------ view control
  function centers() {
    if (mode === "cloud" && measured) return measured.userData.centers;
    return S.splats ? S.splats.centers : null;
  }

  // Frame the model: about its median centre, at the distance that shows 90 % of it. Robust to a few stray
  // Gaussians (a wrong stereo match lies up to the far end of the working range): with the farthest centre
  // setting the distance, one stray made the model a speck in the view.
  function fitView() {
    const xyz = centers();
    if (!xyz || !xyz.length) return;
    const n = xyz.length / 3, quantile = (a, q) => a.sort()[Math.min(a.length - 1, Math.floor(q * a.length))];
    const c = [0, 1, 2].map((k) => quantile(Float32Array.from({ length: n }, (_, i) => xyz[3 * i + k]), 0.5));
    const r = quantile(Float32Array.from({ length: n },
      (_, i) => Math.hypot(xyz[3 * i] - c[0], xyz[3 * i + 1] - c[1], xyz[3 * i + 2] - c[2])), 0.9);
    Object.assign(view, { target: c, dist: Math.max(2.2 * r, 0.01), yaw: 0, pitch: 0, fitted: true, scope: null });
    draw();
  }

  // canvas pixel of world point p with its distance ahead of the viewer, or null behind it (after place())
  const pv = new THREE.Vector3(), pz = new THREE.Vector3();
  function project(p) {
    pv.set(p[0], p[1], p[2]);
    const z = -pz.copy(pv).applyMatrix4(camera.matrixWorldInverse).z;
    if (z <= 1e-4) return null;
    pv.project(camera);
    return [(pv.x + 1) / 2 * canvas.width, (1 - pv.y) / 2 * canvas.height, z];
  }

  // the front-most centre within `tol` px of canvas pixel (u, v): [x, y, z] or null
  function pick(u, v, tol = 6) {
    const xyz = centers();
    if (!xyz) return null;
    place();
    let best = null, bestZ = Infinity;
    for (let i = 0; i < xyz.length / 3; i++) {
      const p = project(xyz.subarray(3 * i, 3 * i + 3));
      if (p && Math.abs(p[0] - u) <= tol && Math.abs(p[1] - v) <= tol && p[2] < bestZ) { bestZ = p[2]; best = [...xyz.subarray(3 * i, 3 * i + 3)]; }
    }
    return best;
  }

  // for tests: the canvas pixel of a centre near the middle of the view, with the canvas size
  function samplePoint() {
    const xyz = centers();
    if (!xyz) return null;
    place();
    let best = null, bd = Infinity;
    for (let i = 0; i < xyz.length / 3; i++) {
      const p = project(xyz.subarray(3 * i, 3 * i + 3));
      const dd = p ? Math.hypot(p[0] - canvas.width / 2, p[1] - canvas.height / 2) : Infinity;
      if (dd < bd) { bd = dd; best = [p[0], p[1], canvas.width, canvas.height]; }
    }
    return best;
  }

  // camera-to-world pose of the view (optical frame) as a ROS Pose, and the image size a render of it needs
  // (the endoscope's; 0 x 0 = the trainer's live size)
  function viewPose() {
    let m;
    if (view.scope) {
      const R = view.scope.R;
      m = new THREE.Matrix4().set(R[0][0], R[0][1], R[0][2], 0, R[1][0], R[1][1], R[1][2], 0, R[2][0], R[2][1], R[2][2], 0,
        0, 0, 0, 1);
    } else {
      const B = basis();
      m = new THREE.Matrix4().makeBasis(new THREE.Vector3(...B.r), new THREE.Vector3(...B.d), new THREE.Vector3(...B.f));
    }
    const q = new THREE.Quaternion().setFromRotationMatrix(m), eye = view.scope ? view.scope.t : basis().eye;
    return { position: { x: eye[0], y: eye[1], z: eye[2] }, orientation: { x: q.x, y: q.y, z: q.z, w: q.w } };
  }
  function viewSize() { return view.scope ? { width: view.scope.w, height: view.scope.h } : { width: 0, height: 0 }; }

  // The endoscope image's part of the canvas at the endoscope's size (RGBA ImageData), for comparison with the
  // trainer's rendering of the same view; null outside the endoscope's view.
  function scopeImage() {
    if (!view.scope) return null;
    const F = scopeFit(), { w, h } = view.scope, c = document.createElement("canvas");
    c.width = w; c.height = h;
    const ctx = c.getContext("2d");
    ctx.drawImage(canvas, F.x0, F.y0, F.s * w, F.s * h, 0, 0, w, h);
    return ctx.getImageData(0, 0, w, h);
  }

  function setupMouse(onClick) {
    let drag = null;
    const toCanvas = (e) => {
      const r = canvas.getBoundingClientRect();
      return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
    };
    canvas.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, moved: false, shift: e.shiftKey }; });
    window.addEventListener("mouseup", (e) => {
      if (drag && !drag.moved) onClick(...toCanvas(e));
      drag = null;
    });
    window.addEventListener("mousemove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) < 3 && !drag.moved) return;
      drag.moved = true; drag.x = e.clientX; drag.y = e.clientY;
      toOrbit();
      if (drag.shift) {
        const B = basis(), s = view.dist * 0.002;
        view.target = view.target.map((t, k) => t - s * (dx * B.r[k] + dy * B.d[k]));
      } else {
        view.yaw += dx * 0.01;
        view.pitch = Math.max(-1.5, Math.min(1.5, view.pitch + dy * 0.01));
      }
      draw();
    });
    canvas.addEventListener("wheel", (e) => { e.preventDefault(); toOrbit(); view.dist *= Math.exp(e.deltaY * 0.001); draw(); },
      { passive: false });
    canvas.addEventListener("dblclick", fitView);
  }

  // Frame rate of continuous drawing while the view turns (measurement; SwiftShader is a software GPU).
  async function measureFps(seconds = 5) {
    const f0 = frames, t0 = performance.now(), yaw0 = view.yaw;
    while (performance.now() - t0 < seconds * 1000) {
      view.yaw = yaw0 + 0.2 * Math.sin((performance.now() - t0) / 500);
      draw(100);
      await new Promise((r) => requestAnimationFrame(r));
    }
    view.yaw = yaw0;
    return (frames - f0) * 1000 / (performance.now() - t0);
  }

  // Lit pixels and a coarse signature of what the canvas shows now (tests compare two moments).
  function snapshot() {
    const c = document.createElement("canvas");
    c.width = 96; c.height = 64;
    const ctx = c.getContext("2d");
    ctx.drawImage(canvas, 0, 0, c.width, c.height);
    const px = ctx.getImageData(0, 0, c.width, c.height).data;
    let lit = 0;
    const sig = [];
    for (let i = 0; i < px.length; i += 4) {
      if (px[i] !== 11 || px[i + 1] !== 13 || px[i + 2] !== 16) lit++;
      sig.push(px[i], px[i + 1], px[i + 2]);
    }
    return { lit, sig };
  }

  return { onSplats, setDepth, setMode, setCamera, setRois, fitView, pick, samplePoint, viewPose, viewSize,
    lookFromEndoscope, scopeImage, setupMouse, measureFps, snapshot, draw, get mode() { return mode; } };
}

function cross(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
