// A person signing in with SSO in a real browser: headless Chromium (Debian's,
// from scripts/browser-env) driven by playwright-core. Opens the server's SSO
// redirect, types a login name and password into the provider's sign-in page,
// consents, and waits to be sent back to the client, whose page is played by
// an interception (the client's host does not exist).
//
// Usage: node browser_sso.mjs CHROMIUM START_URL LOGIN CLIENT_PREFIX [real]
// Prints the URL the browser was sent to (with its loginToken). With "real",
// the client's page is loaded from the client itself (a client's callback
// server on loopback, as matrix-rust-sdk's login_sso runs one).
//
// With CLIENT_PREFIX "fallback", START_URL is the server's login fallback
// page: the person clicks its first "Continue with" link, signs in, and is
// brought back to the page, which logs in; prints what the page then says.

import { chromium } from "playwright-core";

const [executablePath, startUrl, login, clientPrefix, client] = process.argv.slice(2);
const fail = (msg) => {
    console.error(msg);
    process.exit(1);
};
setTimeout(() => fail("timed out"), 90_000).unref();

const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
    // The test provider's certificate is from the tests' own CA.
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    const fallback = clientPrefix === "fallback";
    if (!fallback && client !== "real") {
        await page.route(`${clientPrefix}**`, (route) =>
            route.fulfill({ status: 200, contentType: "text/html", body: "<p>the client</p>" }),
        );
    }
    await page.goto(startUrl);
    if (fallback) {
        await page.click("#sso a");
    }
    await page.fill('input[name="login"]', login);
    await page.fill('input[name="password"]', "any password");
    await page.click('button[type="submit"]');
    // The consent page.
    await page.waitForSelector('input[name="prompt"][value="consent"]', { state: "attached" });
    await page.click('button[type="submit"]');
    if (fallback) {
        await page.waitForFunction(() =>
            document.getElementById("status")?.textContent.startsWith("You are logged in"),
        );
        if (page.url().includes("loginToken")) fail(`the token stayed in the address: ${page.url()}`);
        console.log(await page.textContent("#status"));
    } else {
        await page.waitForURL(`${clientPrefix}**`);
        console.log(page.url());
    }
} catch (e) {
    fail(String(e?.stack ?? e));
} finally {
    await browser.close();
}
