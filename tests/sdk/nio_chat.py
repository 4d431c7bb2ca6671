"""Two matrix-nio clients chat in a room on Lattice, reading with /messages.

Usage: nio_chat.py BASE_URL
Alice creates a room and invites Bob; Bob joins; each sends a message; each pages
the room's history and must see both messages, the other's included, in order.
"""

import asyncio
import sys

from nio import (
    AsyncClient,
    JoinResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomMessagesResponse,
    RoomSendResponse,
    RoomMessageText,
)


async def client(base: str, name: str) -> AsyncClient:
    c = AsyncClient(base, name)
    resp = await c.register(name, "pw-" + name)
    assert isinstance(resp, RegisterResponse), f"register {name}: {resp}"
    return c


async def history(c: AsyncClient, room_id: str) -> list:
    resp = await c.room_messages(room_id, start="", limit=50)
    assert isinstance(resp, RoomMessagesResponse), f"messages: {resp}"
    return [(e.sender, e.body) for e in reversed(resp.chunk) if isinstance(e, RoomMessageText)]


async def main(base: str) -> None:
    alice = await client(base, "nioalice")
    bob = await client(base, "niobob")

    created = await alice.room_create(name="nio chat")
    assert isinstance(created, RoomCreateResponse), f"create: {created}"
    room_id = created.room_id
    invited = await alice.room_invite(room_id, bob.user_id)
    assert isinstance(invited, RoomInviteResponse), f"invite: {invited}"
    joined = await bob.join(room_id)
    assert isinstance(joined, JoinResponse), f"join: {joined}"

    for c, text in ((alice, "hello bob"), (bob, "hello alice")):
        sent = await c.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})
        assert isinstance(sent, RoomSendResponse), f"send: {sent}"

    expected = [(alice.user_id, "hello bob"), (bob.user_id, "hello alice")]
    for c in (alice, bob):
        seen = await history(c, room_id)
        assert seen == expected, f"{c.user_id} saw {seen}"
    print(f"ok {room_id}")
    await alice.close()
    await bob.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
