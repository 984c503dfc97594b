"""Measures galaxyctl-api ("ours") against the Flask service it replaces ("reference"), both
running as user units in one sandbox against the same Galaxy stand-in behind the same nginx.

bench/run calls this once the sandbox is up; it writes the raw and summarised results as JSON.
Every figure is taken in `--rounds` rounds; within a round both services are measured one after
the other (the order alternating between rounds), and every ratio is formed within a round, so
a slow moment of the machine weighs on both sides of it.

Phases, in order: the online path (and memory and CPU along with it), start-up, recovery, the
storm, and recovery once more with a short probe interval for ours.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import threading
import time

import machine
from sandbox import (Sandbox, cpu_seconds, free_port, get_status, post_startup, pss_kib,
                     rss_kib, rss_split_kib, wait_online)
from summary import CONCURRENCY, summarise

HERE = os.path.dirname(os.path.abspath(__file__))
WRK_SCRIPT = os.path.join(HERE, "wrk-startup.lua")
REFERENCE_UNIT = "galaxyctl-reference.service"
OURS_UNIT = "galaxyctl-api.service"
GALAXY_UNIT = "galaxy.service"
NGINX_UNIT = "nginx.service"
# What the dashboard waits at most for an answer.
CLIENT_TIMEOUT = 60.0


def log(message):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


class Bench:
    def __init__(self, args):
        self.args = args
        self.sandbox = Sandbox(args.sandbox)
        self.endpoint = self.sandbox["GALAXY_URL"]
        self.ref_port = free_port()
        self.services = {
            "ours": {"unit": OURS_UNIT, "port": int(self.sandbox["API_PORT"])},
            "reference": {"unit": REFERENCE_UNIT, "port": self.ref_port},
        }
        self.raw = {}

    # --- set-up ---------------------------------------------------------------------------

    def install_reference(self):
        """Installs the reference as a user unit next to the sandbox's own and starts it."""
        with open(os.path.join(HERE, "reference", REFERENCE_UNIT)) as f:
            text = f.read()
        for key, value in {
            "@VENV@": os.path.join(HERE, ".venv"),
            "@APP_DIR@": os.path.join(HERE, "reference"),
            "@PORT@": str(self.ref_port),
            "@GALAXY_PORT@": self.sandbox["GALAXY_PORT"],
        }.items():
            text = text.replace(key, value)
        units = os.path.join(self.sandbox.dir, "home", ".config", "systemd", "user")
        with open(os.path.join(units, REFERENCE_UNIT), "w") as f:
            f.write(text)
        self.sandbox.daemon_reload()
        self.sandbox.systemctl("restart", REFERENCE_UNIT)

    def ensure_galaxy_online(self):
        if get_status(self.endpoint) != 200:
            self.sandbox.systemctl("start", GALAXY_UNIT)
            wait_online(self.endpoint, timeout=60)

    def wait_service(self, name):
        """Waits until the service answers the online path."""
        port = self.services[name]["port"]
        give_up = time.monotonic() + 30
        while True:
            try:
                status, body = post_startup(port, self.endpoint, timeout=10)
                if status == 200 and body and body.get("galaxy") == "online":
                    return
            except OSError:
                pass
            if time.monotonic() > give_up:
                raise RuntimeError(f"{name} does not answer online within 30 s")
            time.sleep(0.05)

    def prepare(self):
        log("installing the reference service and waiting for the stack")
        self.install_reference()
        self.ensure_galaxy_online()
        self.sandbox.wait_active(OURS_UNIT)
        self.sandbox.wait_active(REFERENCE_UNIT)
        for name in self.services:
            self.wait_service(name)

    def order(self, round_index, names):
        """The services in the order to measure them in this round: alternating."""
        names = list(names)
        shift = round_index % len(names)
        return names[shift:] + names[:shift]

    # --- the online path ----------------------------------------------------------------------

    def wrk(self, target, conns, duration):
        """One wrk run at `conns` connections; returns its counts, latencies and throughput."""
        env = dict(os.environ)
        if target == "standin":
            url = self.endpoint
            env.pop("BENCH_ENDPOINT", None)
        else:
            url = f"http://127.0.0.1:{self.services[target]['port']}"
            env["BENCH_ENDPOINT"] = self.endpoint
        threads = min(conns, 2)
        out = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration}s",
             "--timeout", "10s", "-s", WRK_SCRIPT, url],
            env=env, check=True, capture_output=True, text=True,
        ).stdout
        match = re.search(r"^BENCH_JSON (.*)$", out, re.MULTILINE)
        if not match:
            raise RuntimeError(f"wrk printed no result:\n{out}")
        result = json.loads(match.group(1))
        result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
        result["errors"] = sum(result[k] for k in (
            "connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
        return result

    def cost_groups(self, target):
        """The processes whose CPU time a load run is charged with, by group."""
        sb = self.sandbox
        groups = {
            "galaxy": sb.pids(GALAXY_UNIT),
            "nginx": sb.pids(NGINX_UNIT),
            "manager": [int(sb["MANAGER_PID"])],
            "journald": [int(sb["JOURNALD_PID"])],
        }
        if target in self.services:
            groups["service"] = sb.pids(self.services[target]["unit"])
        return groups

    def online_run(self, target, conns, duration):
        groups = self.cost_groups(target)
        cpu_before = {g: cpu_seconds(p) for g, p in groups.items()}
        sampler = None
        if target in self.services and conns == max(CONCURRENCY):
            sampler = MemorySampler(groups["service"])
            sampler.start()
        result = self.wrk(target, conns, duration)
        if sampler:
            result["memory_under_load"] = sampler.stop()
        cpu_after = {g: cpu_seconds(p) for g, p in groups.items()}
        per_request = 1e3 / max(result["requests"], 1)
        cpu = {}
        for g in groups:
            user = (cpu_after[g][0] - cpu_before[g][0]) * per_request
            system = (cpu_after[g][1] - cpu_before[g][1]) * per_request
            cpu[g] = user + system
            if g == "service":
                cpu["service user"] = user
                cpu["service kernel"] = system
        result["cpu_ms_per_request"] = cpu
        return result

    def idle_memory(self, name):
        time.sleep(1.0)
        pids = self.sandbox.pids(self.services[name]["unit"])
        anon, files = rss_split_kib(pids)
        return {"rss_kib": rss_kib(pids), "pss_kib": pss_kib(pids), "processes": len(pids),
                "rss_anon_kib": anon, "rss_file_kib": files}

    def phase_online(self):
        args = self.args
        targets = ["ours", "reference", "standin"]
        log("warming up")
        for target in targets:
            self.wrk(target, 16, 1)
        runs = {t: {str(c): [] for c in CONCURRENCY} for t in targets}
        idle = {name: [] for name in self.services}
        for r in range(args.rounds):
            for name in self.order(r, self.services):
                idle[name].append(self.idle_memory(name))
            for target in self.order(r, targets):
                for conns in CONCURRENCY:
                    result = self.online_run(target, conns, args.duration)
                    runs[target][str(conns)].append(result)
                    log(f"online round {r + 1}/{args.rounds} {target:9} c={conns:<2} "
                        f"{result['rps']:7.0f} req/s  p50 {result['p50_us'] / 1e3:6.2f} ms  "
                        f"p99 {result['p99_us'] / 1e3:6.2f} ms  errors {result['errors']}")
        self.raw["online"] = runs
        self.raw["idle_memory"] = idle

    # --- start-up -----------------------------------------------------------------------------

    def startup_once(self, name):
        """Stops and starts the service; returns exec → READY=1 and exec → first answer."""
        unit, port = self.services[name]["unit"], self.services[name]["port"]
        self.sandbox.systemctl("stop", unit)
        time.sleep(0.2)
        self.sandbox.systemctl("start", "--no-block", unit)
        give_up = time.monotonic() + 30
        while True:
            try:
                status, body = post_startup(port, self.endpoint, timeout=10)
                if status == 200:
                    answered = time.monotonic()
                    break
            except OSError:
                pass
            if time.monotonic() > give_up:
                raise RuntimeError(f"{name} did not answer within 30 s of its start")
            time.sleep(0.001)
        # systemd's monotonic timestamps are CLOCK_MONOTONIC in µs, as is time.monotonic().
        props = self.sandbox.show(unit, "ExecMainStartTimestampMonotonic",
                                  "ActiveEnterTimestampMonotonic", "Type")
        exec_us = int(props["ExecMainStartTimestampMonotonic"])
        result = {"first_answer_ms": answered * 1e3 - exec_us / 1e3}
        if props["Type"] == "notify":
            result["ready_ms"] = (int(props["ActiveEnterTimestampMonotonic"]) - exec_us) / 1e3
        return result

    def startup_unhardened(self, round_index):
        """exec → READY=1 of the same binary and configuration in a transient unit without the
        shipped unit's hardening: the difference is what systemd's sandboxing of the process
        (namespaces, mounts, seccomp) adds between fork and exec."""
        unit = f"galaxyctl-unhardened-{round_index}.service"
        config = self.sandbox.ours_config_on(free_port(), "unhardened.toml")
        # systemd-run waits for the start job, which for Type=notify ends at READY=1.
        subprocess.run(
            ["systemd-run", "--user", "--unit", unit, "--property=Type=notify",
             self.args.binary, "serve", "--config", config],
            env=self.sandbox.env, check=True, capture_output=True,
        )
        props = self.sandbox.show(unit, "ExecMainStartTimestampMonotonic",
                                  "ActiveEnterTimestampMonotonic")
        self.sandbox.systemctl("stop", unit)
        return (int(props["ActiveEnterTimestampMonotonic"])
                - int(props["ExecMainStartTimestampMonotonic"])) / 1e3

    def phase_startup(self):
        runs = {name: [] for name in self.services}
        unhardened = []
        for r in range(self.args.startup_rounds):
            for name in self.order(r, self.services):
                result = self.startup_once(name)
                runs[name].append(result)
                log(f"start-up {r + 1}/{self.args.startup_rounds} {name:9} " + "  ".join(
                    f"{k} {v:.1f}" for k, v in result.items()))
            unhardened.append(self.startup_unhardened(r))
            log(f"start-up {r + 1}/{self.args.startup_rounds} ours without the unit's "
                f"hardening: ready_ms {unhardened[-1]:.1f}")
        self.raw["startup"] = runs
        self.raw["startup_unhardened_ready_ms"] = unhardened

    # --- recovery -----------------------------------------------------------------------------

    def galaxy_alone(self):
        """How long the Galaxy unit takes from its (re)start to its first 200 through nginx."""
        self.ensure_galaxy_online()
        self.sandbox.systemctl("stop", GALAXY_UNIT)
        started = time.monotonic()
        self.sandbox.systemctl("start", GALAXY_UNIT)
        return (wait_online(self.endpoint, timeout=60) - started) * 1e3

    def recovery_once(self, name):
        """Stops Galaxy, then times one galaxy-startup POST to its answer.

        Besides the total, the trial is split at the moments systemd forked Galaxy's new
        process and the stand-in logged that it listens: what the controller took before the
        restart, what Galaxy took itself, and what the controller took to notice and answer.
        """
        self.ensure_galaxy_online()
        self.sandbox.systemctl("stop", GALAXY_UNIT)
        started = time.monotonic()
        try:
            status, body = post_startup(self.services[name]["port"], self.endpoint,
                                        timeout=CLIENT_TIMEOUT)
            galaxy = (body or {}).get("galaxy")
        except OSError as e:
            status, galaxy = None, f"no answer: {e}"
        answered = time.monotonic()
        result = {"total_ms": (answered - started) * 1e3, "status": status, "galaxy": galaxy}

        forked = int(self.sandbox.show(
            GALAXY_UNIT, "ExecMainStartTimestampMonotonic")["ExecMainStartTimestampMonotonic"])
        forked = forked / 1e6 if forked else None
        listening = self.sandbox.last_journal_time(GALAXY_UNIT, "listening on", started)
        if forked and listening and started < forked < listening < answered:
            result["before_restart_ms"] = (forked - started) * 1e3
            result["galaxy_own_ms"] = (listening - forked) * 1e3
            result["after_ready_ms"] = (answered - listening) * 1e3
            result["in_trial_overhead_ms"] = (
                result["before_restart_ms"] + result["after_ready_ms"])
        return result

    def recovery_rounds(self, names, label):
        runs = {name: [] for name in names}
        runs["galaxy_alone_ms"] = []
        for r in range(self.args.rounds):
            alone = self.galaxy_alone()
            runs["galaxy_alone_ms"].append(alone)
            for name in self.order(r, names):
                result = self.recovery_once(name)
                result["overhead_ms"] = result["total_ms"] - alone
                runs[name].append(result)
                log(f"recovery{label} {r + 1}/{self.args.rounds} {name:9} "
                    f"{result['total_ms']:7.1f} ms (Galaxy alone {alone:7.1f} ms) "
                    f"-> {result['status']} {result['galaxy']}")
        return runs

    def phase_recovery(self):
        self.raw["recovery"] = self.recovery_rounds(list(self.services), "")

    def phase_recovery_fast_probe(self):
        """Ours again, with the probe interval at the reference's 10 ms port poll."""
        config = os.path.join(self.sandbox.dir, "galaxyctl-api.toml")
        shutil.copy(config, config + ".default")
        with open(config, "a") as f:
            f.write(f'\n[probe]\ninterval = "{self.args.fast_interval}"\n')
        try:
            self.sandbox.systemctl("restart", OURS_UNIT)
            self.wait_service("ours")
            self.raw["recovery_fast_probe"] = self.recovery_rounds(["ours"], " (fast probe)")
            self.raw["recovery_fast_probe"]["interval"] = self.args.fast_interval
        finally:
            shutil.move(config + ".default", config)
            self.sandbox.systemctl("restart", OURS_UNIT)
            self.wait_service("ours")

    # --- the storm ----------------------------------------------------------------------------

    def storm_once(self, name):
        """Stops Galaxy, sends `--storm` POSTs at once and counts what the service did."""
        n = self.args.storm
        port = self.services[name]["port"]
        self.ensure_galaxy_online()
        self.wait_service(name)
        self.sandbox.systemctl("stop", GALAXY_UNIT)
        galaxy_before = self.sandbox.count_starts(GALAXY_UNIT)
        nginx_before = self.sandbox.count_starts(NGINX_UNIT)

        barrier = threading.Barrier(n)
        outcomes = [None] * n

        def client(i):
            barrier.wait()
            started = time.monotonic()
            try:
                status, body = post_startup(port, self.endpoint, timeout=CLIENT_TIMEOUT)
                outcome = (status, (body or {}).get("galaxy"))
            except OSError as e:
                outcome = (None, type(e).__name__)
            outcomes[i] = (outcome, time.monotonic() - started)

        threading.stack_size(256 * 1024)
        clients = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        started = time.monotonic()
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        elapsed = time.monotonic() - started
        # Both services restart before they answer; the pause only lets the journal catch up.
        time.sleep(1.0)

        counts = {}
        for (status, galaxy), _ in outcomes:
            key = f"{status} {galaxy}" if status else f"no answer ({galaxy})"
            counts[key] = counts.get(key, 0) + 1
        online = sum(1 for (status, galaxy), _ in outcomes if status == 200 and galaxy == "online")
        latencies = sorted(latency for _, latency in outcomes)
        result = {
            "requests": n,
            "galaxy_restarts": self.sandbox.count_starts(GALAXY_UNIT) - galaxy_before,
            "nginx_restarts": self.sandbox.count_starts(NGINX_UNIT) - nginx_before,
            "online": online,
            "failed": n - online,
            "answers": counts,
            "seconds_to_last_answer": elapsed,
            "latency_p50_s": latencies[n // 2],
            "latency_max_s": latencies[-1],
        }
        self.ensure_galaxy_online()
        return result

    def phase_storm(self):
        runs = {name: [] for name in self.services}
        for r in range(self.args.storm_rounds):
            for name in self.order(r, self.services):
                result = self.storm_once(name)
                runs[name].append(result)
                log(f"storm {r + 1}/{self.args.storm_rounds} {name:9} "
                    f"restarts {result['galaxy_restarts']} (nginx {result['nginx_restarts']}), "
                    f"failed {result['failed']}/{result['requests']}, "
                    f"last answer after {result['seconds_to_last_answer']:.2f} s "
                    f"{result['answers']}")
        self.raw["storm"] = runs


class MemorySampler(threading.Thread):
    """Samples the summed RSS and PSS of some processes every 50 ms; keeps the peaks."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = {"rss_kib": 0, "pss_kib": 0, "processes": len(pids)}
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            self.peak["rss_kib"] = max(self.peak["rss_kib"], rss_kib(self.pids))
            self.peak["pss_kib"] = max(self.peak["pss_kib"], pss_kib(self.pids))
            self.halt.wait(0.05)

    def stop(self):
        self.halt.set()
        self.join()
        return self.peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandbox", required=True, help="the DIR given to sandbox/up")
    parser.add_argument("--binary", required=True, help="the galaxyctl-api binary under test")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--startup-rounds", type=int, default=10)
    parser.add_argument("--storm-rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=4, help="seconds per load run")
    parser.add_argument("--storm", type=int, default=500, help="POSTs in one storm")
    parser.add_argument("--fast-interval", default="10ms")
    parser.add_argument("--galaxy-start-delay", type=float, required=True,
                        help="the stand-in's STANDIN_START_DELAY, recorded in the results")
    args = parser.parse_args()

    bench = Bench(args)
    started = time.monotonic()
    load_before = machine.load_average()
    bench.prepare()
    bench.phase_online()
    bench.phase_startup()
    bench.phase_recovery()
    bench.phase_storm()
    bench.phase_recovery_fast_probe()

    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.describe(args.binary),
        "settings": {
            "rounds": args.rounds,
            "startup_rounds": args.startup_rounds,
            "storm_rounds": args.storm_rounds,
            "load_seconds": args.duration,
            "concurrency": list(CONCURRENCY),
            "storm_requests": args.storm,
            "galaxy_start_delay_s": args.galaxy_start_delay,
            "endpoint": bench.endpoint,
            "bench_seconds": round(time.monotonic() - started),
            "load_average_before": load_before,
            "load_average_after": machine.load_average(),
        },
        "summary": summarise(bench.raw),
        "raw": bench.raw,
    }
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
