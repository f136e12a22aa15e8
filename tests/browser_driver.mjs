// The one Chromium driver of the browser tests: the MSAL JS end-to-end suite
// (tests/e2e, through tests/e2e/e2e_harness.py) and the demo app tests
// (tests/test_demo_app.py). Headless Debian Chromium through puppeteer-core
// (which never downloads a browser), controlled with one JSON object per line:
//
//   stdin : {"id": 1, "op": "open", "url": "http://localhost:PORT/", "timeoutMs": 30000, ...}
//   stdout: {"id": 1, "ok": true, "result": ...}  or  {"id": 1, "ok": false, "error": "...", "stack": "..."}
//
// Every op runs in a fresh browser context opened by `open` (empty storage):
//
//   open {url, config?}   load the page. With `config`: the e2e test page; wait for
//                         window.e2e and return window.e2e.init(config). Without:
//                         a page that sets <body data-ready="true"> when it is
//                         ready (the demo); return the screen (below).
//   call {fn, args}       window.e2e[fn](...args) (the e2e test page)
//   type {selector, text, clear?}, click {selector}, select {selector, value}
//                         like a person (the demo)
//   waitView {view}       the demo shows that screen and nothing is in progress
//   waitIdle, waitText {selector, text}, screen, texts {selector}, claims,
//   screenshot {path}     what a person sees (the demo's #card, views, messages)
//   network {clear?}      the requests the page made (method, url, resourceType,
//                         grantType, status, failure)
//   console {clear?}      the page's console lines and errors
//   close                 the page and its context; version; quit
//
// stdout carries only protocol lines; diagnostics go to stderr. An op fails
// after its timeoutMs (default 60 s) plus 5 s; the waits inside an op use
// timeoutMs itself, so their own, clearer message comes first.
//
// Usage: node tests/browser_driver.mjs --chromium /usr/bin/chromium --user-data-dir DIR
import { createInterface } from "node:readline";
import puppeteer from "puppeteer-core";

function arg(name, fallback) {
    const i = process.argv.indexOf(`--${name}`);
    return i >= 0 ? process.argv[i + 1] : fallback;
}

const chromium = arg("chromium", "/usr/bin/chromium");
const userDataDir = arg("user-data-dir");
if (!userDataDir) {
    console.error("browser driver: --user-data-dir is required (a fresh directory)");
    process.exit(2);
}

const CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--font-render-hinting=none",
    // Belt and braces: no host name but localhost resolves, so nothing can leave
    // loopback even if something tried (the tests also check what was requested).
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
];

function send(msg) {
    process.stdout.write(JSON.stringify(msg) + "\n");
}

const browser = await puppeteer.launch({
    executablePath: chromium,
    headless: "shell", // plain --headless
    pipe: true, // no DevTools port; Chromium exits when the pipe closes
    userDataDir,
    args: CHROMIUM_ARGS,
    defaultViewport: { width: 1280, height: 900, deviceScaleFactor: 1 },
    protocolTimeout: 120_000,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
});

let context = null;
let page = null;
let requests = [];
let consoleLines = [];

function formField(body, name) {
    if (!body) return undefined;
    try {
        return new URLSearchParams(body).get(name) ?? undefined;
    } catch {
        return undefined;
    }
}

