// Native Auth demo: a sign-in page built on Microsoft's MSAL JS custom-auth SDK
// (@azure/msal-browser/custom-auth), pointed at this backend by one setting,
// `customAuth.authApiProxyUrl` (injected at serve time through /config.js).
//
// Every screen is driven by the SDK's state objects: an action returns a result
// whose `state` says what the server wants next (a code, a password, attributes,
// a second factor, a method to register) or that the user is signed in. A failed
// action keeps the current state, so the user can simply try again.
//
// Signed in, the "Manage account" view uses this service's account API (/api/me)
// with `fetch` and the SDK's access token for `api://native-auth/account`. A
// change that needs a fresh second factor answers 401 with a claims challenge:
// the page first asks the SDK for a token with those claims silently (enough when
// the session's second factor is recent), else signs in again through the SDK
// with the claims (the second factor follows), then repeats the call.
import { CustomAuthPublicClientApplication } from "@azure/msal-browser/custom-auth";

const CONFIG = window.NATIVE_AUTH_DEMO ?? {};
const API_BASE = CONFIG.apiBase || "http://127.0.0.1:7071/api";
// The account API's scope (its access tokens have aud api://native-auth, scp account).
const ACCOUNT_SCOPE = CONFIG.accountScope || "api://native-auth/account";
// The authentication context the account API asks for (AUTH_ACCOUNT_AUTH_CONTEXT): used only
// when the browser does not let the page read the claims challenge itself (see claimsOf).
const ACCOUNT_CONTEXT = CONFIG.accountAuthContext || "acct";

const MSAL_CONFIG = {
    auth: {
        clientId: CONFIG.clientId || "00000000-0000-0000-0000-000000000001",
        authority: "https://native-auth.local/tenant", // never contacted: every call goes to authApiProxyUrl
        redirectUri: "/",
    },
    customAuth: {
        authApiProxyUrl: API_BASE,
        challengeTypes: ["password", "oob"],
        capabilities: ["mfa_required", "registration_required"],
    },
    cache: { cacheLocation: "sessionStorage" },
};

// ------------------------------------------------------------------ state

let app = null; // CustomAuthPublicClientApplication
let flow = null; // the SDK state the next action is called on
let account = null; // CustomAuthAccountData once signed in
let username = ""; // the email of the current flow
let lastChallenge = null; // how to resend: {kind: "mfa", methodId} | {kind: "jit", details}
let resendReadyAt = 0;
let resendTimer = null;
let profile = null; // the last GET /me
let stepUp = null; // {label, run, claims} while the user signs in again for a change
let confirmation = null; // {label, run, token} while an emailed confirmation code is awaited
let verification = null; // {token, channel} while a new method's code is awaited

// ------------------------------------------------------------------ DOM helpers

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
const card = $("#card");

function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
        if (value == null || value === false) continue;
        if (key === "class") node.className = value;
        else if (key === "text") node.textContent = value;
        else if (key === "dataset") Object.assign(node.dataset, value);
        else if (key in node && typeof value !== "string") node[key] = value;
        else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
        if (child != null) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
}

const ICONS = {
    mail: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 6h16a1 1 0 011 1v10a1 1 0 01-1 1H4a1 1 0 01-1-1V7a1 1 0 011-1zm.8 1.8v.3l7.2 4.6 7.2-4.6v-.3zm14.4 2.4l-6.7 4.3a1 1 0 01-1 0L4.8 10.2V16.2h14.4z"/></svg>',
    phone: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M8 2h8a2 2 0 012 2v16a2 2 0 01-2 2H8a2 2 0 01-2-2V4a2 2 0 012-2zm0 2v14h8V4zm4 15.2a1 1 0 100 2 1 1 0 000-2z"/></svg>',
    shield: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M12 2l8 3.5v6c0 5-3.4 9.4-8 10.5-4.6-1.1-8-5.5-8-10.5v-6zm3.6 7.1L11 13.7l-2.6-2.6-1.4 1.4 4 4 6-6z"/></svg>',
};

function icon(name, cls = "icon") {
    const span = el("span", { class: cls });
    span.innerHTML = ICONS[name]; // static, trusted markup
    return span;
}

// ------------------------------------------------------------------ views

function show(view, { keepMessages = false } = {}) {
    for (const v of $$(".view")) v.hidden = v.dataset.view !== view;
    card.classList.toggle("wide", view === "account" || view === "manage");
    card.dataset.current = view;
    if (!keepMessages) {
        hideAlert();
        hideNotice();
    }
    clearFieldErrors();
    focusView(view);
}

function focusView(view) {
    const root = $(`.view[data-view="${view}"]`);
    if (!root) return;
    const target = $$("input:not([type=hidden]):not(.visually-hidden), select", root)
        .find((i) => !i.disabled && i.offsetParent !== null && (i.type !== "radio" || i.checked));
    (target ?? $("h1", root))?.focus({ preventScroll: true });
}

function showAlert(message, detail = "") {
    $("#alert-text").textContent = message;
    $("#alert-detail").textContent = detail;
    $("#alert-detail").hidden = !detail;
    $("#alert").hidden = false;
}

function hideAlert() {
    $("#alert").hidden = true;
}

function showNotice(message) {
    const n = $("#notice");
    n.textContent = message;
    n.hidden = false;
}

function hideNotice() {
    $("#notice").hidden = true;
}

// ------------------------------------------------------------------ busy state

async function busy(button, action) {
    const controls = $$("input, button, select, textarea", card);
    const was = controls.map((c) => c.disabled);
    const viewBefore = card.dataset.current;
    card.setAttribute("aria-busy", "true");
    card.classList.add("busy");
    button?.classList.add("loading");
    controls.forEach((c) => (c.disabled = true));
    hideAlert();
    try {
        await action();
    } catch (e) {
        console.error(e);
        showAlert(explainException(e), e?.errorCode ?? e?.error ?? e?.name ?? "");
    } finally {
        controls.forEach((c, i) => (c.disabled = was[i]));
        card.removeAttribute("aria-busy");
        card.classList.remove("busy");
        button?.classList.remove("loading");
        updateResend();
        // fields are focusable again: put the cursor where the new screen starts
        if (card.dataset.current !== viewBefore) focusView(card.dataset.current);
    }
}

// ------------------------------------------------------------------ form validation

const MISSING = {
    email: "Enter your email address.",
    password: "Enter a password.",
    tel: "Enter a phone number.",
};

