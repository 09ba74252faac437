// Opens files of a dkvs gateway in Debian's Chromium (headless, loopback only) as a user
// would, and prints what happened as one line of JSON:
//   node play.mjs sound URL   plays the sound at URL in the browser's own player, seeks to 25 s:
//                             {"responses": [{"status", "range"}...], "time", "error"}
//   node play.mjs page URL    opens the page at URL (it sets its title from a script if
//                             scripts run): {"title", "images": [the width of each image]}
//   node play.mjs click URL TEXT   opens the page at URL and clicks its link TEXT, as a user
//                             does: {"url", "status", "text"} of the page it leads to
//   node play.mjs dapp URL TOKEN   a page of another origin (http://localhost:PORT, served
//                             by the driver on 127.0.0.1) calls the API at URL as a dapp does,
//                             with TOKEN and without: {"put", "got", "refused", "metrics"},
//                             each a status, or "blocked: ..." where the browser kept the
//                             answer from the page
import http from 'node:http';
import { chromium } from 'playwright-core';

const [what, url, text] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // As root (CI), Chromium's own sandbox cannot start; the page's sandbox is the gateway's.
  args: ['--no-sandbox', '--autoplay-policy=no-user-gesture-required'],
});
try {
  const page = await browser.newPage();
  const responses = [];
  page.on('response', (r) => {
    if (r.url().startsWith(url.split('?')[0])) {
      responses.push({ status: r.status(), range: r.request().headers()['range'] || null });
    }
  });
  // What went wrong is reported, not thrown: a page the browser gave up on still says
  // which answers it had.
  const failed = (e) => ({ time: null, error: String(e).split('\n')[0] });
  // A dapp's own server, on loopback (Chromium lets a page of a public site reach loopback
  // only with the user's permission).
  const site = http.createServer((_, r) => {
    r.writeHead(200, { 'content-type': 'text/html' });
    r.end('<title>dapp</title>');
  });
  if (what === 'dapp') {
    await new Promise((listening) => site.listen(0, '127.0.0.1', listening));
  }
  const dapp = () => `http://localhost:${site.address().port}/`;
  await page.goto(what === 'dapp' ? dapp() : url, { timeout: 30000 });
  if (what === 'dapp') {
    const called = await page.evaluate(async ([api, token]) => {
      const auth = { Authorization: `Bearer ${token}` };
      const key = `${api}/v1/kv/~/from-a-dapp`;
      const tried = async (f) => {
        try {
          return await f();
        } catch (e) {
          return `blocked: ${e}`;
        }
      };
      const put = await tried(async () =>
        (await fetch(key, { method: 'PUT', headers: auth, body: 'hello from a dapp' })).status);
      const got = await tried(async () => {
        const r = await fetch(key, { headers: auth });
        return { status: r.status, value: await r.text(), seq: r.headers.get('dkvs-seq') };
      });
      const refused = await tried(async () => (await fetch(`${api}/v1/status`)).status);
      const metrics = await tried(async () => (await fetch(`${api}/metrics`)).status);
      return { put, got, refused, metrics };
    }, [url, text]);
    site.close();
    console.log(JSON.stringify(called));
  } else if (what === 'sound') {
    const played = page.evaluate(async () => {
      const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
      const v = document.querySelector('video, audio');
      if (!v) return { time: null, error: 'no player' };
      v.muted = true;
      for (let i = 0; i < 100 && v.readyState < 1; i++) await sleep(50);
      v.currentTime = 25;
      for (let i = 0; i < 100 && (v.seeking || v.readyState < 2); i++) await sleep(50);
      return { time: v.currentTime, error: v.error ? v.error.code : null };
    });
    let timer;
    const late = new Promise((r) => {
      timer = setTimeout(() => r(failed('no answer within 30 s')), 30000);
    });
    const player = await Promise.race([played.catch(failed), late]);
    clearTimeout(timer);
    console.log(JSON.stringify({ responses, ...player }));
  } else if (what === 'click') {
    const [response] = await Promise.all([
      page.waitForNavigation({ timeout: 30000 }),
      page.getByRole('link', { name: text, exact: true }).click({ timeout: 30000 }),
    ]);
    const shown = await page.evaluate(() => document.body ? document.body.innerText : '');
    console.log(JSON.stringify({ url: page.url(), status: response && response.status(), text: shown }));
  } else {
    await page.waitForTimeout(500);
    // The width of each image as shown (0 for one that did not load).
    const images = await page.evaluate(() => Array.from(document.images, (i) => i.naturalWidth));
    console.log(JSON.stringify({ title: await page.title(), images, responses }));
  }
} finally {
  await browser.close();
}
