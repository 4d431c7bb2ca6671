// matrix-bot-sdk (npm), the appservice framework of many bots and bridges, as
// an appservice on loopback against Lattice; a plain client plays the human.
//
// 1. The appservice starts (bot-sdk's own HTTP listener receives the
//    transactions) with its auto-join mixin: every invite of its bot or of a
//    user of its namespace is answered by joining.
// 2. Alice creates a room and invites the bot and `@bots_asked_carol`, a user
//    nobody registered: Lattice asks the appservice (`GET /users/...`), whose
//    handler creates it with a display name. Both join on their own.
// 3. The appservice puppets PUPPETS users at once: each is registered, joins,
//    takes a display name and sends a message dated in the past (`?ts=`, as a
//    bridge replays history); one sets the topic, dated too.
// 4. Alice sees every puppet joined under its name, each message from its
//    puppet with the timestamp the appservice gave, and the dated topic.
// 5. Alice writes "!echo ...": the bot, reading its transactions, answers.
// 6. A direct chat: Alice invites one puppet into a private room, which it
//    joins on its own.
//
// Usage: node botsdk_bridge.mjs BASE_URL REGISTRATION_JSON PORT SERVER_NAME PUPPETS
// (prints "ok" and exits 0 on success)

import botsdk from "matrix-bot-sdk";

const { Appservice, AutojoinRoomsMixin, MemoryStorageProvider, LogService, LogLevel } = botsdk;

// bot-sdk's access log goes to stdout: only the verdict is printed there.
const stdout = process.stdout.write.bind(process.stdout);
process.stdout.write = () => true;
const print = (line) => stdout(line + "\n");

const [base, registrationJson, port, serverName, puppetCount] = process.argv.slice(2);
const registration = JSON.parse(registrationJson);
const fail = (msg) => {
    console.error(msg);
    process.exit(1);
};
// Generous: a loaded CI machine can stall a step for a minute.
setTimeout(() => fail("timed out"), 300_000).unref();
LogService.setLevel(LogLevel.ERROR);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, check, ms = 120_000) {
    const end = Date.now() + ms;
    for (;;) {
        const value = await check();
        if (value) return value;
        if (Date.now() > end) fail(`gave up waiting for ${what}`);
        await sleep(50);
    }
}
const enc = encodeURIComponent;

// The human, as a plain client.
async function call(method, path, token, body) {
    const resp = await fetch(base + path, {
        method,
        headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
        body: body === undefined ? undefined : JSON.stringify(body),
    });
    return [resp.status, await resp.json()];
}
async function ok(method, path, token, body) {
    const [status, json] = await call(method, path, token, body);
    if (status !== 200) fail(`${method} ${path}: ${status} ${JSON.stringify(json)}`);
    return json;
}
async function register(name) {
    const body = { username: name, password: "pw-" + name };
    const [status, first] = await call("POST", "/_matrix/client/v3/register", null, body);
    if (status !== 401) fail(`register: ${status} ${JSON.stringify(first)}`);
    const done = await ok("POST", "/_matrix/client/v3/register", null, {
        ...body,
        auth: { type: "m.login.dummy", session: first.session },
    });
    return done.access_token;
}
const joined = async (token, room) =>
    (await ok("GET", `/_matrix/client/v3/rooms/${enc(room)}/joined_members`, token)).joined;

// 1. The appservice.
const appservice = new Appservice({
    port: Number(port),
    bindAddress: "127.0.0.1",
    homeserverName: serverName,
    homeserverUrl: base,
    registration,
    storage: new MemoryStorageProvider(),
});
AutojoinRoomsMixin.setupOnAppservice(appservice);
const asked = [];
appservice.on("query.user", (userId, createUser) => {
    asked.push(userId);
    const suffix = appservice.getSuffixForUserId(userId);
    createUser(suffix?.startsWith("asked_") ? { display_name: "Asked " + suffix.slice(6) } : false);
});
appservice.on("room.message", async (roomId, event) => {
    const body = event.content?.body ?? "";
    if (!appservice.isNamespacedUser(event.sender) && event.sender !== appservice.botUserId && body.startsWith("!echo ")) {
        await appservice.botIntent.sendText(roomId, "echo: " + body.slice(6), "m.notice");
    }
});
// Joins of its users, as its transactions told it.
const joinsSeen = [];
appservice.on("room.join", (roomId, event) => joinsSeen.push([roomId, event.state_key]));
await appservice.begin();

