// matrix-js-sdk's single sign-on, as Element Web uses it: getSsoLoginUrl for
// the browser, then a token login with the loginToken the browser comes back
// with (the test plays the browser in between).
//
// Usage: node js_sso.mjs BASE_URL url REDIRECT_URL IDP_ID   (prints the URL)
//        node js_sso.mjs BASE_URL login LOGIN_TOKEN         (prints "ok USER_ID")

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

logger.setLevel("warn");
const [base, mode, ...args] = process.argv.slice(2);
const fail = (msg) => {
    console.error(msg);
    process.exit(1);
};
setTimeout(() => fail("timed out"), 60_000).unref();

const client = sdk.createClient({ baseUrl: base });
if (mode === "url") {
    const [redirectUrl, idpId] = args;
    const flows = await client.loginFlows();
    const sso = flows.flows.find((f) => f.type === "m.login.sso");
    if (!sso?.identity_providers?.some((p) => p.id === idpId)) fail(`no ${idpId} in ${JSON.stringify(flows)}`);
    console.log(client.getSsoLoginUrl(redirectUrl, "sso", idpId));
} else if (mode === "login") {
    // loginRequest, as the SDK recommends (loginWithToken is deprecated).
    const response = await client.loginRequest({ type: "m.login.token", token: args[0] });
    if (!response.access_token) fail(JSON.stringify(response));
    const authed = sdk.createClient({
        baseUrl: base,
        accessToken: response.access_token,
        userId: response.user_id,
    });
    const me = await authed.whoami();
    if (me.user_id !== response.user_id) fail(JSON.stringify(me));
    console.log(`ok ${me.user_id}`);
} else {
    fail(`unknown mode ${mode}`);
}