function clearFieldErrors(root = card) {
    for (const e of $$(".field-error", root)) e.remove();
    for (const i of $$("[aria-invalid]", root)) {
        i.removeAttribute("aria-invalid");
        const ids = (i.getAttribute("aria-describedby") || "").split(" ").filter((x) => x && !x.endsWith("-error"));
        if (ids.length) i.setAttribute("aria-describedby", ids.join(" "));
        else i.removeAttribute("aria-describedby");
    }
}

function fieldError(input, message) {
    const id = `${input.id}-error`;
    const p = el("p", { class: "field-error", id, text: message });
    (input.closest(".password-box") ?? input).after(p);
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", [input.getAttribute("aria-describedby"), id].filter(Boolean).join(" "));
}

// True when every visible required input of the form has a usable value.
function validate(form) {
    clearFieldErrors(form);
    let first = null;
    for (const input of $$("input[required]", form)) {
        if (input.offsetParent === null || input.type === "radio") continue;
        const value = input.value.trim();
        let message = null;
        if (!value) message = input.dataset.missing || MISSING[input.type] || "This field is required.";
        else if (input.type === "email" && (input.validity.typeMismatch || !value.includes("."))) {
            message = "Enter a valid email address, like you@example.com.";
        } else if (input.classList.contains("code-input") && !/^\d+$/.test(value)) {
            message = "The code has digits only.";
        } else if (input.classList.contains("code-input") && input.maxLength > 0 && value.length !== input.maxLength) {
            message = `Enter all ${input.maxLength} digits of the code.`;
        }
        if (message) {
            fieldError(input, message);
            first ??= input;
        }
    }
    first?.focus();
    return first === null;
}

// ------------------------------------------------------------------ errors

const PASSWORD_PROBLEMS = {
    password_too_short: "That password is too short. Use a longer passphrase.",
    password_too_long: "That password is too long.",
    password_too_weak: "That password is too easy to guess. Try a longer passphrase.",
    password_banned: "That password is too common. Choose another one.",
    password_recently_used: "You used that password recently. Choose a new one.",
    password_is_invalid: "That password can't be used. Choose another one.",
};

function explain(error) {
    const data = error?.errorData ?? error ?? {};
    const is = (name) => typeof error?.[name] === "function" && error[name]() === true;
    const detail = [data.error, data.subError, (data.errorCodes ?? []).join(",")].filter(Boolean).join(" · ");
    let message;
    // A wrong password is isPasswordIncorrect() at signIn({username, password}) and
    // isInvalidPassword() at SignInPasswordRequiredState.submitPassword (error 50126).
    const wrongPassword = is("isPasswordIncorrect") || (is("isInvalidPassword") && (data.errorCodes ?? []).includes(50126));
    if (wrongPassword) message = "That email and password don't match. Try again, or reset your password.";
    else if (is("isUserNotFound")) message = "We couldn't find an account with that email.";
    else if (is("isInvalidUsername")) message = "Enter a valid email address.";
    else if (is("isInvalidCode") || is("isIncorrectChallenge")) {
        message = "That code isn't right. Check it and try again, or send a new code.";
    } else if (is("isInvalidPassword")) message = PASSWORD_PROBLEMS[data.subError] ?? "That password can't be used. Choose another one.";
    else if (is("isPasswordResetRequired")) message = "You need to reset your password before you can sign in.";
    else if (is("isUserAlreadyExists")) message = "An account with that email already exists. Sign in instead.";
    else if (is("isAttributesValidationFailed")) message = "Some of the details aren't valid. Check them and try again.";
    else if (is("isMissingRequiredAttributes")) message = "Some required details are missing.";
    else if (is("isVerificationContactBlocked")) message = "We can't send codes to that address or number. Try another one.";
    else if (is("isInvalidInput")) message = "Check the phone number or email address and try again. Your sign-in email can't be your second factor.";
    else if (is("isTokenExpired")) message = "This step took too long and has expired. Please start again.";
    else if (is("isRedirectRequired")) message = "This sign-in can't be completed in this app (the server asks for the web experience).";
    else if (is("isPasswordResetFailed")) message = "The password couldn't be reset. Please start again.";
    else if (data.error === "user_already_signed_in") message = "You're already signed in.";
    else message = describeUnknown(data);
    return { message, detail };
}

function describeUnknown(data) {
    const text = String(data.errorDescription ?? data.errorMessage ?? data.message ?? "");
    if (/fetch|network|connect/i.test(text) || /network|http_error|http_request/i.test(data.error ?? "")) {
        return `Can't reach the sign-in service at ${API_BASE}. Is it running?`;
    }
    // Entra-style descriptions carry "AADSTS…: text\r\nTrace ID: …": keep the text.
    const first = text.split(/\r?\n/)[0].replace(/^AADSTS\d+:\s*/, "").trim();
    return first || "Something went wrong. Please try again.";
}

function explainException(e) {
    return describeUnknown(e ?? {});
}

// Shows a failed result's error and reports whether it failed.
function failed(result) {
    if (typeof result?.isFailed === "function" && result.isFailed()) {
        const error = result.error;
        const { message, detail } = explain(error);
        const over = (name) => flow && typeof error?.[name] === "function" && error[name]() === true;
        if (error?.errorData?.error === "user_already_signed_in") {
            restoreAccount();
        } else if (over("isTokenExpired") || over("isRedirectRequired")) {
            restart("signin"); // this flow cannot go on: start again from the email
        }
        showAlert(message, detail);
        refocusAfterError();
        return true;
    }
    return false;
}

function refocusAfterError() {
    const view = $(`.view[data-view="${card.dataset.current}"]`);
    const input = view && $$("input:not(.visually-hidden)", view).find((i) => i.type !== "radio" && i.offsetParent !== null);
    if (input) {
        // inputs are re-enabled when busy() ends, just after this runs
        setTimeout(() => {
            input.focus();
            input.select?.();
        }, 0);
    }
}

// ------------------------------------------------------------------ the flow

