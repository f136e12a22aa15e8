// Browser driver for the end-to-end tests: headless Debian Chromium through
// puppeteer-core (which never downloads a browser), controlled by Python
// (tests/e2e/e2e_harness.py) with one JSON object per line:
//
//   stdin : {"id": 1, "op": "open", "url": "http://localhost:PORT/", "config": {...}}
//   stdout: {"id": 1, "ok": true, "result": ...}  or  {"id": 1, "ok": false, "error": "..."}
//
// Ops: open (fresh browser context + page, then window.e2e.init(config)),
// call (window.e2e[fn](...args)), network (requests the page made),
// console (page console and errors), close (the page and its context), quit.
// stdout carries only protocol lines; diagnostics go to stderr.
//
// Usage: node driver.mjs --chromium /usr/bin/chromium --user-data-dir DIR
import { createInterface } from "node:readline";
import puppeteer from "puppeteer-core";

function arg(name, fallback) {
    const i = process.argv.indexOf(`--${name}`);
    return i >= 0 ? process.argv[i + 1] : fallback;
}

const chromium = arg("chromium", "/usr/bin/chromium");
const userDataDir = arg("user-data-dir");
if (!userDataDir) {
    console.error("driver: --user-data-dir is required (a fresh directory)");
    process.exit(2);
}

const CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
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

const ops = {
    async open({ url, config }) {
        await closePage();
        requests = [];
        consoleLines = [];
        context = await browser.createBrowserContext(); // fresh storage for each test
        page = await context.newPage();
        watch(page);
        await page.goto(url, { waitUntil: "load" });
        await page.waitForFunction(() => window.e2e && window.e2e.ready === true, { timeout: 10_000 });
        return page.evaluate((cfg) => window.e2e.init(cfg), config);
    },

    async call({ fn, args = [] }) {
        if (!page) throw new Error("no page open");
        return page.evaluate(
            async (name, callArgs) => {
                const f = window.e2e[name];
                if (typeof f !== "function") throw new Error(`window.e2e.${name} is not a function`);
                return f(...callArgs);
            },
            fn,
            args
        );
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
        const result = await withTimeout(Promise.resolve(op(msg)), msg.timeoutMs ?? 60_000, `op ${msg.op}`);
        send({ id: msg.id, ok: true, result: result ?? null });
    } catch (e) {
        send({ id: msg.id, ok: false, error: String(e?.message ?? e), stack: e?.stack });
    }
}
await quit(0); // stdin closed: the test process is gone
