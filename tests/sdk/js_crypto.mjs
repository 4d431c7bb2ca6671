// matrix-js-sdk with its Rust crypto (the engine of Element Web), configured as
// Element configures it: `initRustCrypto`, `lazyLoadMembers: true`. Against Lattice:
//
// 1. Alice creates an encrypted private room and invites Bob; Bob joins. Messages
//    go both ways and each side decrypts the other's.
// 2. Bob replies to Alice's message, Alice edits hers, Bob reacts to it: each side
//    sees the other's reply, edit and reaction.
// 3. Alice sends an encrypted image (AES-CTR attachment encryption, as Element
//    does); Bob downloads it through authenticated media and decrypts it exactly.
// 4. Carol joins late and pages back: she sees the history the room lets her see
//    (`shared`), cannot decrypt what was sent before she joined (no keys were
//    shared with her device), and decrypts what Alice sends after she joined.
//
// Usage: node js_crypto.mjs BASE_URL   (prints "ok" and exits 0 on success)

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";
import { webcrypto } from "node:crypto";

logger.setLevel("error");
// The crypto module's own tracing writes to the console at debug level: only
// errors (stderr) and the verdict (stdout) are wanted.
const print = console.log.bind(console);
console.log = console.info = console.debug = console.trace = () => {};
const base = process.argv[2];
const fail = (msg) => {
    console.error(msg);
    process.exit(1);
};
setTimeout(() => fail("timed out"), 150_000).unref();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, check, ms = 60_000) {
    const end = Date.now() + ms;
    for (;;) {
        const value = await check();
        if (value) return value;
        if (Date.now() > end) fail(`gave up waiting for ${what}`);
        await sleep(50);
    }
}

// Registration as Element's does it: an empty first request for the flows, then
// the dummy stage with the session the server gave.
async function register(name) {
    const anon = sdk.createClient({ baseUrl: base });
    let session;
    try {
        await anon.registerRequest({ username: name, password: "pw-" + name });
        fail("registration without auth succeeded");
    } catch (e) {
        if (e.httpStatus !== 401 || !e.data?.flows) fail(`register {}: ${e.httpStatus} ${JSON.stringify(e.data)}`);
        session = e.data.session;
    }
    const resp = await anon.registerRequest({
        username: name,
        password: "pw-" + name,
        auth: { type: "m.login.dummy", session },
    });
    const client = sdk.createClient({
        baseUrl: base,
        accessToken: resp.access_token,
        userId: resp.user_id,
        deviceId: resp.device_id,
    });
    await client.initRustCrypto({ useIndexedDB: false });
    const prepared = new Promise((resolve) => {
        client.on(sdk.ClientEvent.Sync, (state) => {
            if (state === "PREPARED") resolve();
        });
    });
    client.startClient({ lazyLoadMembers: true, initialSyncLimit: 20 });
    await prepared;
    return client;
}

// The timeline events of `roomId` in `client` that match `pred`, decrypted.
async function timeline(client, roomId) {
    const room = client.getRoom(roomId);
    if (!room) return [];
    const events = room.getLiveTimeline().getEvents();
    for (const e of events) await client.decryptEventIfNeeded(e);
    return events;
}
async function waitFor(client, roomId, what, pred) {
    return until(what, async () => (await timeline(client, roomId)).find(pred));
}
const isBody = (sender, body) => (e) =>
    e.getSender() === sender && e.getType() === "m.room.message" && e.getContent().body === body;

const alice = await register("cryptoalice");
const bob = await register("cryptobob");
const aliceId = alice.getUserId();
const bobId = bob.getUserId();

// 1. An encrypted room, as Element creates private rooms.
const { room_id: roomId } = await alice.createRoom({
    name: "Secret",
    preset: "private_chat",
    invite: [bobId],
    initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
});
await until("Bob's invite", () => bob.getRoom(roomId)?.getMyMembership() === "invite");
await bob.joinRoom(roomId);
await until("Alice to see Bob joined", () => alice.getRoom(roomId)?.getMember(bobId)?.membership === "join");
await until("Alice's client to know the room is encrypted", () => alice.isRoomEncrypted?.(roomId) ?? true);

const first = await alice.sendMessage(roomId, { msgtype: "m.text", body: "secret one" });
const seenByBob = await waitFor(bob, roomId, "Bob decrypting Alice's message", isBody(aliceId, "secret one"));
if (seenByBob.getWireType() !== "m.room.encrypted") fail("Alice's message was not sent encrypted");
if (seenByBob.isDecryptionFailure()) fail("Bob could not decrypt");

await until("Bob's client to see the room encrypted", async () => (await bob.getCrypto().isEncryptionEnabledInRoom(roomId)));
await bob.sendMessage(roomId, { msgtype: "m.text", body: "secret two" });
const seenByAlice = await waitFor(alice, roomId, "Alice decrypting Bob's message", isBody(bobId, "secret two"));
if (seenByAlice.getWireType() !== "m.room.encrypted") fail("Bob's message was not sent encrypted");

// 2. A reply, an edit and a reaction.
await bob.sendMessage(roomId, {
    msgtype: "m.text",
    body: "> <" + aliceId + "> secret one\n\nbob replies",
    "m.relates_to": { "m.in_reply_to": { event_id: first.event_id } },
});
const reply = await waitFor(alice, roomId, "Alice seeing Bob's reply", isBody(bobId, "> <" + aliceId + "> secret one\n\nbob replies"));
if (reply.replyEventId !== first.event_id) fail(`reply points at ${reply.replyEventId}`);