// Moves the page to whatever the SDK result says comes next.
async function handle(result) {
    if (failed(result)) return;
    const state = result.state;
    switch (state?.stateType) {
        case "SignInCodeRequiredState":
        case "SignUpCodeRequiredState":
        case "ResetPasswordCodeRequiredState":
            flow = state;
            lastChallenge = null;
            showCode({
                channel: "email",
                sentTo: username,
                length: state.getCodeLength(),
                interval: state.getCodeResendInterval?.() ?? 0,
                purpose: state.stateType.startsWith("SignUp") ? "signup" : state.stateType.startsWith("Reset") ? "reset" : "signin",
            });
            return;
        case "SignInPasswordRequiredState":
            flow = state;
            showPassword("signin");
            return;
        case "SignUpPasswordRequiredState":
            flow = state;
            showPassword("signup");
            return;
        case "ResetPasswordPasswordRequiredState":
            flow = state;
            showPassword("reset");
            return;
        case "SignUpAttributesRequiredState":
            flow = state;
            showAttributes(state.getRequiredAttributes());
            return;
        case "SignUpCompletedState":
        case "ResetPasswordCompletedState": {
            flow = state;
            const done = state.stateType === "SignUpCompletedState" ? "Your account is ready." : "Your password has been changed.";
            showNotice(`${done} Signing you in…`);
            const next = await state.signIn();
            if (next.isFailed()) {
                // the automatic sign-in did not work: the user can still sign in by hand
                restart("signin");
                showNotice(`${done} Sign in to continue.`);
                failed(next);
                return;
            }
            await handle(next);
            if (!account) showNotice(done); // a second factor comes next: keep the good news visible
            return;
        }
        case "MfaAwaitingState":
            flow = state;
            showMfa(state.getAuthMethods());
            return;
        case "MfaVerificationRequiredState":
            flow = state;
            showCode({ channel: state.getChannel(), sentTo: state.getSentTo(), length: state.getCodeLength(), purpose: "mfa" });
            return;
        case "AuthMethodRegistrationRequiredState":
            flow = state;
            showRegister(state.getAuthMethods());
            return;
        case "AuthMethodVerificationRequiredState":
            flow = state;
            showCode({ channel: state.getChannel(), sentTo: state.getSentTo(), length: state.getCodeLength(), purpose: "register" });
            return;
        case "SignInCompletedState":
        case "MfaCompletedState":
        case "AuthMethodRegistrationCompletedState":
            flow = null;
            if (stepUp) {
                await finishStepUp(result.data); // signed in again for a change: make it now
                return;
            }
            await showAccount(result.data, state.stateType === "AuthMethodRegistrationCompletedState");
            return;
        default:
            showAlert("The sign-in service answered something this page doesn't understand.", state?.stateType ?? "");
    }
}

function restart(view = "signin") {
    flow = null;
    lastChallenge = null;
    stepUp = null;
    closeConfirmation();
    closeMethodVerify();
    for (const id of ["#signin-email", "#signup-email", "#reset-email"]) {
        if (username && !$(id).value) $(id).value = username;
    }
    show(view);
}

// ------------------------------------------------------------------ screens

function showPassword(purpose) {
    const form = $("#password-form");
    const input = $("#password-input");
    input.value = "";
    input.type = "password";
    $("[data-reveal=password-input]").textContent = "Show";
    $("#password-username").value = username;
    $(".who-name", form).textContent = username;
    $(".who-avatar", form).textContent = initials(username);
    const signin = purpose === "signin";
    $("#password-title").textContent = signin ? "Enter your password" : purpose === "reset" ? "Choose a new password" : "Choose a password";
    $("#password-label").textContent = signin ? "Password" : "New password";
    input.autocomplete = signin ? "current-password" : "new-password";
    $("#password-forgot").hidden = !signin;
    $("#password-hint").hidden = signin;
    $("#password-submit").textContent = signin ? "Sign in" : purpose === "reset" ? "Reset password" : "Continue";
    show("password", { keepMessages: true });
}

function showCode({ channel, sentTo, length, interval = 0, purpose }) {
    const sms = channel === "sms";
    const box = $("#code-icon");
    box.replaceChildren(icon(sms ? "phone" : "mail", "icon"));
    const titles = {
        signin: "Check your email",
        signup: "Confirm your email",
        reset: "Check your email",
        mfa: sms ? "Check your phone" : "Check your inbox",
        register: sms ? "Confirm your phone" : "Confirm your email",
    };
    $("#code-title").textContent = titles[purpose] ?? "Enter your code";
    const lead = $("#code-lead");
    lead.replaceChildren(
        `Enter the ${length ? `${length}-digit ` : ""}code we ${sms ? "texted" : "emailed"} to `,
        el("strong", { text: sentTo || "you" }),
        "."
    );
    const input = $("#code-input");
    input.value = "";
    input.maxLength = length || 8;
    input.size = Math.max(6, length || 8);
    input.placeholder = "•".repeat(length || 6);
    $("#code-label").textContent = sms ? "Code from the text message" : "Code from the email";
    startResendCooldown(interval);
    show("code", { keepMessages: true });
}

function startResendCooldown(seconds) {
    resendReadyAt = Date.now() + Math.max(0, seconds) * 1000;
    clearInterval(resendTimer);
    resendTimer = seconds > 0 ? setInterval(updateResend, 1000) : null;
    updateResend();
}

function updateResend() {
    const button = $("#code-resend");
    const left = Math.ceil((resendReadyAt - Date.now()) / 1000);
    if (left > 0) {
        button.disabled = true;
        button.textContent = `Resend code in ${left} s`;
    } else {
        if (!card.classList.contains("busy")) button.disabled = false;
        button.textContent = "Resend code";
        clearInterval(resendTimer);
        resendTimer = null;
    }
}

function methodText(method) {
    const sms = method.challenge_channel === "sms";
    return { title: sms ? "Text message" : "Email", icon: sms ? "phone" : "mail" };
}

function choice(name, value, checked, iconName, title, subtitle, subClass = "choice-sub") {
    const id = `${name}-${value}`.replace(/[^A-Za-z0-9_-]/g, "_");
    return el(
        "label",
        { class: "choice", for: id },
        el("input", { type: "radio", name, value, id, checked }),
        icon(iconName, "choice-icon"),
        el("span", { class: "choice-text" }, el("span", { class: "choice-title", text: title }), subtitle ? el("span", { class: subClass, text: subtitle }) : null)
    );
}

function showMfa(methods) {
    const box = $("#mfa-methods");
    $$(".choice, .empty", box).forEach((n) => n.remove());
    if (!methods.length) box.append(el("p", { class: "empty muted", text: "No verification method is available." }));
    methods.forEach((m, i) => {
        const t = methodText(m);
        box.append(choice("mfa-method", m.id, i === 0, t.icon, t.title, m.login_hint ?? "", "choice-sub mono"));
    });
    show("mfa", { keepMessages: true });
}

let registerMethods = [];

function showRegister(methods) {
    registerMethods = methods;
    const box = $("#register-methods");
    $$(".choice", box).forEach((n) => n.remove());
    // Phone first: a second factor on another channel than the sign-in email is the usual choice.
    const ordered = [...methods].sort((a, b) => (a.challenge_channel === "sms" ? -1 : 0) - (b.challenge_channel === "sms" ? -1 : 0));
    ordered.forEach((m, i) => {
        const sms = m.challenge_channel === "sms";
        box.append(choice("register-method", m.id, i === 0, sms ? "phone" : "mail", sms ? "Text message" : "Email",
            sms ? "Get codes on your mobile phone" : "Get codes by email"));
    });
    $("#register-contact").value = "";
    syncRegisterContact();
    show("register", { keepMessages: true });
}

