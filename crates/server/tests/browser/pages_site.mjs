// Opens a site deployed on gitcache's pages listener in headless Chromium, by its host name
// (mapped to the listener's loopback address): the page with its stylesheet (sent
// compressed), image and script, a link followed through a `_redirects` rewrite, the
// site's 404 page, and a header from `_headers`.
// Usage: node pages_site.mjs HOST ADDR SCREENSHOT_PATH CHROMIUM_PATH
import { launch } from "./launch.mjs";
import assert from "node:assert/strict";

const [host, addr, screenshot, executablePath] = process.argv.slice(2);
const browser = await launch(executablePath, [`--host-resolver-rules=MAP ${host} ${addr}`]);
const step = (name) => console.log("step: " + name);
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 600 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  const encodings = {};
  page.on("response", (r) => { encodings[new URL(r.url()).pathname] = r.headers()["content-encoding"]; });

  step("the home page, with its style, image and script");
  const home = await page.goto(`http://${host}/`);
  assert.equal(home.status(), 200);
  assert.equal(home.headers()["x-frame-options"], "DENY");
  assert.equal(await page.title(), "gitcache pages");
  await page.waitForFunction(() => document.querySelector("#script").textContent === "script ran");
  const color = await page.evaluate(() => getComputedStyle(document.querySelector("h1")).color);
  assert.equal(color, "rgb(0, 102, 51)");
  const width = await page.evaluate(() => document.querySelector("img").naturalWidth);
  assert.equal(width, 120);
  // Chromium offers br over HTTPS only: gzip here.
  assert.ok(["br", "gzip"].includes(encodings["/style.css"]), JSON.stringify(encodings));
  await page.screenshot({ path: screenshot });

  step("a link through a rewrite");
  await page.click("a#about");
  await page.waitForURL(`http://${host}/about`);
  assert.match(await page.locator("h1").innerText(), /About/);

  assert.deepEqual(errors, []);
  step("the site's own 404 page");
  const lost = await page.goto(`http://${host}/no/such/page`);
  assert.equal(lost.status(), 404);
  assert.match(await page.locator("h1").innerText(), /Lost/);
  console.log("pages site: ok");
} finally {
  await browser.close();
}
