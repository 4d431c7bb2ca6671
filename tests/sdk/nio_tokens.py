"""matrix-nio pages a room's history from its sync token on Lattice.

Usage: nio_tokens.py BASE_URL
Alice sends messages, syncs, sends one more; `room_messages(start=next_batch)`
must give the messages before the sync, newest first, and its `end` must go on
with the older ones.
"""

import asyncio
import sys

from nio import (
    AsyncClient,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)


async def send(c: AsyncClient, room_id: str, text: str) -> None:
    sent = await c.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})
    assert isinstance(sent, RoomSendResponse), f"send: {sent}"


def texts(resp: RoomMessagesResponse) -> list:
    return [e.body for e in resp.chunk if isinstance(e, RoomMessageText)]


async def main(base: str) -> None:
    alice = AsyncClient(base, "niotokens")
    resp = await alice.register("niotokens", "pw-niotokens")
    assert isinstance(resp, RegisterResponse), f"register: {resp}"
    created = await alice.room_create(name="nio tokens")
    assert isinstance(created, RoomCreateResponse), f"create: {created}"
    room_id = created.room_id
    for i in range(4):
        await send(alice, room_id, f"m{i}")
    synced = await alice.sync(timeout=0)
    assert isinstance(synced, SyncResponse), f"sync: {synced}"
    await send(alice, room_id, "after the sync")

    page = await alice.room_messages(room_id, start=synced.next_batch, limit=2)
    assert isinstance(page, RoomMessagesResponse), f"messages: {page}"
    assert texts(page) == ["m3", "m2"], f"first page: {texts(page)}"
    assert page.end, f"no end: {page}"
    older = await alice.room_messages(room_id, start=page.end, limit=2)
    assert isinstance(older, RoomMessagesResponse), f"messages: {older}"
    assert texts(older) == ["m1", "m0"], f"second page: {texts(older)}"
    print(f"ok {room_id}")
    await alice.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