function selectedRegisterMethod() {
    const id = $("input[name=register-method]:checked")?.value;
    return registerMethods.find((m) => m.id === id);
}

function syncRegisterContact() {
    const method = selectedRegisterMethod();
    const sms = method?.challenge_channel !== "email";
    const input = $("#register-contact");
    const previous = input.dataset.channel;
    input.dataset.channel = sms ? "sms" : "email";
    input.type = sms ? "tel" : "email";
    input.autocomplete = sms ? "tel" : "email";
    input.inputMode = sms ? "tel" : "email";
    input.placeholder = sms ? "+49 151 12345678" : "you@example.com";
    $("#register-contact-label").textContent = sms ? "Mobile phone number" : "Email address";
    $("#register-contact-hint").textContent = sms
        ? "In international format, starting with + and the country code."
        : "We'll send a code to confirm it. Use another mailbox than the one you sign in with.";
    if (previous !== input.dataset.channel) input.value = "";
    clearFieldErrors($("#register-form"));
}

function humanize(name) {
    const bare = name.replace(/^extension_[0-9a-f]+_/i, "");
    const words = bare.replace(/([a-z])([A-Z])/g, "$1 $2").replace(/_/g, " ").toLowerCase();
    return words.charAt(0).toUpperCase() + words.slice(1);
}

function showAttributes(required) {
    const box = $("#attributes-fields");
    box.replaceChildren();
    for (const attr of required) {
        const id = `attr-${attr.name}`;
        if (attr.type === "boolean") {
            box.append(el("div", { class: "field check" },
                el("input", { type: "checkbox", id, name: attr.name, dataset: { attr: attr.name, kind: "boolean" } }),
                el("label", { for: id, text: humanize(attr.name) })));
            continue;
        }
        box.append(el("div", { class: "field" },
            el("label", { for: id, text: humanize(attr.name) }),
            el("input", {
                id, name: attr.name, required: attr.required !== false,
                type: attr.type === "int" ? "text" : "text",
                inputmode: attr.type === "int" ? "numeric" : null,
                dataset: { attr: attr.name, kind: attr.type ?? "string", missing: `Enter your ${humanize(attr.name).toLowerCase()}.` },
            })));
    }
    show("attributes", { keepMessages: true });
}

// ------------------------------------------------------------------ signed in

const CLAIM_ORDER = ["name", "preferred_username", "email", "oid", "sub", "amr", "acr", "auth_time", "iat", "nbf", "exp",
    "iss", "aud", "tid", "ver", "nonce"];
const CLAIM_INFO = {
    name: "Display name",
    preferred_username: "Username",
    email: "Email",
    oid: "Object id of the user",
    sub: "Subject (per app)",
    amr: "Authentication methods",
    acr: "Authentication context class",
    auth_time: "Signed in at",
    iat: "Issued at",
    nbf: "Not before",
    exp: "Expires",
    iss: "Issuer",
    aud: "Audience (this app)",
    tid: "Tenant",
    ver: "Token version",
    idp: "Identity provider",
    login_hint: "Login hint",
    sid: "Session id",
    uti: "Token id",
    rh: "Internal",
};
const TIME_CLAIMS = new Set(["auth_time", "iat", "nbf", "exp"]);
const AMR = { pwd: "Password", otp: "Email code", sms: "SMS code", mfa: "Multi-factor", email: "Email code", fed: "Federated" };

function initials(text) {
    const value = String(text || "?").trim();
    if (value.includes("@")) return value[0].toUpperCase(); // an address: its first letter
    const words = value.split(/\s+/).filter(Boolean);
    return ((words[0]?.[0] ?? "?") + (words.length > 1 ? words[words.length - 1][0] : "")).toUpperCase();
}

function relative(seconds) {
    const diff = Math.round(seconds - Date.now() / 1000);
    const abs = Math.abs(diff);
    const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
    if (abs < 60) return rtf.format(diff, "second");
    if (abs < 3600) return rtf.format(Math.round(diff / 60), "minute");
    if (abs < 86400) return rtf.format(Math.round(diff / 3600), "hour");
    return rtf.format(Math.round(diff / 86400), "day");
}

