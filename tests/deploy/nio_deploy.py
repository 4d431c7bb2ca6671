"""A matrix-nio client against the docker compose deployment (scripts/test-deploy).

Usage: nio_deploy.py BASE_URL CA_FILE USER PASSWORD [--register] [--create NAME]
                     [--room ROOM_ID] [--send TEXT]... [--expect TEXT]...

Connects over HTTPS to BASE_URL (the reverse proxy), trusting only CA_FILE (the
proxy's CA: Caddy's internal one, or the one `lattice generate-tls-cert` made).
With --register, registers USER the way nio does (m.login.dummy) first; then logs
in with a new device and checks whoami. --create makes a room, or --room names
one USER is in; --send posts each TEXT there; --expect is then the room's whole
text history (via /messages), in order. Prints `room <id>`; exits non-zero on
any mismatch.
"""

import argparse
import asyncio
import ssl

from nio import (
    AsyncClient,
    LoginResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomSendResponse,
    WhoamiResponse,
)


async def main(args: argparse.Namespace) -> None:
    tls = ssl.create_default_context(cafile=args.ca_file)
    if args.register:
        registrar = AsyncClient(args.base_url, args.user, ssl=tls)
        reg = await registrar.register(args.user, args.password, device_name="deploy-register")
        assert isinstance(reg, RegisterResponse), f"register failed: {reg}"
        await registrar.close()

    client = AsyncClient(args.base_url, args.user, ssl=tls)
    try:
        login = await client.login(args.password, device_name="deploy-test")
        assert isinstance(login, LoginResponse), f"login failed: {login}"
        who = await client.whoami()
        assert isinstance(who, WhoamiResponse), f"whoami failed: {who}"
        assert (who.user_id, who.device_id) == (login.user_id, login.device_id), who

        room_id = args.room
        if args.create:
            created = await client.room_create(name=args.create)
            assert isinstance(created, RoomCreateResponse), f"create failed: {created}"
            room_id = created.room_id
        for text in args.send:
            sent = await client.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": text}
            )
            assert isinstance(sent, RoomSendResponse), f"send failed: {sent}"
        if args.expect is not None:
            resp = await client.room_messages(room_id, start="", limit=100)
            assert isinstance(resp, RoomMessagesResponse), f"messages failed: {resp}"
            seen = [
                e.body
                for e in reversed(resp.chunk)
                if isinstance(e, RoomMessageText) and e.sender == login.user_id
            ]
            assert seen == args.expect, f"history is {seen}, expected {args.expect}"
        print(f"room {room_id}")
    finally:
        await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("ca_file")
    parser.add_argument("user")
    parser.add_argument("password")
    parser.add_argument("--register", action="store_true")
    parser.add_argument("--create")
    parser.add_argument("--room")
    parser.add_argument("--send", action="append", default=[])
    parser.add_argument("--expect", action="append")
    asyncio.run(main(parser.parse_args()))
