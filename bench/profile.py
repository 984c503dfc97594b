"""Profiles galaxyctl-api on the online path with callgrind and summarises where the
instructions go.

A second instance of the release binary runs under valgrind as a Type=notify transient unit of
the sandbox's manager, so it logs to journald and sends STATUS= as the real service does.
Counting is switched on only once it is ready, then it answers `--requests` sequential
galaxy-startup POSTs (Galaxy online) over one keep-alive connection, and is stopped.

callgrind counts user-space instructions of that one process: time spent in the kernel
(sockets, epoll) and in other processes (nginx, the stand-in, journald) is not in it; the CPU
table of results.md has those.

usage: profile.py --sandbox DIR --binary BIN --results DIR [--requests N]
"""

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import time

from sandbox import Sandbox, free_port, post_startup

UNIT = "galaxyctl-profile.service"
# callgrind_control finds the process through vgdb's FIFOs in /tmp, whose names carry the user
# and host names from the environment: the unit and the controlling command must agree on them.
VGDB_IDENTITY = {"LOGNAME": "galaxyctl-bench", "USER": "galaxyctl-bench", "HOST": "sandbox"}


def run_profile(sb, binary, work, requests):
    # The benchmarked service's configuration, on another port.
    port = free_port()
    config = sb.ours_config_on(port, "profile.toml")
    out_file = os.path.join(work, "callgrind.out")
    if os.path.exists(out_file):
        os.remove(out_file)

    sb.systemctl("reset-failed", UNIT, check=False)
    sb.systemctl("stop", UNIT, check=False)
    subprocess.run(
        ["systemd-run", "--user", "--unit", UNIT, "--property=Type=notify",
         *(f"--setenv={k}={v}" for k, v in VGDB_IDENTITY.items()),
         "--property=TimeoutStartSec=120s", "--property=TimeoutStopSec=60s",
         "valgrind", "--tool=callgrind", "--instr-atstart=no",
         f"--callgrind-out-file={out_file}",
         binary, "serve", "--config", config],
        env=sb.env, check=True, capture_output=True,
    )
    sb.wait_active(UNIT, timeout=120)
    pid = sb.show(UNIT, "MainPID")["MainPID"]

    # One request before counting: first-use costs (TLS config, lazy statics) are not the
    # online path's steady state.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    post_startup(port, sb["GALAXY_URL"], conn=conn)
    control_env = dict(sb.env, **VGDB_IDENTITY)
    control_env.pop("HOSTNAME", None)

    def control(*args):
        out = subprocess.run(["callgrind_control", *args, pid], env=control_env,
                             capture_output=True, text=True)
        if out.returncode != 0 or "OK." not in out.stdout:
            raise RuntimeError(f"callgrind_control {' '.join(args)} failed:\n"
                               f"{out.stdout}{out.stderr}")

    control("--instr=on")
    started = time.monotonic()
    for _ in range(requests):
        status, body = post_startup(port, sb["GALAXY_URL"], conn=conn)
        if status != 200 or body.get("galaxy") != "online":
            raise RuntimeError(f"unexpected answer under the profiler: {status} {body}")
    elapsed = time.monotonic() - started
    control("--instr=off")
    conn.close()
    sb.systemctl("stop", UNIT)
    for _ in range(600):
        if os.path.exists(out_file):
            break
        time.sleep(0.1)
    return out_file, elapsed


def count_syscalls(sb, requests):
    """System calls per request of the sandbox's galaxyctl-api.service (not under valgrind),
    over `requests` sequential POSTs on one connection, with `strace -c` on all its threads."""
    pid = sb.show("galaxyctl-api.service", "MainPID")["MainPID"]
    port = int(sb["API_PORT"])
    out_file = os.path.join(sb.dir, "strace.txt")
    # With -f, attaching to the process attaches to all its threads.
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", out_file, "-p", pid],
                              stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # strace attaches to each thread in turn
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(requests):
        post_startup(port, sb["GALAXY_URL"], conn=conn)
    conn.close()
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)

    calls = []
    with open(out_file) as f:
        for line in f:
            fields = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall
            if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
                calls.append((fields[-1], int(fields[3])))
    calls.sort(key=lambda c: -c[1])
    return [(name, n / requests) for name, n in calls]


def annotate(out_file, inclusive):
    return subprocess.run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}",
         "--threshold=100", out_file],
        check=True, capture_output=True, text=True,
    ).stdout


# A function line of callgrind_annotate: "  1,234 (12.3%)  file:function [object]".
LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*)$")


def origin(location):
    """Which crate or library a function of the annotate output belongs to."""
    obj = re.search(r"\[(.*)\]\s*$", location)
    obj = os.path.basename(obj.group(1)) if obj else ""
    if obj and not obj.startswith("galaxyctl-api"):
        return obj.split(".so")[0]
    function = re.sub(r"\s*\[.*\]\s*$", "", location)
    function = function.split(":", 1)[1] if function.startswith(("???:", "./", "/")) else function
    name = function.lstrip("<&*( ").removeprefix("mut ").removeprefix("dyn ")
    # `<T as some_crate::Trait>::f` with a generic T belongs to the trait's crate.
    self_type, _, trait = name.partition(" as ")
    if trait and re.fullmatch(r"[A-Z]\w*", self_type):
        name = trait
    crate = re.split(r"::|[<> ,(]", name, maxsplit=1)[0]
    return crate or "?"