function timeValue(seconds) {
    const d = new Date(seconds * 1000);
    return el("span", { class: "time", title: d.toISOString() },
        el("span", { text: d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" }) }),
        el("span", { class: "muted", text: ` · ${relative(seconds)}` }));
}

function claimValue(name, value) {
    if (TIME_CLAIMS.has(name) && typeof value === "number") return timeValue(value);
    if (Array.isArray(value)) {
        return el("span", { class: "chips" }, value.map((v) => el("span", { class: "chip", text: String(v), title: AMR[v] ?? null })));
    }
    if (value && typeof value === "object") return el("code", { class: "json", text: JSON.stringify(value) });
    return el("span", { class: /^[0-9a-f-]{32,}$/i.test(String(value)) ? "mono" : null, text: String(value) });
}

function renderClaims(claims) {
    const names = Object.keys(claims);
    names.sort((a, b) => {
        const ia = CLAIM_ORDER.indexOf(a), ib = CLAIM_ORDER.indexOf(b);
        return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
    });
    $("#claims-body").replaceChildren(...names.map((name) => el("tr", { dataset: { claim: name } },
        el("th", { scope: "row" }, el("code", { text: name }), CLAIM_INFO[name] ? el("span", { class: "claim-info", text: CLAIM_INFO[name] }) : null),
        el("td", {}, claimValue(name, claims[name])))));
    $("#claims-json").textContent = JSON.stringify(claims, null, 2);

    const amr = Array.isArray(claims.amr) ? claims.amr : [];
    const facts = amr.filter((m) => m !== "mfa").map((m) => el("span", { class: "fact" }, icon("shield", "fact-icon"), AMR[m] ?? m));
    if (amr.includes("mfa")) facts.push(el("span", { class: "fact strong" }, icon("shield", "fact-icon"), "Multi-factor"));
    if (typeof claims.auth_time === "number") facts.push(el("span", { class: "fact plain", text: `Signed in ${relative(claims.auth_time)}` }));
    $("#account-facts").replaceChildren(...facts);
}

function decodeJwt(token) {
    try {
        const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
        const json = decodeURIComponent(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "="))
            .split("").map((c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""));
        return JSON.parse(json);
    } catch {
        return {};
    }
}

function renderToken(result, how) {
    const claims = decodeJwt(result.accessToken ?? "");
    const expires = result.expiresOn ? new Date(result.expiresOn).getTime() / 1000 : claims.exp;
    const rows = [
        ["Expires", expires ? timeValue(expires) : "—"],
        ["Scopes", el("span", { class: "chips" }, (result.scopes ?? []).map((s) => el("span", { class: "chip", text: s })))],
        ["Audience", el("span", { class: "mono", text: String(claims.aud ?? "—") })],
        ["Obtained", how],
    ];
    $("#token-info").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
}

// The signed-in view's content (name, claims) for an account.
function fillAccount(acc) {
    account = acc;
    const info = acc.getAccount();
    const claims = acc.getClaims() ?? {};
    username = info.username || username;
    const title = claims.name || info.name || info.username;
    $("#account-name").textContent = title;
    $("#account-username").textContent = info.username;
    $("#account-username").hidden = title === info.username;
    $("#account-avatar").textContent = initials(claims.name || info.username);
    renderClaims(claims);
    $("#token-info").replaceChildren();
}

async function showAccount(acc, registered = false) {
    fillAccount(acc);
    const section = $("#account");
    section.dataset.ready = "false";
    show("account", { keepMessages: true });
    hideAlert();
    if (registered) showNotice("Your second factor is set up, and you're signed in.");
    else hideNotice();
    const token = await acc.getAccessToken({ forceRefresh: false });
    if (!failed(token)) renderToken(token.data, token.data.fromCache ? "From the cache (issued at sign-in)" : "From the token endpoint");
    section.dataset.ready = "true";
}

function restoreAccount() {
    const current = app?.getCurrentAccount();
    if (current?.data) return showAccount(current.data);
    return null;
}

// ------------------------------------------------------------------ the account API (/api/me)

class ApiError extends Error {
    constructor(status, body, headers = null) {
        super(body?.error_description || `HTTP ${status}`);
        this.status = status;
        this.body = body ?? {};
        this.headers = headers;
    }

    get code() {
        return this.body.error ?? "";
    }
}

// An access token for the account API from the SDK: the cache, else a refresh.
async function accountToken(forceRefresh) {
    if (!account) throw new ApiError(401, { error: "invalid_token", error_description: "Nobody is signed in." });
    const result = await account.getAccessToken({ forceRefresh, scopes: [ACCOUNT_SCOPE] });
    if (result.isFailed()) {
        const data = result.error?.errorData ?? result.error ?? {};
        const text = `${data.error ?? data.errorCode ?? ""} ${data.errorDescription ?? data.errorMessage ?? ""}`;
        if (/network|fetch|http_request|http_error|connect/i.test(text)) {
            throw new ApiError(0, { error: "network", error_description: `Can't reach the sign-in service at ${API_BASE}. Is it running?` });
        }
        // the refresh was refused: this session is over (signed out everywhere, password reset, ...)
        throw new ApiError(401, { error: "invalid_token", error_description: "Your session has ended." });
    }
    return result.data.accessToken;
}

// One call to the account API: the parsed JSON answer (null for 204), or an ApiError.
async function api(method, path, body = null, retried = false) {
    const token = await accountToken(retried);
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== null) headers["Content-Type"] = "application/json";
    let res;
    try {
        res = await fetch(`${API_BASE}/${path}`, {
            method,
            headers,
            body: body === null ? undefined : JSON.stringify(body),
            cache: "no-store",
        });
    } catch (e) {
        throw new ApiError(0, { error: "network", error_description: `Can't reach the account API at ${API_BASE}. Is it running?` });
    }
    const text = res.status === 204 ? "" : await res.text();
    let data = null;
    try {
        data = text ? JSON.parse(text) : null;
    } catch {
        data = { error_description: text.slice(0, 200) };
    }
    if (res.ok) return data;
    const error = new ApiError(res.status, data, res.headers);
    // A token the API no longer takes (say, issued before this session's password change):
    // one fresh token from the SDK (a refresh), then once more.
    if (res.status === 401 && error.code === "invalid_token" && !retried) return api(method, path, body, true);
    throw error;
}

// The claims a 401 asks for, as the JSON string the SDK takes: WWW-Authenticate carries
// them base64-encoded (claims="..."). A page on another origin than the API sees that
// header only when the API lists it in Access-Control-Expose-Headers; otherwise it asks
// for the account API's authentication context, which is what the challenge says.
function claimsOf(error) {
    const header = error.headers?.get("WWW-Authenticate") ?? "";
    const match = /claims="([^"]+)"/.exec(header);
    if (match) {
        try {
            const claims = atob(match[1]);
            JSON.parse(claims);
            return claims;
        } catch {
            // not base64 JSON: fall through
        }
    }
    console.warn(`The claims challenge is not readable here (WWW-Authenticate not exposed by CORS); asking for the "${ACCOUNT_CONTEXT}" context.`);
    return JSON.stringify({ access_token: { acrs: { essential: true, value: ACCOUNT_CONTEXT } } });
}

// A change that may need fresh proof. run(proof) makes the API calls (proof: {} or
// {confirmation, code}). On a claims challenge: a silent token with the claims first,
// else sign in again (startStepUp; the change resumes in finishStepUp). An account
// without a second factor proves itself with an emailed code instead.
async function change(label, run, stage = "first") {
    try {
        await run({});
    } catch (e) {
        if (!(e instanceof ApiError)) throw e;
        if (e.status === 401 && e.code === "insufficient_claims" && stage !== "stepped-up") {
            const claims = claimsOf(e);
            if (stage === "first") {
                const silent = await account.getAccessToken({ forceRefresh: true, scopes: [ACCOUNT_SCOPE], claims });
                if (!silent.isFailed()) return change(label, run, "silent");
            }
            startStepUp(label, run, claims);
            return;
        }
        if (e.status === 401 && e.code === "confirmation_required") {
            await startConfirmation(label, run);
            return;
        }
        throw e;
    }
}

const API_PROBLEMS = {
    insufficient_claims: "This change still needs a fresh second step. Please try again.",
    confirmation_required: "This change needs a code we email you. Please try again.",
    last_method_required: "This is your last way to receive codes, and your sign-in needs one. Add another before you remove it.",
    not_found: "That isn't on your account any more.",
    insufficient_scope: "This app's access token isn't allowed to use the account API.",
    expired_token: "This took too long and has expired. Please start again.",
    slow_down: "Too many changes in a short time. Please wait a little and try again.",
};

