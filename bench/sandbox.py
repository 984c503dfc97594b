"""The benchmark's view of a sandbox brought up by sandbox/up: its environment, its units, their
processes and what those processes cost (memory, CPU), and small HTTP helpers.

Standard library only. Every unit command goes to the sandbox's user manager through
`systemctl --user` with the sandbox's XDG_RUNTIME_DIR and DBUS_SESSION_BUS_ADDRESS.
"""

import http.client
import json
import os
import re
import socket
import subprocess
import time

# The manager announces a finished start job of a unit with this MESSAGE_ID ("Started ...").
MESSAGE_ID_STARTED = "39f53479d3a045ac8e11786248231fbf"

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Sandbox:
    def __init__(self, directory):
        self.dir = directory
        self.vars = read_env_file(os.path.join(directory, "env"))
        self.env = dict(os.environ)
        self.env.update(self.vars)

    def __getitem__(self, key):
        return self.vars[key]

    def systemctl(self, *args, check=True):
        return subprocess.run(
            ["systemctl", "--user", *args],
            env=self.env,
            check=check,
            capture_output=True,
            text=True,
        )

    def show(self, unit, *props):
        """The unit's properties as strings."""
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return {p: values.get(p, "") for p in props}

    def daemon_reload(self):
        self.systemctl("daemon-reload")

    def wait_active(self, unit, timeout=30.0):
        """Waits until the unit is active (for Type=notify: has sent READY=1)."""
        give_up = time.monotonic() + timeout
        while True:
            state = self.show(unit, "ActiveState")["ActiveState"]
            if state == "active":
                return
            if state == "failed" or time.monotonic() > give_up:
                status = self.systemctl("status", "--no-pager", unit, check=False).stdout
                raise RuntimeError(f"{unit} is {state}, not active:\n{status}")
            time.sleep(0.02)

    def pids(self, unit):
        """Every process in the unit's cgroup."""
        cgroup = self.show(unit, "ControlGroup")["ControlGroup"]
        if not cgroup:
            return []
        pids = []
        for root, _, files in os.walk("/sys/fs/cgroup/systemd" + cgroup):
            if "cgroup.procs" in files:
                with open(os.path.join(root, "cgroup.procs")) as f:
                    pids.extend(int(line) for line in f if line.strip())
        return pids

    def count_starts(self, unit):
        """How many times the manager has logged a finished start of `unit` so far."""
        out = subprocess.run(
            ["journalctl", "-D", self["JOURNAL_DIR"], "-o", "cat", "--no-pager",
             f"USER_UNIT={unit}", f"MESSAGE_ID={MESSAGE_ID_STARTED}"],
            check=True, capture_output=True, text=True,
        ).stdout
        return sum(1 for line in out.splitlines() if line.strip())


    def last_journal_time(self, unit, prefix, after):
        """The monotonic time (s) of the unit's last output line starting with `prefix` that
        journald received after `after` (s), or None. journald stamps CLOCK_MONOTONIC, the
        clock of time.monotonic() and of systemd's *TimestampMonotonic properties."""
        out = subprocess.run(
            ["journalctl", "-D", self["JOURNAL_DIR"], "-o", "json", "--no-pager", "-n", "200",
             f"_SYSTEMD_USER_UNIT={unit}"],
            check=True, capture_output=True, text=True,
        ).stdout
        found = None
        for line in out.splitlines():
            entry = json.loads(line)
            stamp = int(entry["__MONOTONIC_TIMESTAMP"]) / 1e6
            message = entry.get("MESSAGE")
            if isinstance(message, str) and message.startswith(prefix) and stamp > after:
                found = stamp
        return found


    def ours_config_on(self, port, name):
        """A copy of ours' configuration listening on `port` instead, written to DIR/`name`;
        returns its path. For second instances of the same binary (profile, start-up)."""
        with open(os.path.join(self.dir, "galaxyctl-api.toml")) as f:
            text = f.read()
        text, replaced = re.subn(r"(?m)^listen = .*$", f'listen = "127.0.0.1:{port}"', text)
        if replaced != 1:
            raise RuntimeError("the sandbox's galaxyctl-api.toml has no top-level listen line")
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path


def read_env_file(path):
    """Parses the `export KEY=VALUE` lines that sandbox/up writes."""
    values = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("export ") and "=" in line:
                key, value = line[len("export "):].split("=", 1)
                values[key] = value
    return values


# --- what processes cost ------------------------------------------------------------------

def _status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def rss_kib(pids):
    """Resident set size, summed over the processes (shared pages counted in each)."""
    return sum(_status_kib(pid, "VmRSS") for pid in pids)


def rss_split_kib(pids):
    """Resident set size split into anonymous memory (heap, stacks) and file pages (the
    program's and libraries' code and data), summed over the processes."""
    return (sum(_status_kib(pid, "RssAnon") for pid in pids),
            sum(_status_kib(pid, "RssFile") + _status_kib(pid, "RssShmem") for pid in pids))


def pss_kib(pids):
    """Proportional set size, summed: pages shared between the processes counted once."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def cpu_seconds(pids):
    """CPU time the processes have used so far, as (user, system) seconds."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                # The command name may hold spaces; the fields after it are fixed.
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def free_port():
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- HTTP -----------------------------------------------------------------------------------

STARTUP_PATH = "/galaxyctl_api/v1.0/galaxy-startup"


def post_startup(port, endpoint, timeout=60.0, conn=None):
    """POSTs the dashboard's request; returns (status, parsed JSON or None).

    Raises OSError (refused, reset, timed out) when no answer comes.
    """
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        body = json.dumps({"endpoint": endpoint})
        conn.request("POST", STARTUP_PATH, body=body,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        return response.status, parsed
    except http.client.HTTPException as e:
        raise OSError(f"bad HTTP answer: {e!r}") from e
    finally:
        if own:
            conn.close()


def get_status(url, timeout=5.0):
    """The status of a GET on `url` (http://host:port/path), or None when nothing answers."""
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request("GET", "/" + path)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_online(url, timeout=30.0, poll=0.001):
    """Polls `url` until it answers 200; returns the monotonic time of that answer."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if get_status(url) == 200:
            return time.monotonic()
        time.sleep(poll)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")
