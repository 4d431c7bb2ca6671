// An encrypted bridge on Lattice: matrix-bot-sdk's appservice encryption
// (MSC2409/MSC3202/MSC4203: the bridge never syncs; its ghosts' to-device
// messages, device-list changes and one-time-key counts come in
// transactions), with the Rust crypto (matrix-sdk-crypto through its Node
// binding), against matrix-js-sdk with its Rust crypto, as Element Web runs it.
//
// The framework is Rocket.Chat's npm republication of matrix-bot-sdk
// 0.6.0-beta (`@rocket.chat/forked-matrix-bot-sdk`): upstream matrix-bot-sdk
// cannot be installed from the registry with its crypto (see scripts/node-env).
// Two shims, each for a known defect of that release, not of the server:
// - it reads the device-list `removed` field (MSC3202 names it `left`, as
//   Synapse and Lattice send it) and passes `undefined` on to its crypto
//   binding, which throws, leaving the transaction unanswered for ever: the
//   subclass below copies `left` to `removed` (upstream later defaulted
//   `removed` to `[]`);
// - a ghost's encrypted room event is decrypted by the bot, or by a ghost the
//   bot finds in the room's joined members as itself (its own logged-in
//   device, which a homeserver does not treat as the appservice): the bridge
//   here decrypts with the ghost it made the room for, through bot-sdk's API.
//
// 1. The bridge starts: its bot registers and logs in a device (MSC2778
//    login), whose keys its OlmMachine uploads.
// 2. Bob (matrix-js-sdk, Rust crypto) creates an encrypted room and invites
//    `@crypt_alice`, a ghost nobody registered: Lattice asks the bridge, which
//    creates it; the ghost turns on encryption (a device of its own, its keys
//    uploaded) and joins on the invite.
// 3. Bob sends an encrypted message. The room key reaches the ghost's device
//    as an Olm to-device message in a transaction; the bridge decrypts the
//    event and the ghost answers, encrypted (Megolm, its room key sent to
//    Bob's device over to-device); Bob decrypts the answer.
// 4. The bridge is slow to acknowledge one transaction (Lattice sends one at
//    a time per appservice) while Bob logs in a second device and writes
//    again: the device-list change (Bob changed) waits in Lattice's queue and
//    comes in the next transaction, with Bob's message. The ghost's crypto,
//    told Bob's devices changed, fetches them and shares its room key with the
//    new device too: Bob's second device decrypts the ghost's answer (without
//    the device-list change it could not: the ghost's crypto had Bob's device
//    list already). bot-sdk applies a transaction's device-list changes only
//    to the ghosts the same transaction carries key counts or to-device
//    messages for, hence the change travelling with a message of the room.
//
// Usage: node botsdk_e2ee.mjs BASE_URL REGISTRATION_JSON PORT SERVER_NAME DATA_DIR
// (prints "ok" and exits 0 on success)

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";
import botsdk from "@rocket.chat/forked-matrix-bot-sdk";

const {
    Appservice,
    AutojoinRoomsMixin,
    EncryptedRoomEvent,
    LogLevel,
    LogService,
    RustSdkAppserviceCryptoStorageProvider,
    SimpleFsStorageProvider,
} = botsdk;

logger.setLevel("error");
LogService.setLevel(LogLevel.ERROR);
// bot-sdk's access log and the crypto's tracing go to stdout: only the
// verdict is printed there.
const stdout = process.stdout.write.bind(process.stdout);
process.stdout.write = () => true;
const print = (line) => stdout(line + "\n");
const printError = console.error.bind(console);
console.log = console.info = console.debug = console.trace = () => {};
const [base, registrationJson, port, serverName, dataDir] = process.argv.slice(2);
const registration = JSON.parse(registrationJson);
const fail = (msg) => {
    printError(msg);
    process.exit(1);
};
process.on("unhandledRejection", (e) => fail(`unhandled rejection: ${e?.stack ?? JSON.stringify(e)}`));
// Generous: a loaded CI machine can stall a step for a minute.
setTimeout(() => fail("timed out"), 360_000).unref();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, check, ms = 150_000) {
    const end = Date.now() + ms;
    for (;;) {
        const value = await check();
        if (value) return value;
        if (Date.now() > end) fail(`gave up waiting for ${what}`);
        await sleep(100);
    }
}

// The bridge. With `holdNext` set, the next transaction is acknowledged only
// once `release` is called (step 4).
let holdNext = false;
let holding = false;
let release;
const released = new Promise((r) => (release = r));
const deviceListsSeen = [];
class Bridge extends Appservice {
    async onTransaction(req, res) {
        if (holdNext) {
            holdNext = false;
            holding = true;
            await released;
        }
        const lists = req.body?.["org.matrix.msc3202.device_lists"];
        if (lists) {
            deviceListsSeen.push({ lists: structuredClone(lists), events: req.body.events?.length ?? 0 });
            lists.removed = lists.left ?? [];
        }
        return super.onTransaction(req, res);
    }
}
const bridge = new Bridge({
    port: Number(port),
    bindAddress: "127.0.0.1",
    homeserverName: serverName,
    homeserverUrl: base,
    registration,
    storage: new SimpleFsStorageProvider(`${dataDir}/bridge.json`),
    cryptoStorage: new RustSdkAppserviceCryptoStorageProvider(`${dataDir}/crypto`),
    intentOptions: { encryption: true },
});
AutojoinRoomsMixin.setupOnAppservice(bridge);
const ghostId = `@crypt_alice:${serverName}`;
bridge.on("query.user", (userId, createUser) =>
    createUser(userId === ghostId ? { display_name: "Alice (bridged)" } : false),
);
// What the ghost decrypted, in order; it answers each.
const heard = [];
bridge.on("room.encrypted_event", async (roomId, event) => {
    if (event.sender === ghostId) return;
    try {
        const ghost = bridge.getIntentForUserId(ghostId);
        await ghost.enableEncryption();
        const clear = await ghost.underlyingClient.crypto.decryptRoomEvent(new EncryptedRoomEvent(event), roomId);
        const body = clear.content?.body;
        heard.push(body);
        await ghost.underlyingClient.sendText(roomId, `echo: ${body}`);
    } catch (e) {
        fail(`the ghost could not decrypt or answer ${event.event_id}: ${e?.stack ?? e}`);
    }
});
await bridge.begin();

