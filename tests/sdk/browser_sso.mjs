// A person signing in with SSO in a real browser: headless Chromium (Debian's,
// from scripts/browser-env) driven by playwright-core. Opens the server's SSO
// redirect, types a login name and password into the provider's sign-in page,
// consents, and waits to be sent back to the client, whose page is played by
// an interception (the client's host does not exist).
//
// Usage: node browser_sso.mjs CHROMIUM START_URL LOGIN CLIENT_PREFIX
// Prints the URL the browser was sent to (with its loginToken).

import { chromium } from "playwright-core";

const [executablePath, startUrl, login, clientPrefix] = process.argv.slice(2);
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
    await page.route(`${clientPrefix}**`, (route) =>
        route.fulfill({ status: 200, contentType: "text/html", body: "<p>the client</p>" }),
    );
    await page.goto(startUrl);
    await page.fill('input[name="login"]', login);
    await page.fill('input[name="password"]', "any password");
    await page.click('button[type="submit"]');
    // The consent page.
    await page.waitForSelector('input[name="prompt"][value="consent"]', { state: "attached" });
    await page.click('button[type="submit"]');
    await page.waitForURL(`${clientPrefix}**`);
    console.log(page.url());
} catch (e) {
    fail(String(e?.stack ?? e));
} finally {
    await browser.close();
}
