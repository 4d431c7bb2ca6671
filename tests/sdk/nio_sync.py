"""matrix-nio syncs against Lattice and sees another user's message.

Usage: nio_sync.py BASE_URL
Alice and Bob register; Alice creates a room and invites Bob. Bob's first sync
shows the invite; he joins; Alice speaks; Bob's next (long-polling) sync shows
the message in the room's timeline, and nio's room state knows the room's name.
"""

import asyncio
import sys

from nio import AsyncClient, InviteMemberEvent, JoinResponse, RegisterResponse, RoomMessageText, SyncResponse


async def main(base: str) -> None:
    alice = AsyncClient(base, "syncalice")
    bob = AsyncClient(base, "syncbob")
    for c, name in ((alice, "syncalice"), (bob, "syncbob")):
        r = await c.register(name, "pw")
        assert isinstance(r, RegisterResponse), r

    created = await alice.room_create(name="Sync room", invite=[bob.user_id])
    room_id = created.room_id

    first = await bob.sync(timeout=0)
    assert isinstance(first, SyncResponse), first
    assert room_id in first.rooms.invite, f"invite missing: {first.rooms.invite.keys()}"
    assert any(isinstance(e, InviteMemberEvent) for e in first.rooms.invite[room_id].invite_state)

    joined = await bob.join(room_id)
    assert isinstance(joined, JoinResponse), joined
    await bob.sync(timeout=0)
    assert bob.rooms[room_id].name == "Sync room", bob.rooms[room_id].name

    waiter = asyncio.create_task(bob.sync(timeout=30000))
    await asyncio.sleep(0.2)
    await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "are you there?"})
    resp = await waiter
    assert isinstance(resp, SyncResponse), resp
    timeline = resp.rooms.join[room_id].timeline.events
    texts = [(e.sender, e.body) for e in timeline if isinstance(e, RoomMessageText)]
    assert texts == [(alice.user_id, "are you there?")], texts
    print("ok")
    await alice.close()
    await bob.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
