#!/usr/bin/env python3
"""A receiver for statestream's `webhook` streamer, in standard-library Python.

It verifies the Standard Webhooks signature of every request and
deduplicates by `webhook-id`: the streamer delivers at least once (a
retried request, or a block delivered again after a restart, carries the
same id and the same body), so a receiver must apply each id once.

    python3 webhook_receiver.py --port 8080 --secret whsec_...

`--secret` may be given several times (key rotation: a request is accepted
when one of its signatures matches one of the secrets); without it the
secrets come from the environment variable WEBHOOK_SECRETS, separated by
spaces. `--port 0` takes any free port. The first line printed is
`listening on http://HOST:PORT`; then one JSON object per request:
{"event": "accepted" | "duplicate" | "rejected", "id": ..., ...}.

The set of ids seen is kept in memory here. A real receiver stores it with
the effect of the request (in the same database transaction), so that a
crash between the two cannot apply a change twice or lose it.
"""

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Standard Webhooks: reject timestamps further than this from now (replays).
TOLERANCE_SECONDS = 5 * 60
SECRET_PREFIX = "whsec_"


def decode_secret(secret):
    """The HMAC key of a `whsec_<base64>` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a secret must look like whsec_<base64>")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except binascii.Error as e:
        raise ValueError(f"the secret is not base64: {e}") from e
    if not key:
        raise ValueError("the secret is empty")
    return key


def verify(keys, headers, body, now=None):
    """Whether one of the `v1` signatures matches one of the keys."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        return False
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    now = time.time() if now is None else now
    if abs(now - sent) > TOLERANCE_SECONDS:
        return False
    signed = f"{msg_id}.{timestamp}.".encode() + body
    for key in keys:
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for signature in signatures.split(" "):
            version, _, value = signature.partition(",")
            if version == "v1" and hmac.compare_digest(value, expected):
                return True
    return False


class Receiver:
    """The secrets, the ids seen, and where events are printed."""

    def __init__(self, keys, out):
        self.keys = keys
        self.out = out
        self.seen = set()
        self.lock = threading.Lock()

    def handle(self, method, path, headers, body):
        """Returns the status code to answer."""
        msg_id = headers.get("webhook-id")
        if not verify(self.keys, headers, body):
            self.emit({"event": "rejected", "id": msg_id, "method": method, "path": path})
            return 401
        with self.lock:
            duplicate = msg_id in self.seen
            self.seen.add(msg_id)
        if duplicate:
            self.emit({"event": "duplicate", "id": msg_id})
            return 200
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = {"raw_base64": base64.b64encode(body).decode()}
        # This is where the change is applied (cache invalidation, e-mail,
        # search index...).
        self.emit({"event": "accepted", "id": msg_id, "method": method, "path": path,
                   "body": payload})
        return 200

    def emit(self, event):
        with self.lock:
            self.out.write(json.dumps(event) + "\n")
            self.out.flush()


def make_handler(receiver):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = receiver.handle(self.command, self.path, headers, body)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        do_POST = do_PUT = do_PATCH = do_DELETE = answer

        def log_message(self, format, *args):
            pass

    return Handler


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: any free port")
    parser.add_argument("--secret", action="append", default=[],
                        help="whsec_... (repeat for several)")
    args = parser.parse_args(argv)
    secrets = args.secret or os.environ.get("WEBHOOK_SECRETS", "").split()
    if not secrets:
        parser.error("give at least one --secret (or WEBHOOK_SECRETS)")
    try:
        keys = [decode_secret(s) for s in secrets]
    except ValueError as e:
        parser.error(str(e))
    receiver = Receiver(keys, sys.stdout)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(receiver))
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