def by_origin(exclusive_text, total):
    shares = {}
    for line in exclusive_text.splitlines():
        match = LINE.match(line)
        if not match or "PROGRAM TOTALS" in line or "file:function" in line:
            continue
        ir = int(match.group(1).replace(",", ""))
        key = origin(match.group(2))
        shares[key] = shares.get(key, 0) + ir
    ranked = sorted(shares.items(), key=lambda kv: -kv[1])
    top = [(k, v / total) for k, v in ranked[:12]]
    rest = sum(v for _, v in ranked[12:]) + (total - sum(shares.values()))
    if rest > 0:
        top.append(("all other origins", rest / total))
    return top


# Parts of the work of one request, each found by the names of its outermost functions in the
# inclusive listing (the largest count among the matching lines; several patterns add up).
# A pattern that matches nothing, after a refactoring say, leaves its row out.
STEPS = [
    ("serving the request in all (hyper server, axum, handler)",
     ["galaxyctl_api::listener::serve::{{closure}}::{{closure}}"]),
    ("the probe: one GET on Galaxy (reqwest and hyper client, new connection)",
     ["galaxyctl_api::probe::Prober::probe::{{closure}}"]),
    ("URL parsing, wherever it happens", ["url::parser::Parser::parse_url "]),
    ("checking the request body", ["galaxyctl_api::http::parse_startup "]),
    ("checking the endpoint against galaxy.urls", ["galaxyctl_api::endpoint::check "]),
    ("journal entries (tracing-journald)",
     ["<tracing_journald::Layer as tracing_subscriber::layer::Layer<S>>::on_event ",
      "<tracing_journald::Layer as tracing_subscriber::layer::Layer<S>>::on_new_span "]),
    ("STATUS= to systemd after each probe", ["galaxyctl_api::notify::StatusLine::checked "]),
]


def steps(inclusive_text, exclusive_text, total):
    counts = []
    for line in inclusive_text.splitlines():
        match = LINE.match(line)
        if match:
            counts.append((int(match.group(1).replace(",", "")), match.group(2)))
    rows = []
    for label, patterns in STEPS:
        found = [max((ir for ir, where in counts if pattern in where), default=None)
                 for pattern in patterns]
        found = [ir for ir in found if ir is not None]
        if found:
            rows.append((label, sum(found) / total))
    allocator = 0
    for line in exclusive_text.splitlines():
        match = LINE.match(line)
        if match and "/malloc/" in match.group(2):
            allocator += int(match.group(1).replace(",", ""))
    rows.append(("memory allocation (glibc malloc, free; exclusive)", allocator / total))
    return rows


def total_ir(text):
    match = re.search(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?PROGRAM TOTALS", text, re.MULTILINE)
    return int(match.group(1).replace(",", ""))


def head(text, functions):
    """The annotate output up to and including its first `functions` function lines."""
    lines, seen = [], 0
    for line in text.splitlines():
        lines.append(line)
        if LINE.match(line) and ":" in line and "PROGRAM TOTALS" not in line:
            seen += 1
            if seen >= functions:
                break
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandbox", required=True)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()

    sb = Sandbox(args.sandbox)
    out_file, elapsed = run_profile(sb, args.binary, args.sandbox, args.requests)
    exclusive = annotate(out_file, inclusive=False)
    inclusive = annotate(out_file, inclusive=True)
    total = total_ir(exclusive)

    syscalls = count_syscalls(sb, args.requests)

    summary = {
        "syscalls_per_request": syscalls,
        "requests": args.requests,
        "ir_total": total,
        "ir_per_request": total / args.requests,
        "seconds_under_valgrind": elapsed,
        "by_origin": by_origin(exclusive, total),
        "by_step": steps(inclusive, exclusive, total),
    }
    with open(os.path.join(args.results, "profile.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(args.results, "callgrind-online.txt"), "w") as f:
        f.write(
            f"callgrind profile of galaxyctl-api (release build) answering {args.requests}\n"
            "sequential galaxy-startup POSTs with Galaxy online, start-up excluded.\n"
            f"{total:,} instructions in all, {total / args.requests:,.0f} per request.\n\n"
            "Instructions by step (inclusive; the steps overlap):\n"
            + "".join(f"  {share:6.1%}  {name}\n" for name, share in summary["by_step"])
            + "\nInstructions by origin (exclusive):\n"
            + "".join(f"  {share:6.1%}  {name}\n" for name, share in summary["by_origin"])
            + "\nSystem calls per request (strace -c on the service, not under valgrind):\n"
            + "".join(f"  {n:6.2f}  {name}\n" for name, n in syscalls)
            + "\n=== top 40 functions, inclusive (callgrind_annotate --inclusive=yes) ===\n"
            + head(inclusive, 40)
            + "\n\n=== top 40 functions, exclusive (callgrind_annotate) ===\n"
            + head(exclusive, 40) + "\n"
        )
    print(f"profile: {total / args.requests:,.0f} instructions per request; "
          f"{os.path.join(args.results, 'callgrind-online.txt')}")


if __name__ == "__main__":
    main()
