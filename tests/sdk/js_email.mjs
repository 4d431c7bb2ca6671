// matrix-js-sdk (the SDK behind Element Web) and email, as Element uses it:
// registration with an email address (requestRegisterEmailToken, the link
// from the mail, the m.login.email.identity stage), login by the address,
// getThreePids, a forgotten password (requestPasswordEmailToken, the mailed
// token posted to submit_url, setPassword without a login), adding a second
// address (requestAdd3pidEmailToken, addThreePidOnly behind the password) and
// deleting it.
//
// Usage: node js_email.mjs BASE_URL MAIL_DIR   (prints "ok" and exits 0 on success)
// MAIL_DIR is where the test's SMTP server writes each mail as NNNN.json.

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";
import { readdirSync, readFileSync } from "node:fs";

logger.setLevel("warn");
const base = process.argv[2];
const mailDir = process.argv[3];
const fail = (msg) => {
    console.error(msg);
    process.exit(1);
};
setTimeout(() => fail("timed out"), 60_000).unref();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Mail number n (1-based), once it has arrived.
async function mail(n) {
    for (let i = 0; i < 300; i++) {
        const names = readdirSync(mailDir).filter((f) => f.endsWith(".json")).sort();
        if (names.length >= n) {
            return JSON.parse(readFileSync(`${mailDir}/${names[n - 1]}`, "utf8"));
        }
        await sleep(100);
    }
    fail(`mail ${n} never arrived`);
}

// The mail's link, at the server's real address (public_baseurl names a host
// no resolver knows here).
function link(m) {
    const found = m.body.split(/\s+/).find((w) => w.includes("/_synapse/client/email/validate?"));
    if (!found) fail(`no link in ${m.body}`);
    const url = new URL(found);
    return base + url.pathname + url.search;
}

// 401 bodies carry the UIA session.
async function uiaSession(promise) {
    try {
        await promise;
    } catch (e) {
        if (e.httpStatus === 401 && e.data?.session) return e.data.session;
        throw e;
    }
    fail("expected a 401 with a UIA session");
}

const anon = sdk.createClient({ baseUrl: base });
const secret = "js-secret-1";
const email = "jsuser@example.org";

// Registration with the address.
const { sid } = await anon.requestRegisterEmailToken(email, secret, 1);
const opened = await fetch(link(await mail(1)));
if (!opened.ok) fail(`link: ${opened.status}`);
const session = await uiaSession(anon.registerRequest({ username: "jsuser", password: "pw-1" }));
const reg = await anon.registerRequest({
    username: "jsuser",
    password: "pw-1",
    auth: {
        type: "m.login.email.identity",
        threepid_creds: { sid, client_secret: secret },
        threepidCreds: { sid, client_secret: secret },
        session,
    },
});
if (reg.user_id !== "@jsuser:test.local") fail(`registered ${reg.user_id}`);

// Login by the address (login() keeps the token on the client it is called
// on: a client of its own).
const login = await sdk.createClient({ baseUrl: base }).login("m.login.password", {
    identifier: { type: "m.id.thirdparty", medium: "email", address: email },
    password: "pw-1",
});
const client = sdk.createClient({
    baseUrl: base,
    accessToken: login.access_token,
    userId: login.user_id,
    deviceId: login.device_id,
});
const { threepids } = await client.getThreePids();
if (threepids.length !== 1 || threepids[0].address !== email) {
    fail(`threepids: ${JSON.stringify(threepids)}`);
}

// A forgotten password, on a client with no login (as Element's "Forgot
// password"): the token typed into the client goes to submit_url.
const forgot = sdk.createClient({ baseUrl: base });
const resetSecret = "js-secret-2";
const reset = await forgot.requestPasswordEmailToken(email, resetSecret, 1);
if (!reset.submit_url) fail("no submit_url");
const token = new URL(link(await mail(2))).searchParams.get("token");
const submitted = await forgot.submitMsisdnTokenOtherUrl(reset.submit_url.replace(/^https?:\/\/[^/]+/, base), reset.sid, resetSecret, token);
if (!submitted.success) fail(`submitToken: ${JSON.stringify(submitted)}`);
const creds = { sid: reset.sid, client_secret: resetSecret };
// As Element does once the user has confirmed: the stage, with no session
// (one is made on the spot), and the new password in one request.
await forgot.setPassword({ type: "m.login.email.identity", threepid_creds: creds, threepidCreds: creds }, "pw-2", true);
const again = await sdk.createClient({ baseUrl: base }).login("m.login.password", {
    identifier: { type: "m.id.user", user: "jsuser" },
    password: "pw-2",
});
const client2 = sdk.createClient({
    baseUrl: base,
    accessToken: again.access_token,
    userId: again.user_id,
    deviceId: again.device_id,
});

// A second address, added behind the password, then deleted.
const addSecret = "js-secret-3";
const second = "jsuser.work@example.org";
const add = await client2.requestAdd3pidEmailToken(second, addSecret, 1);
if (!(await fetch(link(await mail(3)))).ok) fail("add link");
const addSession = await uiaSession(client2.addThreePidOnly({ sid: add.sid, client_secret: addSecret }));
await client2.addThreePidOnly({
    sid: add.sid,
    client_secret: addSecret,
    auth: {
        type: "m.login.password",
        identifier: { type: "m.id.user", user: "@jsuser:test.local" },
        password: "pw-2",
        session: addSession,
    },
});
let listed = (await client2.getThreePids()).threepids.map((t) => t.address).sort();
if (JSON.stringify(listed) !== JSON.stringify([email, second].sort())) fail(`after add: ${listed}`);
const deleted = await client2.deleteThreePid("email", second);
if (deleted.id_server_unbind_result !== "no-support") fail(`delete: ${JSON.stringify(deleted)}`);
listed = (await client2.getThreePids()).threepids.map((t) => t.address);
if (JSON.stringify(listed) !== JSON.stringify([email])) fail(`after delete: ${listed}`);
console.log("ok");
process.exit(0);
