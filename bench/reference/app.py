"""The service galaxyctl-api replaces, rebuilt minimally for the benchmark.

A Flask app meant to run under Gunicorn with two sync workers, doing what the original's
documentation says it does and nothing more, in the same order and with the same tools:

1. `POST /galaxyctl_api/v1.0/galaxy-startup` with a JSON body `{"endpoint": URL}`; a request
   without a JSON body or without `endpoint` gets 400.
2. GET the endpoint with `requests`, TLS verification off and no timeout.
3. If the connection fails, restart nginx with a `systemctl` subprocess and GET again (a second
   connection failure is not caught: Flask answers 500).
4. 200 or 302: answer `{"galaxy": "online"}`.
5. Anything else: run the Galaxy restart command as a subprocess, wait until Galaxy's own TCP
   port accepts connections (every 10 ms, for at most 50 s), GET again and answer
   `{"galaxy": "online"}` or `{"galaxy": "unavailable"}`.

Nothing is coordinated between requests or between the workers: every request that finds
Galaxy down restarts it. That is the behaviour being measured, so it is kept.

Environment (the benchmark points these at the sandbox's user manager):
  REFERENCE_NGINX_RESTART   command that restarts nginx   (default: systemctl restart nginx)
  REFERENCE_GALAXY_RESTART  command that restarts Galaxy  (default: systemctl restart galaxy)
  REFERENCE_GALAXY_ADDRESS  host:port Galaxy itself listens on (default: 127.0.0.1:8080)
"""

import os
import shlex
import socket
import subprocess
import time

import requests
import urllib3
from flask import Flask, abort, jsonify, request

# The original probed self-signed hosts with verify=False and silenced the warning.
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

NGINX_RESTART = shlex.split(os.environ.get("REFERENCE_NGINX_RESTART", "systemctl restart nginx"))
GALAXY_RESTART = shlex.split(
    os.environ.get("REFERENCE_GALAXY_RESTART", "systemctl restart galaxy")
)
_host, _, _port = os.environ.get("REFERENCE_GALAXY_ADDRESS", "127.0.0.1:8080").rpartition(":")
GALAXY_ADDRESS = (_host, int(_port))

PORT_POLL_INTERVAL = 0.01
PORT_WAIT_LIMIT = 50.0

app = Flask(__name__)


def galaxy_is_online(response):
    return response.status_code in (200, 302)


def wait_for_port(address, limit):
    """Returns once something accepts TCP connections at `address`, or after `limit` s."""
    give_up = time.monotonic() + limit
    while time.monotonic() < give_up:
        try:
            with socket.create_connection(address, timeout=1):
                return True
        except OSError:
            time.sleep(PORT_POLL_INTERVAL)
    return False


@app.route("/galaxyctl_api/v1.0/galaxy-startup", methods=["POST"])
def galaxy_startup():
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or "endpoint" not in body:
        abort(400)
    endpoint = body["endpoint"]

    try:
        response = requests.get(endpoint, verify=False)
    except requests.exceptions.ConnectionError:
        subprocess.call(NGINX_RESTART)
        response = requests.get(endpoint, verify=False)

    if galaxy_is_online(response):
        return jsonify({"galaxy": "online"})

    subprocess.call(GALAXY_RESTART)
    wait_for_port(GALAXY_ADDRESS, PORT_WAIT_LIMIT)
    try:
        response = requests.get(endpoint, verify=False)
    except requests.exceptions.ConnectionError:
        return jsonify({"galaxy": "unavailable"})
    if galaxy_is_online(response):
        return jsonify({"galaxy": "online"})
    return jsonify({"galaxy": "unavailable"})