function explainApi(e) {
    const b = e.body ?? {};
    const codes = b.error_codes ?? [];
    const detail = [e.status ? `HTTP ${e.status}` : "", b.error, b.suberror, codes.join(",")].filter(Boolean).join(" · ");
    let message;
    if (codes.includes(50126)) message = "Your current password isn't right.";
    else if (PASSWORD_PROBLEMS[b.suberror]) message = PASSWORD_PROBLEMS[b.suberror];
    else if (b.suberror === "invalid_oob_value") message = "That code isn't right. Check it and try again.";
    else if (b.suberror === "attribute_validation_failed") message = "That value isn't valid. Check it and try again.";
    else if (e.status === 0) message = b.error_description;
    else if (e.status === 429) message = API_PROBLEMS.slow_down;
    else if (API_PROBLEMS[b.error]) message = API_PROBLEMS[b.error];
    else message = describeUnknown({ errorDescription: b.error_description ?? "", error: b.error });
    return { message, detail };
}

function reportAccountError(e, button = null) {
    if (e instanceof ApiError && e.status === 401 && e.code === "invalid_token") {
        endSession("Your session has ended (signed out elsewhere, or the account changed). Sign in again.");
        return;
    }
    if (e instanceof ApiError) {
        const { message, detail } = explainApi(e);
        showAlert(message, detail);
    } else {
        console.error(e);
        showAlert(explainException(e), e?.errorCode ?? e?.name ?? "");
    }
    // back to the field of the form the action came from (inputs are re-enabled when busy() ends)
    const form = button?.closest("form");
    const input = form && $$("input:not(.visually-hidden)", form).find((i) => i.type !== "checkbox" && i.offsetParent !== null);
    if (input) {
        setTimeout(() => {
            input.focus();
            input.select?.();
        }, 0);
    }
}

// Runs an account action with the busy state and the account API's error messages.
function accountAction(button, action) {
    return busy(button, async () => {
        try {
            await action();
        } catch (e) {
            reportAccountError(e, button);
        }
    });
}

// Signs this page out (the SDK's cache only; the server session is ended by the API call before).
async function signOutLocally() {
    const acc = account;
    account = null;
    profile = null;
    if (acc) {
        const result = await acc.signOut();
        if (result.isFailed()) console.warn("sign-out failed", result.error);
    }
}

async function endSession(message) {
    await signOutLocally();
    restart("signin");
    showAlert(message);
}

// ---- the view

function whenText(iso) {
    return iso ? timeValue(Date.parse(iso) / 1000) : "—";
}

function renderProfile(p) {
    profile = p;
    const extra = Object.entries(p.attributes ?? {}).filter(([name]) => name !== "displayName");
    const rows = [
        ["Email", el("span", { text: p.email })],
        ["Name", el("span", { text: p.displayName || "—" })],
        ...extra.map(([name, value]) => [humanize(name), el("span", { text: String(value) })]),
        ["Created", whenText(p.created)],
        ["Last sign-in", whenText(p.lastSignIn)],
        p.hasPassword && p.passwordChanged ? ["Password changed", whenText(p.passwordChanged)]
            : ["Password", p.hasPassword ? "Set" : "None: you sign in with email codes"],
    ];
    $("#profile-info").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
    $("#profile-name").value = p.displayName ?? "";
    $("#change-password-username").value = p.email;
    $("#change-password-form").closest(".panel").hidden = !p.hasPassword;
    renderMethods(p.methods ?? []);
}

function methodLabel(m) {
    return m.channel === "sms" ? "Phone" : "Email";
}

function renderMethods(methods) {
    const list = $("#methods-list");
    if (!methods.length) {
        list.replaceChildren(el("li", { class: "empty muted", text: "None yet. Add a phone or another email address." }));
        return;
    }
    list.replaceChildren(...methods.map((m) => el("li", { class: "method", dataset: { id: m.id } },
        icon(m.channel === "sms" ? "phone" : "mail", "choice-icon"),
        el("span", { class: "choice-text" },
            el("span", { class: "choice-title", text: methodLabel(m) }),
            el("span", { class: "choice-sub mono", text: m.target })),
        m.default ? el("span", { class: "badge ok", text: "Default" }) : null,
        el("button", { type: "button", class: "btn ghost small method-remove", dataset: { id: m.id },
            "aria-label": `Remove ${m.target}`, text: "Remove" }))));
}

async function loadProfile() {
    renderProfile(await api("GET", "me"));
}

// Shows the account view; `after` runs once the profile is loaded (a resumed change).
async function openManage({ keepMessages = false, after = null } = {}) {
    const section = $("#manage");
    section.dataset.ready = "false";
    show("manage", { keepMessages });
    try {
        await loadProfile();
        if (after) await after();
    } catch (e) {
        reportAccountError(e);
    } finally {
        section.dataset.ready = "true";
    }
}

function syncMethodChannel() {
    const sms = $("#method-channel").value === "sms";
    const input = $("#method-target");
    input.type = sms ? "tel" : "email";
    input.autocomplete = sms ? "tel" : "email";
    input.inputMode = sms ? "tel" : "email";
    input.placeholder = sms ? "+49 151 12345678" : "you@example.net";
    input.dataset.missing = sms ? "Enter a phone number." : "Enter an email address.";
    $("#method-target-label").textContent = sms ? "Mobile phone number" : "Another email address";
    clearFieldErrors($("#method-add-form"));
}

function showMethodVerify(sent) {
    verification = { token: sent.verification, channel: sent.channel };
    const sms = sent.channel === "sms";
    $("#method-verify-lead").replaceChildren(
        `Enter the ${sent.codeLength}-digit code we ${sms ? "texted" : "emailed"} to `, el("strong", { text: sent.target }), ".");
    $("#method-code-label").textContent = sms ? "Code from the text message" : "Code from the email";
    const input = $("#method-code");
    input.value = "";
    input.maxLength = sent.codeLength || 8;
    input.placeholder = "•".repeat(sent.codeLength || 6);
    $("#method-add-form").hidden = true;
    $("#method-verify-form").hidden = false;
    showNotice(`We sent a code to ${sent.target}.`);
    setTimeout(() => input.focus(), 0); // once busy() has re-enabled it
}

function closeMethodVerify() {
    verification = null;
    $("#method-verify-form").hidden = true;
    $("#method-add-form").hidden = false;
}

async function startConfirmation(label, run) {
    const sent = await api("POST", "me/confirmation", {});
    confirmation = { label, run, token: sent.confirmation };
    $("#confirm-lead").replaceChildren(
        `To ${label}, enter the ${sent.codeLength}-digit code we emailed to `, el("strong", { text: sent.target }), ".");
    const input = $("#confirm-code");
    input.value = "";
    input.maxLength = sent.codeLength || 8;
    input.placeholder = "•".repeat(sent.codeLength || 8);
    $("#confirm-form").hidden = false;
    showNotice("Your account has no second step yet, so we emailed you a code to confirm this change.");
    setTimeout(() => input.focus(), 0);
}

