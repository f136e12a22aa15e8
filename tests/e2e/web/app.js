// The end-to-end test page: MSAL JS custom auth (@azure/msal-browser 5.30.0)
// driven from Python through tests/browser_driver.mjs (the one driver of the
// e2e and demo tests).
//
// Everything the tests need is on `window.e2e`. Every call returns plain JSON
// (see `describe`): the SDK's state objects stay here, in the page, and the
// Python side refers to them only through the generic `start` / `act` calls:
//
//   e2e.init(config)                    create the CustomAuthPublicClientApplication
//   e2e.start("signIn", {username,...}) any app method that starts a flow
//                                       (signIn, signUp, resetPassword)
//   e2e.act("submitCode", "12345678")   any method of the current flow state
//                                       (submitCode, resendCode, submitPassword,
//                                       submitAttributes, submitNewPassword,
//                                       signIn, requestChallenge, submitChallenge,
//                                       challengeAuthMethod, ...)
//   e2e.currentAccount()                app.getCurrentAccount()
//   e2e.accountAct("getAccessToken", {forceRefresh: true})   / "signOut"
//   e2e.api("DELETE", "me", body, scopes)   fetch() this service's own API (/api/me...)
//                                       with the current account's access token
//
// A failed step keeps the previous state as the current one, so a wrong code can
// be followed by the right one on the same state (as an app would do).
import { CustomAuthPublicClientApplication } from "@azure/msal-browser/custom-auth";

let app = null;
let flow = null; // the SDK state object the next `act` is called on
let account = null; // the last CustomAuthAccountData seen
let apiBase = ""; // customAuth.authApiProxyUrl: this service's base URL

// ------------------------------------------------------------------ JSON views

function methodNames(obj, prefix) {
    const names = new Set();
    for (let p = obj; p && p !== Object.prototype; p = Object.getPrototypeOf(p)) {
        for (const name of Object.getOwnPropertyNames(p)) {
            if (name.startsWith(prefix) && name !== "constructor" && typeof obj[name] === "function" && obj[name].length === 0) {
                names.add(name);
            }
        }
    }
    return [...names].sort();
}

// Every zero-argument isXxx() predicate of an SDK object, evaluated.
function predicates(obj) {
    const out = {};
    for (const name of methodNames(obj, "is")) {
        try {
            out[name] = Boolean(obj[name]());
        } catch (e) {
            out[name] = `throws: ${e}`;
        }
    }
    return out;
}

function jsonSafe(value) {
    try {
        return JSON.parse(JSON.stringify(value ?? null, (k, v) => (v instanceof Date ? v.toISOString() : v)));
    } catch (e) {
        return String(value);
    }
}

// Every zero-argument getXxx() of a flow state (code length, channel, sent to, methods...).
function stateInfo(state) {
    const out = {};
    if (!state) return out;
    for (const name of methodNames(state, "get")) {
        try {
            out[name.slice(3, 4).toLowerCase() + name.slice(4)] = jsonSafe(state[name]());
        } catch (e) {
            // not applicable to this state
        }
    }
    return out;
}

function describeError(error) {
    if (!error) return null;
    const data = error.errorData ?? error;
    return {
        type: error.constructor?.name,
        dataType: data?.constructor?.name,
        is: predicates(error),
        error: data?.error ?? data?.errorCode,
        errorDescription: data?.errorDescription ?? data?.errorMessage ?? String(data),
        errorCodes: data?.errorCodes ?? [],
        subError: data?.subError ?? "",
        correlationId: data?.correlationId,
        redirectReason: data?.redirectReason ?? null, // RedirectError (web fallback, contract §5.8)
    };
}

function describeAccount(acc) {
    const info = acc.getAccount();
    return {
        kind: "account",
        username: info.username,
        name: info.name,
        homeAccountId: info.homeAccountId,
        localAccountId: info.localAccountId,
        tenantId: info.tenantId,
        environment: info.environment,
        idToken: acc.getIdToken(),
        claims: jsonSafe(acc.getClaims()),
    };
}

