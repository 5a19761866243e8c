// End-to-end test of `runner serve` in Debian's headless Chromium, driven by playwright-core.
// Started by tests/integration/serve.rs (dashboard_in_headless_chromium), which starts the
// server and a run that waits for GO_FILE; this script watches it live and approves it.
import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const { SERVE_URL, SERVE_TOKEN, RUN_ID, GO_FILE, SHOTS } = process.env;
const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, name), fullPage: true });
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "runner-e2e-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 860 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const errors = [];
function watch(page) {
  page.on("pageerror", (e) => errors.push("pageerror: " + e.message));
  page.on("console", (m) => { if (m.type() === "error") errors.push("console: " + m.text()); });
}
try {
  // The runs table shows the run live.
  const runs = await browser.newPage();
  watch(runs);
  await runs.goto(SERVE_URL);
  const row = runs.locator(`tr[data-run="${RUN_ID}"]`);
  await row.waitFor({ timeout: 15000 });
  if ((await row.getAttribute("data-status")) !== "running") throw new Error("the run is not shown running");
  await runs.locator("#conn.on").waitFor({ timeout: 10000 });
  await shot(runs, "runs-live.png");

  // The run page: the step waits for GO_FILE; once it exists, the page turns green by
  // itself (no reload: the marker set on the window must survive).
  const page = await browser.newPage();
  watch(page);
  await page.goto(SERVE_URL + "runs/" + RUN_ID);
  await page.evaluate(() => { window.__noReload = 42; });
  await page.locator('.step[data-step="prepare"][data-status="running"]').waitFor({ timeout: 15000 });
  await page.locator("#conn.on").waitFor({ timeout: 10000 });
  fs.writeFileSync(GO_FILE, "");
  await page.locator('.step[data-step="prepare"][data-status="succeeded"]').waitFor({ timeout: 20000 });
  const approve = page.getByRole("button", { name: "Approve publish" });
  await approve.waitFor({ timeout: 20000 });
  await page.locator('.step[data-step="prepare"] summary').click();
  await page.locator(".handoff strong", { hasText: "42 rows" }).waitFor({ timeout: 5000 });
  await page.waitForFunction(() => document.getElementById("log-text").textContent.includes("preparing 3"), null, { timeout: 10000 });
  await shot(page, "run-waiting.png");

  // Approve with the button: the token is asked once, then kept for the tab.
  await page.getByLabel("Your name").fill("e2e");
  await page.getByLabel("Comment").fill("ship it");
  await approve.click();
  await page.getByLabel("API token").fill(SERVE_TOKEN);
  await page.getByRole("button", { name: "Save token" }).click();
  await page.locator('.run-head[data-status="succeeded"]').waitFor({ timeout: 30000 });
  await page.locator('.step[data-step="publish"][data-status="succeeded"]').waitFor({ timeout: 10000 });
  if ((await page.evaluate(() => window.__noReload)) !== 42) throw new Error("the page was reloaded");
  if ((await page.evaluate(() => sessionStorage.getItem("runner-token"))) !== SERVE_TOKEN) throw new Error("token not kept");
  await shot(page, "run-succeeded.png");

  // The runs table turned green without a reload too.
  await runs.locator(`tr[data-run="${RUN_ID}"][data-status="succeeded"]`).waitFor({ timeout: 15000 });
  await shot(runs, "runs-done.png");

  // Phone width: nothing wider than the screen, controls still named.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.reload();
  await page.locator('.run-head[data-status="succeeded"]').waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error(`the run page is ${overflow}px wider than a phone`);
  await shot(page, "run-phone.png");
  const unnamed = await page.evaluate(() => Array.from(document.querySelectorAll("button, select, input"))
    .filter((el) => el.offsetParent !== null)
    .filter((el) => !(el.getAttribute("aria-label") || (el.labels && el.labels.length) || el.textContent.trim()))
    .map((el) => el.outerHTML.slice(0, 80)));
  if (unnamed.length) throw new Error("controls without an accessible name: " + unnamed.join(", "));
  if (errors.length) throw new Error("errors in the page:\n" + errors.join("\n"));
  console.log("E2E OK");
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