function closeConfirmation() {
    confirmation = null;
    $("#confirm-form").hidden = true;
}

// ---- step-up: sign in again through the SDK with the claims

function startStepUp(label, run, claims) {
    stepUp = { label, run, claims };
    const form = $("#stepup-form");
    $("#stepup-lead").textContent = `To ${label}, sign in again and confirm with your second step.`;
    $(".who-name", form).textContent = username;
    $(".who-avatar", form).textContent = initials(username);
    $("#stepup-username").value = username;
    const input = $("#stepup-password");
    input.value = "";
    input.type = "password";
    $("[data-reveal=stepup-password]").textContent = "Show";
    $("#stepup-password-field").hidden = profile?.hasPassword === false;
    show("stepup");
}

async function finishStepUp(acc) {
    const { label, run } = stepUp;
    stepUp = null;
    fillAccount(acc);
    hideAlert();
    hideNotice();
    await openManage({ keepMessages: true, after: () => change(label, run, "stepped-up") });
}

// ------------------------------------------------------------------ wiring

function on(selector, event, handler) {
    $(selector).addEventListener(event, handler);
}

function submitter(form) {
    return $("button[type=submit]", form);
}

on("#signin-form", "submit", (e) => {
    e.preventDefault();
    if (!validate(e.target)) return;
    username = $("#signin-email").value.trim();
    busy(submitter(e.target), async () => handle(await app.signIn({ username })));
});

on("#signup-form", "submit", (e) => {
    e.preventDefault();
    if (!validate(e.target)) return;
    username = $("#signup-email").value.trim();
    const name = $("#signup-name").value.trim();
    const inputs = { username, password: $("#signup-password").value };
    if (name) inputs.attributes = { displayName: name };
    busy(submitter(e.target), async () => handle(await app.signUp(inputs)));
});

on("#reset-form", "submit", (e) => {
    e.preventDefault();
    if (!validate(e.target)) return;
    username = $("#reset-email").value.trim();
    busy(submitter(e.target), async () => handle(await app.resetPassword({ username })));
});

on("#password-form", "submit", (e) => {
    e.preventDefault();
    if (!validate(e.target)) return;
    const password = $("#password-input").value;
    const state = flow;
    busy(submitter(e.target), async () => {
        const method = typeof state.submitNewPassword === "function" ? "submitNewPassword" : "submitPassword";
        await handle(await state[method](password));
    });
});

on("#code-form", "submit", (e) => {
    e.preventDefault();
    if (!validate(e.target)) return;
    const code = $("#code-input").value.trim();
    const state = flow;
    busy(submitter(e.target), async () => {
        const method = typeof state.submitCode === "function" ? "submitCode" : "submitChallenge";
        await handle(await state[method](code));
    });
});

on("#code-input", "input", (e) => {
    const digits = e.target.value.replace(/\D/g, "");
    if (digits !== e.target.value) e.target.value = digits;
});

on("#code-resend", "click", (e) => {
    const state = flow;
    busy(e.currentTarget, async () => {
        let result;
        if (typeof state.resendCode === "function") result = await state.resendCode();
        else if (lastChallenge?.kind === "mfa") result = await state.requestChallenge(lastChallenge.methodId);
        else if (lastChallenge?.kind === "jit") result = await state.challengeAuthMethod(lastChallenge.details);
        else return;
        if (failed(result)) return;
        const keep = lastChallenge;
        await handle(result);
        lastChallenge = keep;
        showNotice("We sent you a new code. Earlier codes no longer work.");
        setTimeout(() => $("#code-input").focus(), 0); // once busy() has re-enabled it
    });
});

on("#mfa-form", "submit", (e) => {
    e.preventDefault();
    const methodId = $("input[name=mfa-method]:checked")?.value;
    if (!methodId) {
        showAlert("Choose where to send the code.");
        return;
    }
    const state = flow;
    busy(submitter(e.target), async () => {
        const result = await state.requestChallenge(methodId);
        await handle(result);
        if (!result.isFailed()) lastChallenge = { kind: "mfa", methodId };
    });
});

on("#register-methods", "change", syncRegisterContact);

on("#register-form", "submit", (e) => {
    e.preventDefault();
    if (!validate(e.target)) return;
    const method = selectedRegisterMethod();
    if (!method) {
        showAlert("Choose how you'd like to receive codes.");
        return;
    }
    const contact = $("#register-contact").value.trim();
    const details = {
        authMethodType: method,
        verificationContact: method.challenge_channel === "sms" ? contact.replace(/[\s().-]/g, "") : contact,
    };
    const state = flow;
    busy(submitter(e.target), async () => {
        const result = await state.challengeAuthMethod(details);
        await handle(result);
        if (!result.isFailed()) lastChallenge = { kind: "jit", details };
    });
});

on("#attributes-form", "submit", (e) => {
    e.preventDefault();
    if (!validate(e.target)) return;
    const attributes = {};
    for (const input of $$("[data-attr]", e.target)) {
        if (input.dataset.kind === "boolean") attributes[input.dataset.attr] = input.checked ? "true" : "false";
        else if (input.value.trim()) attributes[input.dataset.attr] = input.value.trim();
    }
    const state = flow;
    busy(submitter(e.target), async () => handle(await state.submitAttributes(attributes)));
});

on("#refresh", "click", (e) => {
    busy(e.currentTarget, async () => {
        const result = await account.getAccessToken({ forceRefresh: true });
        if (failed(result)) return;
        const claims = account.getClaims() ?? result.data.idTokenClaims ?? {};
        renderClaims({ ...claims, ...(result.data.idTokenClaims ?? {}) });
        renderToken(result.data, result.data.fromCache ? "From the cache" : `Refreshed ${new Date().toLocaleTimeString()}`);
        showNotice("Tokens refreshed with the refresh token.");
    });
});

on("#signout", "click", (e) => {
    busy(e.currentTarget, async () => {
        const result = await account.signOut();
        if (failed(result)) return;
        account = null;
        restart("signin");
        $("#signin-email").value = username;
        showNotice("You're signed out.");
    });
});

// ---- the account view

on("#open-manage", "click", (e) => {
    closeConfirmation();
    closeMethodVerify();
    busy(e.currentTarget, () => openManage());
});

on("#manage-back", "click", (e) => {
    busy(e.currentTarget, async () => showAccount(account));
});

on("#profile-form", "submit", (e) => {
    e.preventDefault();
    if (!validate(e.target)) return;
    const displayName = $("#profile-name").value.trim();
    accountAction(submitter(e.target), async () => {
        renderProfile(await api("PATCH", "me", { attributes: { displayName } }));
        showNotice("Your profile is saved.");
    });
});

