// browser.mjs: Debian's chromium, headless, through playwright-core, as the browser tests use it.
// The flags keep it off the network (this machine reaches only package registries) and quiet.
import fs from 'node:fs';
import { tmpDir } from './harness.mjs';

export const CHROMIUM = '/usr/bin/chromium';
export const HAVE_CHROMIUM = fs.existsSync(CHROMIUM);
export const SKIP_REASON = `${CHROMIUM} not found (install Debian's chromium to run the browser test)`;
export const STEP_MS = 10000; // bound of every browser wait

/** A persistent headless context in a fresh profile; close() also removes the profile. */
export async function launchBrowser() {
  const { chromium } = await import('playwright-core');
  const userDataDir = tmpDir('capgate-chromium-');
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context.setDefaultTimeout(STEP_MS);
  const close = context.close.bind(context);
  context.close = async () => {
    await close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  };
  return context;
}