await alice.sendMessage(roomId, {
    msgtype: "m.text",
    body: "* secret one, edited",
    "m.new_content": { msgtype: "m.text", body: "secret one, edited" },
    "m.relates_to": { rel_type: "m.replace", event_id: first.event_id },
});
const edit = await waitFor(bob, roomId, "Bob seeing Alice's edit", (e) =>
    e.getSender() === aliceId && e.getContent()["m.new_content"]?.body === "secret one, edited");
if (edit.getRelation()?.event_id !== first.event_id || edit.getRelation()?.rel_type !== "m.replace") {
    fail(`edit relation ${JSON.stringify(edit.getRelation())}`);
}

await bob.sendEvent(roomId, "m.reaction", {
    "m.relates_to": { rel_type: "m.annotation", event_id: first.event_id, key: "👍" },
});
await waitFor(alice, roomId, "Alice seeing Bob's reaction", (e) =>
    e.getSender() === bobId && e.getType() === "m.reaction" &&
    e.getRelation()?.key === "👍" && e.getRelation()?.event_id === first.event_id);

// 3. An encrypted image, encrypted as Element does (AES-CTR-256, SHA-256 of the
//    ciphertext, JWK key), uploaded as opaque bytes.
const b64 = (bytes) => Buffer.from(bytes).toString("base64").replace(/=+$/, "");
const unb64 = (s) => new Uint8Array(Buffer.from(s, "base64"));
const picture = new Uint8Array(50_000).map((_, i) => (i * 7919) % 251);
const key = await webcrypto.subtle.generateKey({ name: "AES-CTR", length: 256 }, true, ["encrypt", "decrypt"]);
const iv = new Uint8Array(16);
webcrypto.getRandomValues(iv.subarray(0, 8));
const cipher = new Uint8Array(await webcrypto.subtle.encrypt({ name: "AES-CTR", counter: iv, length: 64 }, key, picture));
const jwk = await webcrypto.subtle.exportKey("jwk", key);
const upload = await alice.uploadContent(Buffer.from(cipher), { type: "application/octet-stream", name: "picture.bin" });
await alice.sendMessage(roomId, {
    msgtype: "m.image",
    body: "picture.png",
    info: { mimetype: "image/png", size: picture.length },
    file: {
        v: "v2",
        url: upload.content_uri,
        key: { alg: "A256CTR", ext: true, k: jwk.k, key_ops: ["encrypt", "decrypt"], kty: "oct" },
        iv: b64(iv),
        hashes: { sha256: b64(new Uint8Array(await webcrypto.subtle.digest("SHA-256", cipher))) },
    },
});
const image = await waitFor(bob, roomId, "Bob decrypting the image event", (e) =>
    e.getSender() === aliceId && e.getContent().msgtype === "m.image");
if (image.getWireType() !== "m.room.encrypted") fail("the image event was not encrypted");
const file = image.getContent().file;
const url = bob.mxcUrlToHttp(file.url, undefined, undefined, undefined, false, true, true);
const resp = await fetch(url, { headers: { Authorization: `Bearer ${bob.getAccessToken()}` } });
if (resp.status !== 200) fail(`download answered ${resp.status}`);
const got = new Uint8Array(await resp.arrayBuffer());
const digest = b64(new Uint8Array(await webcrypto.subtle.digest("SHA-256", got)));
if (digest !== file.hashes.sha256) fail("downloaded ciphertext does not match its hash");
const bobKey = await webcrypto.subtle.importKey("jwk", file.key, { name: "AES-CTR" }, false, ["decrypt"]);
const plain = new Uint8Array(
    await webcrypto.subtle.decrypt({ name: "AES-CTR", counter: unb64(file.iv), length: 64 }, bobKey, got),
);
if (Buffer.compare(Buffer.from(plain), Buffer.from(picture)) !== 0) fail("decrypted image differs");

// 4. Carol joins late and pages back through the history `shared` lets her see.
const carol = await register("cryptocarol");
const carolId = carol.getUserId();
await alice.invite(roomId, carolId);
await until("Carol's invite", () => carol.getRoom(roomId)?.getMyMembership() === "invite");
const inviter = carol.getRoom(roomId).getDMInviter?.() ?? carol.getRoom(roomId).getMember(carolId)?.events.member?.getSender();
if (inviter !== aliceId) fail(`Carol's invite does not name its inviter: ${inviter}`);
await carol.joinRoom(roomId);
const carolRoom = await until("Carol's room", () => carol.getRoom(roomId)?.getMyMembership() === "join" && carol.getRoom(roomId));
await until("Alice to see Carol joined", () => alice.getRoom(roomId)?.getMember(carolId)?.membership === "join");
// Page back until the room's creation, as Element's timeline does on scroll.
for (let i = 0; i < 20 && !carolRoom.getLiveTimeline().getEvents().some((e) => e.getType() === "m.room.create"); i++) {
    await carol.scrollback(carolRoom, 30);
}
const carolEvents = await timeline(carol, roomId);
if (!carolEvents.some((e) => e.getType() === "m.room.create")) fail("Carol could not page back to the room's creation");
const old = carolEvents.find((e) => e.getId() === first.event_id);
if (!old) fail("Carol does not see Alice's first message in the shared history");
if (!old.isDecryptionFailure() && old.getContent().body === "secret one") fail("Carol decrypted a message sent before her device existed");
await alice.sendMessage(roomId, { msgtype: "m.text", body: "welcome carol" });
await waitFor(carol, roomId, "Carol decrypting a message sent after she joined", isBody(aliceId, "welcome carol"));

for (const c of [alice, bob, carol]) c.stopClient();
print("ok");
process.exit(0);
