"""A real SMTP server for the end-to-end tests (aiosmtpd, from PyPI).

Listens on 127.0.0.1:PORT and writes every mail it accepts to DIR as
NNNN.json ({"from", "to", "subject", "body", "html", "list_unsubscribe"},
the plain-text and HTML bodies decoded from their transfer encoding), next to the raw NNNN.eml. Optional STARTTLS (required
before MAIL) with --cert/--key, and AUTH (PLAIN/LOGIN, only over TLS) with
--user/--password. Prints "ready" once listening and stops when its standard
input closes (the test that started it is gone).
"""

import argparse
import email
import email.policy
import json
import os
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Capture:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.directory, f"{self.count:04d}")
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        record = {
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "subject": str(message["subject"]),
            "header_from": str(message["from"]),
            "body": body.get_content() if body is not None else "",
            "html": html.get_content() if html is not None else None,
            "list_unsubscribe": message["list-unsubscribe"] and str(message["list-unsubscribe"]),
            "list_unsubscribe_post": message["list-unsubscribe-post"]
            and str(message["list-unsubscribe-post"]),
        }
        with open(base + ".eml", "wb") as f:
            f.write(raw)
        with open(base + ".tmp", "w") as f:
            json.dump(record, f)
        # Appears whole: the reader never sees half a file.
        os.rename(base + ".tmp", base + ".json")
        return "250 Message accepted for delivery"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()

    kwargs = {}
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        kwargs.update(tls_context=context, require_starttls=True)
    if args.user:
        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == args.user
                and auth_data.password.decode() == args.password
            )
            return AuthResult(success=ok)

        kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=True)

    controller = Controller(
        Capture(args.dir), hostname="127.0.0.1", port=args.port, **kwargs
    )
    controller.start()
    print("ready", flush=True)
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main()