on("#change-password-form", "submit", (e) => {
    e.preventDefault();
    if (!validate(e.target)) return;
    const body = {
        currentPassword: $("#current-password").value,
        newPassword: $("#new-password").value,
        signOutOtherSessions: $("#signout-others").checked,
    };
    accountAction(submitter(e.target), async () => {
        await api("POST", "me/password", body);
        $("#current-password").value = "";
        $("#new-password").value = "";
        await loadProfile();
        showNotice(body.signOutOtherSessions
            ? "Your password has been changed, and your other sessions are signed out."
            : "Your password has been changed.");
    });
});

on("#method-channel", "change", syncMethodChannel);

on("#method-add-form", "submit", (e) => {
    e.preventDefault();
    if (!validate(e.target)) return;
    const channel = $("#method-channel").value;
    const raw = $("#method-target").value.trim();
    const target = channel === "sms" ? raw.replace(/[\s().-]/g, "") : raw;
    const label = channel === "sms" ? "add a phone number" : "add an email address";
    accountAction(submitter(e.target), () => change(label, async (proof) => {
        showMethodVerify(await api("POST", "me/methods", { channel, target, ...proof }));
    }));
});

on("#method-code", "input", (e) => {
    const digits = e.target.value.replace(/\D/g, "");
    if (digits !== e.target.value) e.target.value = digits;
});

on("#method-verify-form", "submit", (e) => {
    e.preventDefault();
    if (!validate(e.target) || !verification) return;
    const code = $("#method-code").value.trim();
    const token = verification.token;
    accountAction(submitter(e.target), async () => {
        const added = await api("POST", "me/methods/verify", { verification: token, code });
        closeMethodVerify();
        $("#method-target").value = "";
        await loadProfile();
        showNotice(`${methodLabel(added)} ${added.target} is added. You can use it for your second step.`);
    });
});

on("#method-cancel", "click", () => {
    closeMethodVerify();
    hideNotice();
});

on("#methods-list", "click", (e) => {
    const button = e.target.closest("button.method-remove");
    if (!button) return;
    const method = (profile?.methods ?? []).find((m) => m.id === button.dataset.id);
    if (!method) return;
    const what = `${methodLabel(method).toLowerCase()} ${method.target}`;
    accountAction(button, () => change(`remove ${what}`, async (proof) => {
        await api("DELETE", `me/methods/${encodeURIComponent(method.id)}`, Object.keys(proof).length ? proof : null);
        await loadProfile();
        showNotice(`${methodLabel(method)} ${method.target} is removed.`);
    }));
});

on("#confirm-code", "input", (e) => {
    const digits = e.target.value.replace(/\D/g, "");
    if (digits !== e.target.value) e.target.value = digits;
});

on("#confirm-form", "submit", (e) => {
    e.preventDefault();
    if (!validate(e.target) || !confirmation) return;
    const { run, token } = confirmation;
    const code = $("#confirm-code").value.trim();
    accountAction(submitter(e.target), async () => {
        await run({ confirmation: token, code });
        closeConfirmation();
    });
});

on("#confirm-cancel", "click", () => {
    closeConfirmation();
    hideNotice();
});

on("#revoke-sessions", "click", (e) => {
    accountAction(e.currentTarget, async () => {
        await api("POST", "me/revoke-sessions");
        await signOutLocally();
        restart("signin");
        showNotice("You're signed out everywhere, on this device too.");
    });
});

on("#delete-form", "submit", (e) => {
    e.preventDefault();
    if (!validate(e.target)) return;
    const input = $("#delete-confirm");
    const email = (profile?.email ?? username).toLowerCase();
    if (input.value.trim().toLowerCase() !== email) {
        fieldError(input, "That isn't your account's email address.");
        input.focus();
        return;
    }
    accountAction(submitter(e.target), () => change("delete your account", async (proof) => {
        await api("DELETE", "me", Object.keys(proof).length ? proof : null);
        await signOutLocally();
        input.value = "";
        username = "";
        $("#signin-email").value = "";
        restart("signin");
        showNotice("Your account is deleted. We've emailed you a confirmation.");
    }));
});

on("#stepup-form", "submit", (e) => {
    e.preventDefault();
    if (!validate(e.target) || !stepUp) return;
    const passwordField = $("#stepup-password-field");
    const password = passwordField.hidden ? "" : $("#stepup-password").value;
    const { claims } = stepUp;
    busy(submitter(e.target), async () => {
        // The SDK refuses signIn while an account is cached, so this page signs out
        // first (its cache only), then signs in again with the claims.
        if (account) await signOutLocally();
        const inputs = { username, scopes: [ACCOUNT_SCOPE], claims };
        if (password) inputs.password = password;
        await handle(await app.signIn(inputs));
    });
});

on("#stepup-cancel", "click", () => {
    stepUp = null;
    if (account) {
        show("manage");
        showNotice("Nothing was changed.");
    } else {
        restart("signin");
        showNotice("Nothing was changed. You're signed out: sign in again to continue.");
    }
});

for (const button of $$("[data-go]")) {
    button.addEventListener("click", () => {
        const view = button.dataset.go;
        const email = username || $("#signin-email").value.trim();
        const target = $(`#${view}-email`);
        if (target && !target.value && email) target.value = email;
        flow = null;
        stepUp = null; // another flow: a pending account change is dropped
        show(view);
    });
}

for (const button of $$("[data-restart]")) button.addEventListener("click", () => restart("signin"));

for (const button of $$("[data-reveal]")) {
    button.addEventListener("click", () => {
        const input = $(`#${button.dataset.reveal}`);
        const reveal = input.type === "password";
        input.type = reveal ? "text" : "password";
        button.textContent = reveal ? "Hide" : "Show";
        button.setAttribute("aria-label", reveal ? "Hide password" : "Show password");
        input.focus();
    });
}

// ------------------------------------------------------------------ start

async function start() {
    $("#api-base").textContent = API_BASE;
    try {
        if (!window.isSecureContext) {
            throw new Error("This page must be opened from http://localhost or https (the SDK needs a secure context).");
        }
        app = await CustomAuthPublicClientApplication.create(MSAL_CONFIG);
    } catch (e) {
        console.error(e);
        show("signin");
        showAlert("The sign-in library could not start.", String(e?.message ?? e));
        for (const c of $$("input, button", card)) c.disabled = true;
        return;
    }
    const current = app.getCurrentAccount();
    if (current.data) await showAccount(current.data);
    else show("signin");
    document.body.dataset.ready = "true";
}

start();
