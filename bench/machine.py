"""What the benchmark ran on: hardware, kernel, and the version of every program measured or
used to measure, so that a result can be compared with a later one on the same footing."""

import os
import platform
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _run(*cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def _lscpu():
    values = {}
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        key, _, value = line.partition(":")
        values[key.strip()] = value.strip()
    return values


def _mem_total_gib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _os_name():
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except FileNotFoundError:
        pass
    return None


def _python_package(name):
    venv_python = os.path.join(HERE, ".venv", "bin", "python")
    return _run(venv_python, "-c",
                f"import importlib.metadata as m; print(m.version('{name}'))")


def load_average():
    """The 1, 5 and 15 minute load averages: other work on the machine shows here."""
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def describe(binary):
    cpu = _lscpu()
    dirty = _run("git", "-C", REPO, "status", "--porcelain", "--untracked-files=no")
    return {
        "cpu": cpu.get("Model name"),
        "cpus": os.cpu_count(),
        "hypervisor": cpu.get("Hypervisor vendor"),
        "memory_gib": _mem_total_gib(),
        "os": _os_name(),
        "kernel": platform.release(),
        "project_commit": _run("git", "-C", REPO, "rev-parse", "--short", "HEAD"),
        "project_tree_modified": bool(dirty),
        "binary_bytes": os.path.getsize(binary) if os.path.exists(binary) else None,
        "versions": {
            "rustc": _run("rustc", "--version"),
            "python (reference)": _run(os.path.join(HERE, ".venv", "bin", "python"),
                                       "--version"),
            "flask": _python_package("flask"),
            "gunicorn": _python_package("gunicorn"),
            "requests": _python_package("requests"),
            "python (Galaxy stand-in)": _run("/usr/bin/python3", "--version"),
            "nginx": _run("nginx", "-v"),
            "systemd": _run("systemctl", "--version"),
            "wrk": _run("wrk", "--version"),
            "valgrind": _run("valgrind", "--version"),
        },
    }
