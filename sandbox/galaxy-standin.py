#!/usr/bin/python3
"""A stand-in for a Galaxy web server, for the sandbox in this folder.

It answers the few requests galaxyctl-api and its tests make, the way Galaxy 26.1
answers them, and can be told to misbehave. Standard library only: it runs with
the system's /usr/bin/python3 as a user unit.

Environment:
  STANDIN_PORT         TCP port on 127.0.0.1 to listen on (default 8080)
  STANDIN_SOCKET       listen on this unix socket path instead of a port
  STANDIN_START_DELAY  seconds to wait before listening; like gunicorn --preload,
                       the port refuses connections until then (default 0)
  STANDIN_MODE         ok (default) | fail-start (exit 1 at once) |
                       error (500 everywhere) | hang (accept, never answer)

Paths are served with and without a leading /galaxy, since nginx passes the
prefix through as it does for a Galaxy with galaxy_url_prefix set.
"""

import http.server
import json
import os
import signal
import socketserver
import sys
import threading
import time

VERSION = {"version_major": "26.1", "version_minor": "1"}
FRONT_PAGE = b"<!DOCTYPE html>\n<html><head><title>Galaxy</title></head>" \
             b"<body><p>Galaxy stand-in</p></body></html>\n"
PREFIX = "/galaxy"
MODES = ("ok", "fail-start", "error", "hang")


def log(message):
    # stdout goes to the journal; flush so lines arrive while the unit runs.
    print(message, flush=True)


def split_prefix(path):
    """Returns (prefix, path without prefix and query)."""
    path = path.split("?", 1)[0]
    if path == PREFIX or path.startswith(PREFIX + "/"):
        return PREFIX, path[len(PREFIX):] or "/"
    return "", path


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "galaxy-standin"
    mode = "ok"

    def do_GET(self):
        self.answer(send_body=True)

    def do_HEAD(self):
        self.answer(send_body=False)

    def answer(self, send_body):
        if self.mode == "hang":
            log(f"hanging on {self.command} {self.path}")
            threading.Event().wait()
        if self.mode == "error":
            self.reply(500, "application/json", b'{"err_msg": "stand-in error mode"}\n',
                       send_body)
            return

        prefix, path = split_prefix(self.path)
        if path == "/api/version" and self.command == "GET":
            # Galaxy answers HEAD here with 404, so probes must use GET.
            body = json.dumps(VERSION).encode() + b"\n"
            self.reply(200, "application/json", body, send_body)
        elif path == "/":
            self.reply(200, "text/html; charset=utf-8", FRONT_PAGE, send_body)
        elif path == "/login":
            self.send_response(302)
            self.send_header("Location", prefix + "/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.reply(404, "application/json", b'{"err_msg": "not found"}\n', send_body)

    def reply(self, status, content_type, body, send_body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def address_string(self):
        # A unix socket peer has no address; the default would index into "".
        return self.client_address[0] if self.client_address else "unix"

    def log_message(self, format, *args):
        # One line per request on stdout (the default writes to stderr).
        log(f"{self.address_string()} {format % args}")


class TCPServer(http.server.ThreadingHTTPServer):
    # Hanging handler threads must not keep the process alive on SIGTERM.
    daemon_threads = True
    # Tests fire requests in bursts; the default backlog of 5 would refuse some.
    request_queue_size = 64


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 64


def on_sigterm(signum, frame):
    # Unwinds serve_forever (or the start delay) in the main thread.
    sys.exit(0)


def main():
    signal.signal(signal.SIGTERM, on_sigterm)
    mode = os.environ.get("STANDIN_MODE", "ok")
    if mode not in MODES:
        log(f"unknown STANDIN_MODE {mode!r}, expected one of {', '.join(MODES)}")
        return 2
    if mode == "fail-start":
        log("failing at start as STANDIN_MODE=fail-start asks")
        return 1

    delay = float(os.environ.get("STANDIN_START_DELAY", "0"))
    if delay > 0:
        log(f"starting, will listen in {delay} s")
        time.sleep(delay)

    Handler.mode = mode
    socket_path = os.environ.get("STANDIN_SOCKET")
    if socket_path:
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        server = UnixServer(socket_path, Handler)
        where = socket_path
    else:
        port = int(os.environ.get("STANDIN_PORT", "8080"))
        server = TCPServer(("127.0.0.1", port), Handler)
        where = f"127.0.0.1:{port}"

    log(f"listening on {where} in mode {mode}")
    try:
        server.serve_forever()
    finally:
        server.server_close()
        log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
