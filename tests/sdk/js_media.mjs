// matrix-js-sdk (the SDK behind Element Web) and media: Alice uploads an avatar
// and an image through the SDK, sets the avatar and sends the image to a room;
// Bob reads her profile and the message, then downloads both images and a
// thumbnail through the authenticated /_matrix/client/v1/media endpoints the SDK
// builds the URLs for (as Element does since spec v1.11).
//
// Usage: node js_media.mjs BASE_URL PNG_PATH   (prints "ok" and exits 0 on success)

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";
import { readFileSync } from "node:fs";

logger.setLevel("warn");
const base = process.argv[2];
const png = readFileSync(process.argv[3]);
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

const alice = await register("mediaalice");
const bob = await register("mediabob");

const avatar = await alice.uploadContent(png, { type: "image/png", name: "avatar.png" });
await alice.setAvatarUrl(avatar.content_uri);
const photo = await alice.uploadContent(png, { type: "image/png", name: "photo.png" });
const { room_id: roomId } = await alice.createRoom({ name: "media", preset: "public_chat" });
await bob.joinRoom(roomId);
await alice.sendMessage(roomId, {
    msgtype: "m.image",
    body: "photo.png",
    url: photo.content_uri,
    info: { mimetype: "image/png", size: png.length },
});

const profile = await bob.getProfileInfo(alice.getUserId());
if (profile.avatar_url !== avatar.content_uri) fail(`avatar ${profile.avatar_url} != ${avatar.content_uri}`);
const page = await bob.createMessagesRequest(roomId, null, 20, "b");
const image = page.chunk.find((e) => e.type === "m.room.message" && e.content.msgtype === "m.image");
if (!image) fail("bob does not see the image message");

const auth = { headers: { Authorization: `Bearer ${bob.getAccessToken()}` } };
for (const mxc of [profile.avatar_url, image.content.url]) {
    const url = bob.mxcUrlToHttp(mxc, undefined, undefined, undefined, false, true, true);
    if (!url.includes("/_matrix/client/v1/media/download/")) fail(`not an authenticated URL: ${url}`);
    const resp = await fetch(url, auth);
    if (resp.status !== 200) fail(`download ${url}: ${resp.status}`);
    const bytes = Buffer.from(await resp.arrayBuffer());
    if (!bytes.equals(png)) fail(`downloaded bytes differ for ${mxc}`);
    const anonymous = await fetch(url);
    if (anonymous.status !== 401) fail(`download without a token: ${anonymous.status}`);
}

const thumbUrl = bob.mxcUrlToHttp(image.content.url, 96, 96, "crop", false, true, true);
if (!thumbUrl.includes("/_matrix/client/v1/media/thumbnail/")) fail(`not an authenticated URL: ${thumbUrl}`);
const thumb = await fetch(thumbUrl, auth);
if (thumb.status !== 200) fail(`thumbnail: ${thumb.status}`);
if (thumb.headers.get("content-type") !== "image/png") fail(`thumbnail type ${thumb.headers.get("content-type")}`);
const t = Buffer.from(await thumb.arrayBuffer());
const [w, h] = [t.readUInt32BE(16), t.readUInt32BE(20)];
if (w !== 96 || h !== 96) fail(`thumbnail is ${w}x${h}`);
console.log("ok");
process.exit(0);
