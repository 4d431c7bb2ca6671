// A real OpenID Connect provider for the SSO tests: oidc-provider (a certified
// implementation, from npm), over TLS on loopback, with its development
// login and consent pages (any password is accepted for a login name).
//
// Usage: node oidc_provider.mjs PORT CERT KEY REDIRECT_URI
// Prints "ready" once it listens. Issuer: https://127.0.0.1:PORT
//
// Users: alice (groups staff), bob (groups guest); any other login name signs
// in with just preferred_username = the name. One client: "lattice", secret
// "lattice-secret", the given redirect URI.
//
// /tamper/<mode>/token: the real token endpoint, whose ID token is then
// changed and signed again with the provider's own key, as a provider that
// misbehaves (or an attacker holding a token for something else) would send
// it: aud (another client's token), iss (another issuer's), expired, nonce
// (another sign-in's), badsig (signed by a key that is not the provider's),
// none (unsigned); and bare, an honest token with no claims beyond those
// an ID token must have (the rest only at the userinfo endpoint, /me).

import { createServer } from "node:https";
import { readFileSync } from "node:fs";
import Provider from "oidc-provider";
import * as jose from "jose";

const [port, certFile, keyFile, redirectUri] = process.argv.slice(2);
const issuer = `https://127.0.0.1:${port}`;

const users = {
    alice: {
        preferred_username: "alice",
        name: "Alice Liddell",
        email: "alice@example.org",
        groups: ["staff"],
    },
    bob: { preferred_username: "bob", name: "Bob", groups: ["guest"] },
};

const { privateKey } = await jose.generateKeyPair("RS256", { extractable: true });
const signingJwk = { ...(await jose.exportJWK(privateKey)), kid: "test-key", alg: "RS256", use: "sig" };
const other = await jose.generateKeyPair("RS256", { extractable: true });

const provider = new Provider(issuer, {
    clients: [
        {
            client_id: "lattice",
            client_secret: "lattice-secret",
            redirect_uris: [redirectUri],
            grant_types: ["authorization_code"],
            response_types: ["code"],
            token_endpoint_auth_method: "client_secret_basic",
        },
    ],
    jwks: { keys: [signingJwk] },
    cookies: { keys: ["lattice-test-cookie-key"] },
    claims: {
        openid: ["sub"],
        profile: ["preferred_username", "name"],
        email: ["email"],
        groups: ["groups"],
    },
    scopes: ["openid", "profile", "email", "groups"],
    // Scope claims in the ID token too (as Keycloak puts them), not only at
    // the userinfo endpoint.
    conformIdTokenClaims: false,
    async findAccount(ctx, id) {
        const claims = users[id] ?? { preferred_username: id };
        return { accountId: id, async claims() { return { sub: id, ...claims }; } };
    },
    features: { devInteractions: { enabled: true } },
});
provider.proxy = false;
const callback = provider.callback();

async function tampered(mode, req, res) {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const upstream = await fetch(`${issuer}/token`, {
        method: "POST",
        headers: {
            "content-type": req.headers["content-type"],
            authorization: req.headers.authorization ?? "",
        },
        body: Buffer.concat(chunks),
    });
    const answer = await upstream.json();
    if (answer.id_token) {
        const claims = jose.decodeJwt(answer.id_token);
        const now = Math.floor(Date.now() / 1000);
        let key = privateKey;
        switch (mode) {
            case "aud": claims.aud = "another-client"; break;
            case "iss": claims.iss = "https://evil.example"; break;
            case "expired": claims.iat = now - 7200; claims.exp = now - 3600; break;
            case "nonce": claims.nonce = "from-another-sign-in"; break;
            case "badsig": key = other.privateKey; break;
            case "none": break;
            case "bare": // only what an ID token must carry: the rest is at /me
                for (const k of Object.keys(claims)) {
                    if (!["iss", "aud", "sub", "exp", "iat", "nonce", "azp", "auth_time", "at_hash"].includes(k)) delete claims[k];
                }
                break;
            default: res.writeHead(404).end(); return;
        }
        if (mode === "none") {
            answer.id_token = new jose.UnsecuredJWT(claims).encode();
        } else {
            answer.id_token = await new jose.SignJWT(claims)
                .setProtectedHeader({ alg: "RS256", kid: "test-key", typ: "JWT" })
                .sign(key);
        }
    }
    res.writeHead(upstream.status, { "content-type": "application/json" });
    res.end(JSON.stringify(answer));
}

const server = createServer(
    { cert: readFileSync(certFile), key: readFileSync(keyFile) },
    (req, res) => {
        const m = req.url.match(/^\/tamper\/([a-z]+)\/token$/);
        if (m && req.method === "POST") {
            tampered(m[1], req, res).catch((e) => {
                console.error(e);
                res.writeHead(500).end();
            });
            return;
        }
        callback(req, res);
    },
);
server.listen(Number(port), "127.0.0.1", () => console.log("ready"));
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