// The Matrix user, as Element Web runs matrix-js-sdk.
async function start(client) {
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
async function registerBob() {
    const anon = sdk.createClient({ baseUrl: base });
    let session;
    try {
        await anon.registerRequest({ username: "cryptbob", password: "pw-cryptbob" });
        fail("registration without auth succeeded");
    } catch (e) {
        session = e.data?.session;
    }
    const resp = await anon.registerRequest({
        username: "cryptbob",
        password: "pw-cryptbob",
        auth: { type: "m.login.dummy", session },
    });
    return start(
        sdk.createClient({ baseUrl: base, accessToken: resp.access_token, userId: resp.user_id, deviceId: resp.device_id }),
    );
}
async function loginBob() {
    const resp = await sdk.createClient({ baseUrl: base }).loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: "cryptbob" },
        password: "pw-cryptbob",
    });
    return start(
        sdk.createClient({ baseUrl: base, accessToken: resp.access_token, userId: resp.user_id, deviceId: resp.device_id }),
    );
}
async function decryptedFrom(client, roomId, sender, body) {
    return until(`${client.getDeviceId()} decrypting "${body}"`, async () => {
        const room = client.getRoom(roomId);
        if (!room) return null;
        for (const e of room.getLiveTimeline().getEvents()) {
            await client.decryptEventIfNeeded(e);
            if (e.getSender() === sender && e.getType() === "m.room.message" && e.getContent().body === body) {
                return e;
            }
        }
        return null;
    });
}

// 2. An encrypted room with the ghost.
const bob = await registerBob();
const bobId = bob.getUserId();
// Room version 11: the 2022 crypto crate of this bot-sdk release cannot parse
// version 12's room IDs (no `:server` part) and aborts the process.
const { room_id: roomId } = await bob.createRoom({
    room_version: "11",
    preset: "private_chat",
    invite: [ghostId],
    initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
});
await until("the ghost to join on its invite", () => bob.getRoom(roomId)?.getMember(ghostId)?.membership === "join");
const ghostDevices = await until("the ghost's device keys", async () => {
    const keys = await bob.downloadKeysForUsers([ghostId]);
    const devices = Object.keys(keys.device_keys?.[ghostId] ?? {});
    return devices.length ? devices : null;
});
await until("Bob's client to see the room encrypted", () => bob.getCrypto().isEncryptionEnabledInRoom(roomId));

// 3. Both ways, encrypted.
await bob.sendMessage(roomId, { msgtype: "m.text", body: "hello bridge" });
const answer = await decryptedFrom(bob, roomId, ghostId, "echo: hello bridge");
if (answer.getWireType() !== "m.room.encrypted") fail("the ghost's answer was not encrypted");
if (answer.isDecryptionFailure()) fail("Bob could not decrypt the ghost's answer");
if (heard[0] !== "hello bridge") fail(`the ghost heard ${JSON.stringify(heard)}`);

// 4. A transaction held by the bridge; meanwhile a new device of Bob's, and
//    Bob writes again.
const listsBefore = deviceListsSeen.length;
holdNext = true;
await bob.sendMessage(roomId, { msgtype: "m.text", body: "one moment" });
await until("the bridge holding a transaction", () => holding);
const bob2 = await loginBob();
await until("Bob's first device to know his second", async () => {
    const devices = await bob.getCrypto().getUserDeviceInfo([bobId], true);
    return devices.get(bobId)?.has(bob2.getDeviceId());
});
await bob.sendMessage(roomId, { msgtype: "m.text", body: "now on two devices" });
release();
const again = await decryptedFrom(bob2, roomId, ghostId, "echo: now on two devices");
if (again.getWireType() !== "m.room.encrypted" || again.isDecryptionFailure()) {
    fail("Bob's second device could not decrypt the ghost's answer");
}
if (!deviceListsSeen.slice(listsBefore).some((t) => t.lists.changed?.includes(bobId) && t.events > 0)) {
    fail(`no transaction carried Bob's device-list change with an event: ${JSON.stringify(deviceListsSeen)}`);
}
if (JSON.stringify(heard) !== JSON.stringify(["hello bridge", "one moment", "now on two devices"])) {
    fail(`the ghost heard ${JSON.stringify(heard)}`);
}
if (!ghostDevices.length) fail("no ghost device");

bob.stopClient();
bob2.stopClient();
bridge.stop();
print("ok");
process.exit(0);