// 2. A room; the bot and an unknown namespace user invited.
const alice = await register("botsdkalice");
const aliceId = (await ok("GET", "/_matrix/client/v3/account/whoami", alice)).user_id;
// The first puppet may set the topic (it bridges the channel's).
const { room_id: room } = await ok("POST", "/_matrix/client/v3/createRoom", alice, {
    preset: "public_chat",
    name: "Bridged",
    power_level_content_override: { users: { [`@bots_puppet0:${serverName}`]: 50 } },
});
const carol = `@bots_asked_carol:${serverName}`;
for (const who of [appservice.botUserId, carol]) {
    await ok("POST", `/_matrix/client/v3/rooms/${enc(room)}/invite`, alice, { user_id: who });
}
if (!asked.includes(carol)) fail(`the appservice was not asked about ${carol}: ${JSON.stringify(asked)}`);
await until("the bot and carol to join on their invites", async () => {
    const members = await joined(alice, room);
    return members[appservice.botUserId] && members[carol];
});
const carolProfile = await ok("GET", `/_matrix/client/v3/profile/${enc(carol)}`, alice);
if (carolProfile.displayname !== "Asked carol") fail(`carol's profile: ${JSON.stringify(carolProfile)}`);

// 3. Many puppets at once, with dated messages.
const n = Number(puppetCount);
const past = Date.UTC(2020, 0, 1);
const stamp = (i) => past + i * 60_000;
await Promise.all(
    Array.from({ length: n }, async (_, i) => {
        const intent = appservice.getIntentForSuffix(`puppet${i}`);
        await intent.ensureRegisteredAndJoined(room);
        await intent.underlyingClient.setDisplayName(`Puppet ${i}`);
        await intent.underlyingClient.doRequest(
            "PUT",
            `/_matrix/client/r0/rooms/${enc(room)}/send/m.room.message/replay${i}`,
            { ts: stamp(i) },
            { msgtype: "m.text", body: `old message ${i}` },
        );
    }),
);
const topicTs = Date.UTC(2019, 5, 1);
await appservice
    .getIntentForSuffix("puppet0")
    .underlyingClient.doRequest(
        "PUT",
        `/_matrix/client/r0/rooms/${enc(room)}/state/m.room.topic/`,
        { ts: topicTs },
        { topic: "bridged since 2019" },
    );

// 4. What Alice sees.
const members = await joined(alice, room);
for (let i = 0; i < n; i++) {
    const id = `@bots_puppet${i}:${serverName}`;
    if (members[id]?.display_name !== `Puppet ${i}`) fail(`${id} in the room: ${JSON.stringify(members[id])}`);
}
const page = await ok("GET", `/_matrix/client/v3/rooms/${enc(room)}/messages?dir=b&limit=${n + 100}`, alice);
for (let i = 0; i < n; i++) {
    const event = page.chunk.find((e) => e.type === "m.room.message" && e.content.body === `old message ${i}`);
    if (!event) fail(`old message ${i} missing`);
    if (event.sender !== `@bots_puppet${i}:${serverName}`) fail(`old message ${i} from ${event.sender}`);
    if (event.origin_server_ts !== stamp(i)) fail(`old message ${i} dated ${event.origin_server_ts}, not ${stamp(i)}`);
}
const topic = page.chunk.find((e) => e.type === "m.room.topic");
if (topic?.origin_server_ts !== topicTs || topic.content.topic !== "bridged since 2019") {
    fail(`topic: ${JSON.stringify(topic)}`);
}

// 5. The bot answers from its transactions.
await ok("PUT", `/_matrix/client/v3/rooms/${enc(room)}/send/m.room.message/echo1`, alice, {
    msgtype: "m.text",
    body: "!echo hello bots",
});
await until("the bot's answer", async () => {
    const recent = await ok("GET", `/_matrix/client/v3/rooms/${enc(room)}/messages?dir=b&limit=10`, alice);
    return recent.chunk.some(
        (e) => e.sender === appservice.botUserId && e.content.body === "echo: hello bots" && e.content.msgtype === "m.notice",
    );
});

// 6. A direct chat with a puppet, joined on the invite.
const dmTarget = `@bots_puppet1:${serverName}`;
const { room_id: dm } = await ok("POST", "/_matrix/client/v3/createRoom", alice, {
    preset: "trusted_private_chat",
    is_direct: true,
    invite: [dmTarget],
});
await until("the puppet joining the direct chat", async () => (await joined(alice, dm))[dmTarget]);
if (!(await joined(alice, dm))[aliceId]) fail("alice is not in her direct chat");
// The last event (that join) reached the appservice before it stops.
await until("the direct chat's join in a transaction", () =>
    joinsSeen.some(([r, who]) => r === dm && who === dmTarget),
);

appservice.stop();
print("ok");
process.exit(0);
