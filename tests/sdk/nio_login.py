"""Logs in to Lattice with matrix-nio (a real client SDK) and checks whoami.

Usage: nio_login.py BASE_URL USERNAME PASSWORD
Registers USERNAME the way nio does (register() sends a bare m.login.dummy), then
logs in with a second client and asks whoami. Exits non-zero on any mismatch.
"""

import asyncio
import sys

from nio import AsyncClient, LoginResponse, RegisterResponse, WhoamiResponse


async def main(base_url: str, username: str, password: str) -> None:
    registrar = AsyncClient(base_url, username)
    reg = await registrar.register(username, password, device_name="nio-register")
    assert isinstance(reg, RegisterResponse), f"register failed: {reg}"
    await registrar.close()

    client = AsyncClient(base_url, username)
    resp = await client.login(password, device_name="nio-test")
    assert isinstance(resp, LoginResponse), f"login failed: {resp}"
    who = await client.whoami()
    assert isinstance(who, WhoamiResponse), f"whoami failed: {who}"
    assert who.user_id == resp.user_id, (who.user_id, resp.user_id)
    assert who.device_id == resp.device_id, (who.device_id, resp.device_id)
    print(f"ok {who.user_id} {who.device_id}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
