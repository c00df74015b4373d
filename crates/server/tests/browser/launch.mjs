// Headless Chromium as the browser tests run it: no sandbox (containers), nothing fetched
// from the network on its own, and `extra` flags.
import { chromium } from "playwright-core";

export function launch(executablePath, extra = []) {
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ...extra,
    ],
  });
}