function describeData(data) {
    if (data == null) return null;
    if (typeof data.getAccount === "function") return describeAccount(data);
    if (typeof data.accessToken === "string") {
        return {
            kind: "authenticationResult",
            accessToken: data.accessToken,
            idToken: data.idToken,
            tokenType: data.tokenType,
            scopes: data.scopes,
            fromCache: data.fromCache,
            expiresOn: data.expiresOn ? new Date(data.expiresOn).toISOString() : null,
            username: data.account?.username,
            idTokenClaims: jsonSafe(data.idTokenClaims),
        };
    }
    return jsonSafe(data);
}

function describe(result) {
    return {
        type: result?.constructor?.name,
        state: result?.state?.stateType ?? null,
        is: predicates(result),
        error: describeError(result?.error),
        data: describeData(result?.data),
        info: stateInfo(result?.state),
    };
}

// A result whose state can act (or be signed in from) becomes the current flow.
function track(result) {
    const failed = typeof result?.isFailed === "function" && result.isFailed();
    if (!failed && result?.state) flow = result.state;
    if (result?.data && typeof result.data.getAccount === "function") account = result.data;
    return describe(result);
}

function need(value, what) {
    if (!value) throw new Error(`e2e: no ${what} yet`);
    return value;
}

// ------------------------------------------------------------------ window.e2e

window.e2e = {
    ready: true,

    async init(config) {
        const logs = config?.system?.loggerOptions?.logLevel;
        if (logs !== undefined) {
            config.system.loggerOptions.loggerCallback = (level, message) => console.log(`[msal:${level}] ${message}`);
        }
        flow = null;
        account = null;
        apiBase = String(config?.customAuth?.authApiProxyUrl ?? "").replace(/\/+$/, "");
        app = await CustomAuthPublicClientApplication.create(config);
        return { isSecureContext: window.isSecureContext, origin: window.location.origin };
    },

    // app.signIn / app.signUp / app.resetPassword (and later: anything else on the app)
    async start(method, input) {
        const fn = need(app, "application")[method];
        if (typeof fn !== "function") throw new Error(`e2e: the application has no method ${method}`);
        flow = null;
        return track(await fn.call(app, input));
    },

    // a method of the current flow state: submitCode, resendCode, submitPassword, ...
    async act(method, ...args) {
        const state = need(flow, "flow state");
        if (typeof state[method] !== "function") {
            throw new Error(`e2e: ${state.stateType ?? state.constructor?.name} has no method ${method}`);
        }
        return track(await state[method](...args));
    },

    flowState() {
        return flow ? { state: flow.stateType ?? flow.constructor?.name, info: stateInfo(flow) } : null;
    },

    currentAccount(input) {
        const result = need(app, "application").getCurrentAccount(input);
        if (result.data) account = result.data;
        return describe(result);
    },

    // a method of the last account: getAccessToken({forceRefresh}), signOut()
    async accountAct(method, ...args) {
        const acc = need(account, "account");
        if (typeof acc[method] !== "function") throw new Error(`e2e: the account has no method ${method}`);
        return describe(await acc[method](...args));
    },

    // A call to this service's own REST API (the account API, /api/me...) the way an
    // app makes it: the current account's access token for `scopes` from the SDK
    // (getAccessToken: the cache, else a refresh), then fetch() with it. Returns the
    // answer as JSON: status, body, the WWW-Authenticate header as the page can read
    // it (null when CORS does not expose it), and the access token used.
    async api(method, path, body = null, scopes = ["api://native-auth/account"]) {
        const current = need(app, "application").getCurrentAccount();
        if (!current.data) throw new Error("e2e: nobody is signed in");
        account = current.data;
        const token = await account.getAccessToken({ forceRefresh: false, scopes });
        if (token.isFailed()) return { status: null, tokenError: describeError(token.error) };
        const headers = { Authorization: `Bearer ${token.data.accessToken}` };
        if (body !== null) headers["Content-Type"] = "application/json";
        const res = await fetch(`${apiBase}/${path}`, {
            method,
            headers,
            body: body === null ? undefined : JSON.stringify(body),
            cache: "no-store",
        });
        const text = await res.text();
        let json = null;
        try {
            json = text ? JSON.parse(text) : null;
        } catch {
            // not JSON: returned as text
        }
        return {
            status: res.status,
            body: json,
            text: json === null ? text : null,
            wwwAuthenticate: res.headers.get("WWW-Authenticate"),
            accessToken: token.data.accessToken,
            fromCache: token.data.fromCache,
        };
    },
};
