// Drives Debian's Chromium (headless) through the gateway's dashboard, as tests/tests/dashboard.rs asks:
//   node dashboard.mjs URL TOKEN CLIENT_ID SCREENSHOT
// Logs in with the admin token, finds CLIENT_ID in the client list and watches its message count rise, takes a
// screenshot, checks the page fits a phone-sized screen, then presses the client's Kick button and waits for the
// row to go. Prints one JSON line with what it saw; exits 1 on any failure (the JSON says which).
import { chromium } from "playwright-core";

const [url, token, client, screenshot] = process.argv.slice(2);
const result = { errors: [], first: null, second: null, phoneOverflow: null, kicked: false, failure: null };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") result.errors.push(`console ${m.type()}: ${m.text()}`); });
  page.on("pageerror", (e) => result.errors.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => { if (!r.url().endsWith("/api/live")) result.errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`); });
  page.on("response", (r) => { if (r.status() >= 400) result.errors.push(`HTTP ${r.status()}: ${r.url()}`); });

  await page.goto(url, { waitUntil: "load" });
  await page.locator("#token").waitFor({ state: "visible", timeout: 10000 });
  await page.fill("#token", token);
  await page.click("#login button[type=submit]");
  const row = page.locator(`#clients tbody tr[data-client="${client}"]`);
  await row.waitFor({ state: "visible", timeout: 15000 });
  const count = async () => Number((await row.locator("td.messages-in").innerText()).replace(/,/g, ""));
  result.first = await count();
  await page.waitForTimeout(6000);
  result.second = await count();
  await page.screenshot({ path: screenshot, fullPage: true });

  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(500);
  result.phoneOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);

  await row.locator("button.kick").click();
  await row.waitFor({ state: "detached", timeout: 15000 });
  result.kicked = true;
} catch (e) {
  result.failure = String(e && e.message ? e.message : e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.failure ? 1 : 0);
