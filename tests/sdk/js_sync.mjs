// matrix-js-sdk (the SDK behind Element Web) against Lattice: Bob runs the SDK's
// own sync loop; Alice creates a room, invites Bob, Bob joins through the SDK, Alice
// speaks, and Bob's client must see the message arrive in the room's timeline.
//
// Usage: node js_sync.mjs BASE_URL   (prints "ok" and exits 0 on success)

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

logger.setLevel("warn");
const base = process.argv[2];
const fail = (msg) => {
    console.error(msg);
    process.exit(1);
};
setTimeout(() => fail("timed out"), 60_000).unref();

async function register(name) {
    const anon = sdk.createClient({ baseUrl: base });
    const resp = await anon.registerRequest({
        username: name,
        password: "pw-" + name,
        auth: { type: "m.login.dummy" },
    });
    return sdk.createClient({
        baseUrl: base,
        accessToken: resp.access_token,
        userId: resp.user_id,
        deviceId: resp.device_id,
    });
}

const alice = await register("jsalice");
const bob = await register("jsbob");

const prepared = new Promise((resolve) => {
    bob.on(sdk.ClientEvent.Sync, (state) => {
        if (state === "PREPARED") resolve();
    });
});
bob.startClient({ initialSyncLimit: 10 });
await prepared;

const { room_id: roomId } = await alice.createRoom({ name: "JS room", invite: [bob.getUserId()] });

const seen = new Promise((resolve) => {
    bob.on(sdk.RoomEvent.Timeline, (event, room) => {
        if (room?.roomId === roomId && event.getType() === "m.room.message" && event.getSender() === alice.getUserId()) {
            resolve(event.getContent().body);
        }
    });
});
// Bob's sync delivers the invite (checked on the client's own room list, within
// the overall deadline); then he joins through the SDK.
while (bob.getRoom(roomId)?.getMyMembership() !== "invite") {
    await new Promise((r) => setTimeout(r, 50));
}
await bob.joinRoom(roomId);
await alice.sendMessage(roomId, { msgtype: "m.text", body: "hello from js" });
const body = await seen;
if (body !== "hello from js") fail(`unexpected body ${body}`);
if (bob.getRoom(roomId).name !== "JS room") fail(`room name ${bob.getRoom(roomId).name}`);
bob.stopClient();
console.log("ok");
process.exit(0);
