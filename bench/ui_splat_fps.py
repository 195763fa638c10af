"""Frame rate of the operator page's splat view, and the bytes of one model update, at 100k and 300k splats.

The splats of a synthetic tissue surface (a wavy 8 x 6 cm sheet 8 cm from the camera, Gaussians 0.2-1 mm, random
colours) are encoded exactly as the bridge sends them (viewer/display.encode_splats: chunks of 65536, 17 B a
splat) and fed, chunk by chunk, to the page's own 3D view (viewer/web/scene3d.js, three + Spark) in Debian's
chromium, headless. The view then turns continuously for `--seconds` and the frames drawn per second are
counted (scene3d's measureFps). Chromium has no GPU here: WebGL2 runs on SwiftShader, a CPU renderer, so the
rates are a floor far below any GPU's; the bytes per update do not depend on the machine.

    python bench/ui_splat_fps.py [--counts 100000 300000] [--size 960x640] [--seconds 5] [--out /tmp/surg3d_ui_fps]

Prints a table and writes JSON and a screenshot per count. Needs chromium, node, tests/ui/node_modules and the
page's node_modules (tools/setup.sh).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from surg3d_nodes.viewer.display import encode_splats

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "surg3d_nodes" / "viewer" / "web"

PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script type="importmap">{"imports": {"three": "/node_modules/three/build/three.module.js",
"three/addons/": "/node_modules/three/examples/jsm/",
"@sparkjsdev/spark": "/node_modules/@sparkjsdev/spark/dist/spark.module.js"}}</script></head>
<body style="margin:0"><canvas id="scene" width="%(w)d" height="%(h)d"></canvas>
<script type="module">
import { createScene } from "/scene3d.js";
const S = {};
const view = createScene(document.getElementById("scene"), S, console.log);
const t0 = performance.now();
for (let i = 0; i < %(chunks)d; i++) view.onSplats(await (await fetch(`chunk${i}.bin`)).arrayBuffer());
const decodeMs = performance.now() - t0;
await new Promise((r) => setTimeout(r, 3000));   // Spark's upload and first sort
window.result = { splats: S.splats.n, decodeMs, fps: await view.measureFps(%(seconds)f) };
</script></body></html>"""

DRIVER = """import { chromium } from "playwright-core";
const [url, shot] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true,
  args: ["--headless", "--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist"] });
const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
const errors = [];
page.on("pageerror", (e) => { errors.push(String(e)); console.error(String(e)); });
page.on("console", (m) => console.error(`[page] ${m.text()}`));
await page.goto(url);
await page.waitForFunction(() => window.result, null, { timeout: 300000 });
await page.screenshot({ path: shot });
console.log(JSON.stringify({ ...(await page.evaluate(() => window.result)), errors }));
await browser.close();
"""


def surface_splats(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n Gaussians on a wavy sheet in front of the camera (metres), flattened along the sheet's normal."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-0.04, 0.04, n), rng.uniform(-0.03, 0.03, n)
    z = 0.08 + 0.004 * np.sin(x * 150) * np.cos(y * 120)
    scales = rng.uniform(2e-4, 1e-3, (n, 3))
    scales[:, 2] *= 0.2
    quats = rng.normal(size=(n, 4)) * [1.0, 0.05, 0.05, 0.05] + [1.0, 0, 0, 0]
    return {"means": np.stack([x, y, z], 1).astype(np.float32), "scales": scales.astype(np.float32),
            "quats": quats.astype(np.float32), "colors": rng.uniform(0.2, 0.9, (n, 3)).astype(np.float32),
            "opacities": rng.uniform(0.5, 1.0, n).astype(np.float32)}


class _Handler(http.server.SimpleHTTPRequestHandler):
    """The page's files from viewer/web; /bench/... from the run's folder."""

    def __init__(self, *args, bench_dir: Path, **kw) -> None:
        self.bench_dir = bench_dir
        super().__init__(*args, directory=str(WEB), **kw)

    def translate_path(self, path: str) -> str:
        if path.startswith("/bench/"):
            return str(self.bench_dir / path.split("?")[0][len("/bench/"):])
        return super().translate_path(path)

    def log_message(self, *args) -> None:
        pass


def run_count(n: int, args: argparse.Namespace, out: Path, port: int) -> dict:
    """Encode n splats as the bridge does and measure the page's frame rate with them."""
    d = out / f"n{n}"
    d.mkdir(parents=True, exist_ok=True)
    g = surface_splats(n)
    t0 = time.perf_counter()
    chunks = encode_splats(g["means"], g["scales"], g["quats"], g["colors"], g["opacities"], 1, 1)
    encode_ms = 1000 * (time.perf_counter() - t0)
    for i, c in enumerate(chunks):
        (d / f"chunk{i}.bin").write_bytes(c)
    w, h = (int(v) for v in args.size.split("x"))
    (d / "page.html").write_text(PAGE % {"w": w, "h": h, "chunks": len(chunks), "seconds": args.seconds})
    run = subprocess.run(["node", str(out / "driver.mjs"), f"http://127.0.0.1:{port}/bench/n{n}/page.html",
                          str(out / f"splats_{n}.png")], cwd=ROOT / "tests" / "ui", capture_output=True, text=True,
                         timeout=900)
    if run.returncode != 0:
        raise RuntimeError(f"browser run failed for {n} splats:\n{run.stderr[-2000:]}")
    res = json.loads(run.stdout.strip().splitlines()[-1])
    return {"splats": n, "bytes": sum(len(c) for c in chunks), "chunks": len(chunks), "encode_ms": encode_ms,
            **res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--size", default="960x640", help="canvas size (the page's default)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/surg3d_ui_fps"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # the driver runs from tests/ui, where playwright-core is installed
    (args.out / "driver.mjs").write_text(DRIVER.replace('"playwright-core"', json.dumps(
        str(ROOT / "tests" / "ui" / "node_modules" / "playwright-core" / "index.mjs"))))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, bench_dir=args.out))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rows = [run_count(n, args, args.out, server.server_address[1]) for n in args.counts]
    finally:
        server.shutdown()
    print(f"{'splats':>8} {'update MB':>10} {'B/splat':>8} {'encode ms':>10} {'decode ms':>10} {'fps':>6}"
          "  (SwiftShader)")
    for r in rows:
        print(f"{r['splats']:>8} {r['bytes'] / 1e6:>10.2f} {r['bytes'] / r['splats']:>8.2f} {r['encode_ms']:>10.0f} "
              f"{r['decodeMs']:>10.0f} {r['fps']:>6.1f}" + (f"  errors: {r['errors']}" if r["errors"] else ""))
    (args.out / "ui_splat_fps.json").write_text(json.dumps(rows, indent=1))
    print(f"written: {args.out / 'ui_splat_fps.json'}, screenshots splats_N.png")


if __name__ == "__main__":
    main()
