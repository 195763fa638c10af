// Browser end-to-end check of the surg3d operator view (run by tests/test_ui_browser.py).
// usage: node e2e.mjs <ui url> <artifacts dir>
// Drives Debian's chromium headless with playwright-core (never downloads a browser): sees the topics and a
// non-empty 3D cloud, pauses and resumes the trainer, marks a region of interest on the cloud. Screenshots go
// to the artifacts dir; prints one JSON line with what it saw; exits 1 with the reason on failure.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [url, artifacts] = process.argv.slice(2);
if (!url || !artifacts) {
  console.error("usage: node e2e.mjs <ui url> <artifacts dir>");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const TIMEOUT = Number(process.env.SURG3D_E2E_TIMEOUT_MS || 30000);
const result = { steps: [] };
const pageErrors = [];

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const step = (name) => { result.steps.push(name); console.error(`[e2e] ${name}`); };
let page;
try {
  page = await browser.newPage({ viewport: { width: 1600, height: 900 } });
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") pageErrors.push(m.text()); });
  await page.goto(url);
  await page.waitForFunction(() => window.surg3d && window.surg3d.connected, null, { timeout: TIMEOUT });
  step("connected");

  await page.waitForSelector('li.topic[data-topic="/recon/points"]', { timeout: TIMEOUT });
  result.topics = await page.$$eval("li.topic", (els) => els.map((e) => e.dataset.topic));
  step(`topics: ${result.topics.length}`);

  await page.waitForFunction(() => window.surg3d.drawn > 0, null, { timeout: TIMEOUT });
  result.points = await page.evaluate(() => window.surg3d.cloud.n);
  result.drawn = await page.evaluate(() => window.surg3d.drawn);
  // pixels of the 3D canvas that differ from the background: the cloud is really painted
  result.litPixels = await page.evaluate(() => {
    const c = document.getElementById("scene"), d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] !== 11 || d[i + 1] !== 13 || d[i + 2] !== 16) n++;
    return n;
  });
  if (result.litPixels === 0) throw new Error("the 3D canvas shows nothing");
  step(`cloud: ${result.points} points, ${result.drawn} drawn, ${result.litPixels} lit pixels`);
  await page.waitForTimeout(1500);  // let images and status arrive for the screenshot
  await page.screenshot({ path: join(artifacts, "01_cloud.png") });

  await page.click("#btn-pause");
  await page.waitForFunction(() => document.getElementById("trainer-state").textContent === "paused", null,
    { timeout: TIMEOUT });
  step("paused");
  await page.screenshot({ path: join(artifacts, "02_paused.png") });

  await page.click("#btn-resume");
  await page.waitForFunction(() => document.getElementById("trainer-state").textContent === "running", null,
    { timeout: TIMEOUT });
  step("resumed");

  const before = await page.evaluate(() => window.surg3d.rois.length);
  await page.click("#btn-mark");
  const sample = await page.evaluate(() => window.surg3d.samplePoint());
  if (!sample) throw new Error("no drawn point to click");
  const box = await page.locator("#scene").boundingBox();
  await page.mouse.click(box.x + sample[0] * box.width / sample[2], box.y + sample[1] * box.height / sample[3]);
  await page.waitForFunction((n) => window.surg3d.rois.length > n, before, { timeout: TIMEOUT });
  await page.waitForSelector("#roi-list li.roi", { timeout: TIMEOUT });
  result.rois = await page.evaluate(() => window.surg3d.rois);
  step(`region marked: ${result.rois.length} regions`);
  await page.waitForTimeout(300);
  await page.screenshot({ path: join(artifacts, "03_region.png") });

  await page.click("#btn-view");  // the 3D view's pose -> a virtual viewpoint request
  await page.waitForTimeout(500);  // let the request reach the graph before the browser closes
  step("view requested");

  result.log = await page.evaluate(() => window.surg3d.log);
  result.pageErrors = pageErrors;
  if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join(" | ")}`);
  console.log(JSON.stringify(result));
  await browser.close();
} catch (e) {
  if (page) await page.screenshot({ path: join(artifacts, "failure.png") }).catch(() => {});
  console.log(JSON.stringify({ ...result, error: String(e), pageErrors }));
  await browser.close();
  process.exit(1);
}
