// Drives gitcache's admin page in headless Chromium: sign in, add a repository, edit its
// timeout, disable it, remove it, purge another, checking what the page shows after each step.
// Usage: node admin_page.mjs BASE_URL TOKEN SCREENSHOT_PATH CHROMIUM_PATH
import { launch } from "./launch.mjs";
import assert from "node:assert/strict";

const [base, token, screenshot, executablePath] = process.argv.slice(2);
const browser = await launch(executablePath);
const step = (name) => console.log("step: " + name);
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 800 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });

  await page.goto(base + "/admin");
  assert.equal(await page.title(), "gitcache admin");

  step("a wrong token is refused");
  await page.fill("#token", "not-the-token");
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("#login:not([hidden])");
  await page.waitForFunction(() => document.querySelector("#message").textContent.includes("not an admin token"));

  step("sign in");
  await page.fill("#token", token);
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("#app:not([hidden])");
  // The repository the test prepared (and cloned) is listed with its numbers.
  const prepared = page.locator("tr[data-repo='acme/gadgets']");
  await prepared.waitFor();
  assert.match(await prepared.innerText(), /50% of 2/);

  step("add");
  await page.fill("#add-owner", "acme");
  await page.fill("#add-name", "widgets");
  await page.fill("#add-timeout", "30");
  await page.fill("#add-limit", "256");
  await page.click("#add-submit");
  const row = page.locator("tr[data-repo='acme/widgets']");
  await row.waitFor();
  assert.match(await page.locator("#message").innerText(), /Added acme\/widgets/);
  assert.equal(await row.locator("td.state").innerText(), "enabled");
  assert.equal(await row.locator("td.timeout").innerText(), "30 s");
  assert.match(await row.locator("td.cache").innerText(), /\/ 256\.0 MiB/);

  step("adding it again is refused with the server's message");
  await page.fill("#add-owner", "acme");
  await page.fill("#add-name", "widgets");
  await page.click("#add-submit");
  await page.waitForFunction(() => document.querySelector("#message").textContent.includes("already in the catalog"));
  assert.equal(await page.locator("#message").getAttribute("class"), "bad");

  step("edit the timeout");
  await row.getByRole("button", { name: "Edit" }).click();
  await page.waitForSelector("#edit:not([hidden])");
  assert.equal(await page.locator("#edit-name").innerText(), "acme/widgets");
  assert.equal(await page.inputValue("#edit-timeout"), "30");
  await page.fill("#edit-timeout", "90");
  await page.click("#edit-save");
  await page.waitForFunction(() =>
    document.querySelector("tr[data-repo='acme/widgets'] td.timeout").textContent === "90 s");
  assert.equal(await page.locator("#edit").isHidden(), true);

  step("a bad value is refused with the field named");
  await row.getByRole("button", { name: "Edit" }).click();
  await page.fill("#edit-timeout", "0");
  // The browser's own form check would stop 0 (min=1); send it anyway to see the server's answer.
  await page.$eval("#edit-form", (f) => f.setAttribute("novalidate", ""));
  await page.click("#edit-save");
  await page.waitForFunction(() => document.querySelector("#message").textContent.startsWith("timeout_seconds:"));
  await page.click("#edit-cancel");

  step("disable");
  await row.getByRole("button", { name: "Edit" }).click();
  await page.uncheck("#edit-enabled");
  await page.click("#edit-save");
  await page.waitForFunction(() =>
    document.querySelector("tr[data-repo='acme/widgets'] td.state").textContent === "disabled");
  assert.equal(await row.locator("td.timeout").innerText(), "90 s", "the timeout stays");
  await page.screenshot({ path: screenshot, fullPage: true });

  step("remove");
  await row.getByRole("button", { name: "Remove" }).click();
  await row.getByRole("button", { name: "Confirm remove" }).click();
  await row.waitFor({ state: "detached" });
  assert.match(await page.locator("#message").innerText(), /Removed acme\/widgets/);
  assert.equal(await page.locator("#repos tr").count(), 1);

  step("purge drops the mirror, keeps the record");
  assert.notEqual(await prepared.locator("td.mirror").innerText(), "—");
  await prepared.getByRole("button", { name: "Purge" }).click();
  await prepared.getByRole("button", { name: "Confirm purge" }).click();
  await page.waitForFunction(() => document.querySelector("#message").textContent.startsWith("Purged acme/gadgets"));
  await page.waitForFunction(() =>
    document.querySelector("tr[data-repo='acme/gadgets'] td.mirror").textContent === "—");
  assert.equal(await page.locator("#repos tr").count(), 1);

  step("the view survives a reload (token kept for the tab)");
  await page.reload();
  await prepared.waitFor();
  assert.equal(await page.locator("tr[data-repo='acme/widgets']").count(), 0);

  // Refused requests show as "Failed to load resource" in the console; anything else is a bug.
  assert.deepEqual(errors.filter((e) => !e.startsWith("Failed to load resource")), []);
  console.log("admin page: ok");
} finally {
  await browser.close();
}