function watch(p) {
    const byRequest = new Map();
    p.on("request", (req) => {
        const body = req.postData();
        const entry = {
            method: req.method(),
            url: req.url(),
            resourceType: req.resourceType(),
            grantType: formField(body, "grant_type") ?? null,
            status: null,
            failure: null,
        };
        byRequest.set(req, entry);
        requests.push(entry);
    });
    p.on("response", (res) => {
        const entry = byRequest.get(res.request());
        if (entry) entry.status = res.status();
    });
    p.on("requestfailed", (req) => {
        const entry = byRequest.get(req);
        if (entry) entry.failure = req.failure()?.errorText ?? "failed";
    });
    p.on("console", (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`));
    p.on("pageerror", (err) => consoleLines.push(`pageerror: ${err?.message ?? err}`));
}

function need() {
    if (!page) throw new Error("no page open");
    return page;
}

async function closePage() {
    const ctx = context;
    context = null;
    page = null;
    if (ctx) await ctx.close().catch(() => {});
}

function withTimeout(promise, ms, what) {
    let timer;
    return Promise.race([
        promise,
        new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
        }),
    ]).finally(() => clearTimeout(timer));
}

// What a person sees on the demo: the current screen, its heading, and any message.
function readScreen() {
    const card = document.getElementById("card");
    if (!card) return { view: null, busy: false, heading: null, alert: null, notice: null, fieldErrors: [] };
    const visible = (el) => el && !el.hidden && el.offsetParent !== null;
    const text = (el) => (visible(el) ? el.innerText.trim() : null);
    const view = document.querySelector(`.view[data-view="${card.dataset.current}"]`);
    return {
        view: card.dataset.current ?? null,
        busy: card.classList.contains("busy"),
        heading: text(view?.querySelector("h1")),
        alert: text(document.getElementById("alert")),
        notice: text(document.getElementById("notice")),
        fieldErrors: [...document.querySelectorAll(".field-error")].filter(visible).map((e) => e.innerText.trim()),
    };
}

const ops = {
    async open({ url, config, timeoutMs = 30_000 }) {
        await closePage();
        requests = [];
        consoleLines = [];
        context = await browser.createBrowserContext(); // fresh storage for each test
        page = await context.newPage();
        watch(page);
        await page.goto(url, { waitUntil: "load" });
        if (config !== undefined) {
            // the e2e test page: window.e2e creates the SDK application from config
            await page.waitForFunction(() => window.e2e && window.e2e.ready === true, { timeout: 10_000 });
            return page.evaluate((cfg) => window.e2e.init(cfg), config);
        }
        await page.waitForFunction(() => document.body.dataset.ready === "true", { timeout: timeoutMs });
        return page.evaluate(readScreen);
    },

    async call({ fn, args = [] }) {
        return need().evaluate(
            async (name, callArgs) => {
                const f = window.e2e[name];
                if (typeof f !== "function") throw new Error(`window.e2e.${name} is not a function`);
                return f(...callArgs);
            },
            fn,
            args
        );
    },

    async type({ selector, text, clear = true, delay = 15 }) {
        const p = need();
        await p.waitForSelector(selector, { visible: true });
        await p.click(selector, { clickCount: clear ? 3 : 1 });
        if (clear) {
            await p.keyboard.down("Control");
            await p.keyboard.press("KeyA");
            await p.keyboard.up("Control");
            await p.keyboard.press("Backspace");
        }
        await p.keyboard.type(text, { delay });
        return p.$eval(selector, (el) => el.value);
    },

    async click({ selector }) {
        const p = need();
        await p.waitForSelector(selector, { visible: true });
        await p.click(selector);
        return true;
    },

    async select({ selector, value }) {
        const p = need();
        await p.waitForSelector(selector, { visible: true });
        return p.select(selector, value); // fires "change" like a person's choice
    },

    async waitView({ view, timeoutMs = 30_000 }) {
        const p = need();
        try {
            await p.waitForFunction(
                (v) => {
                    const card = document.getElementById("card");
                    if (card.classList.contains("busy") || card.dataset.current !== v) return false;
                    const section = document.querySelector(`.view[data-view="${v}"]`);
                    return section.dataset.ready !== "false";
                },
                { timeout: timeoutMs, polling: 50 },
                view
            );
        } catch (e) {
            const screen = await p.evaluate(readScreen).catch(() => null);
            throw new Error(`the page did not reach the "${view}" screen: ${e.message}; it shows ${JSON.stringify(screen)}`);
        }
        return p.evaluate(readScreen);
    },

    async waitIdle({ timeoutMs = 30_000 }) {
        const p = need();
        await p.waitForFunction(() => !document.getElementById("card").classList.contains("busy"), { timeout: timeoutMs, polling: 50 });
        return p.evaluate(readScreen);
    },

    async waitText({ selector, text, timeoutMs = 30_000 }) {
        const p = need();
        try {
            await p.waitForFunction(
                (sel, t) => {
                    const el = document.querySelector(sel);
                    return el && !el.hidden && el.offsetParent !== null && el.innerText.includes(t);
                },
                { timeout: timeoutMs, polling: 50 },
                selector,
                text
            );
        } catch (e) {
            const screen = await p.evaluate(readScreen).catch(() => null);
            throw new Error(`no "${text}" in ${selector}: ${e.message}; the page shows ${JSON.stringify(screen)}`);
        }
        return p.evaluate(readScreen);
    },

    async screen() {
        return need().evaluate(readScreen);
    },

    async texts({ selector }) {
        return need().$$eval(selector, (els) => els.filter((e) => e.offsetParent !== null).map((e) => e.innerText.trim()));
    },

    async claims() {
        return need().$$eval("#claims-body tr", (rows) =>
            Object.fromEntries(rows.map((r) => [r.dataset.claim, r.querySelector("td").innerText.trim()]))
        );
    },

    async screenshot({ path, fullPage = true }) {
        const p = need();
        await p.evaluate(() => document.activeElement?.blur()); // no caret or focus ring in the picture
        await p.screenshot({ path, fullPage, type: "png" });
        return path;
    },

    network({ clear = false } = {}) {
        const out = requests.slice();
        if (clear) requests = [];
        return out;
    },

    console({ clear = false } = {}) {
        const out = consoleLines.slice();
        if (clear) consoleLines = [];
        return out;
    },

    async close() {
        await closePage();
        return true;
    },

    async version() {
        return browser.version();
    },
};

let quitting = false;
async function quit(code = 0) {
    if (quitting) return;
    quitting = true;
    await closePage();
    await browser.close().catch(() => {});
    process.exit(code);
}

process.on("SIGTERM", () => quit(0));
process.on("SIGINT", () => quit(0));

send({ event: "ready", version: await browser.version() });

// One command at a time, in order.
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
    if (!line.trim()) continue;
    let msg;
    try {
        msg = JSON.parse(line);
    } catch (e) {
        send({ id: null, ok: false, error: `bad JSON: ${e.message}` });
        continue;
    }
    if (msg.op === "quit") {
        send({ id: msg.id, ok: true, result: true });
        await quit(0);
    }
    const op = ops[msg.op];
    if (!op) {
        send({ id: msg.id, ok: false, error: `unknown op ${msg.op}` });
        continue;
    }
    try {
        const result = await withTimeout(Promise.resolve(op(msg)), (msg.timeoutMs ?? 60_000) + 5_000, `op ${msg.op}`);
        send({ id: msg.id, ok: true, result: result ?? null });
    } catch (e) {
        send({ id: msg.id, ok: false, error: String(e?.message ?? e), stack: e?.stack });
    }
}
await quit(0); // stdin closed: the test process is gone
