"""Renders bench/results/results.json (and the profile summary, when there is one) as
markdown: results.md with every figure, machine.md with what it ran on.

usage: report.py RESULTS_DIR
"""

import json
import os
import sys

CLIENTS = ("1", "16", "64")


def fig(s, digits=1, unit=""):
    """A summary as `median (min–max)`."""
    if s is None:
        return "n/a"
    f = f"{{:.{digits}f}}"
    if s["min"] == s["max"]:
        return f"{f.format(s['median'])}{unit}"
    return f"{f.format(s['median'])}{unit} ({f.format(s['min'])}–{f.format(s['max'])})"


def ratio(s, digits=2):
    return fig(s, digits, "×")


def recovery_row(name, v):
    return (name, fig(v["total_ms"], 1), fig(v["overhead_ms"], 1),
            fig(v.get("before_restart_ms"), 1), fig(v.get("galaxy_own_ms"), 1),
            fig(v.get("after_ready_ms"), 1), fig(v.get("in_trial_overhead_ms"), 1),
            ", ".join(v["answers"]))


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_md(results):
    m = results["machine"]
    rows = [
        ("CPU", f"{m['cpu']}, {m['cpus']} cores" + (f", under {m['hypervisor']}"
                                                    if m["hypervisor"] else "")),
        ("memory", f"{m['memory_gib']} GiB"),
        ("OS, kernel", f"{m['os']}, Linux {m['kernel']}"),
        ("project", f"commit {m['project_commit']}"
                    + (" with uncommitted changes" if m["project_tree_modified"] else "")),
        ("galaxyctl-api binary", f"{m['binary_bytes']} bytes (cargo build --release)"),
    ]
    rows += [(name, version or "not found") for name, version in m["versions"].items()]
    return "\n".join([
        "# The machine the benchmark ran on",
        "",
        f"Measured {results['date']}. Everything ran on this one machine: the load generator,",
        "both services, nginx, the Galaxy stand-in, the systemd user manager and journald all",
        "share its cores, as they would share a small Laniakea VM.",
        "",
        table(("what", "value"), rows),
        "",
    ])


def results_md(results, profile):
    s = results["summary"]
    st = results["settings"]
    out = [
        "# galaxyctl-api against the service it replaces",
        "",
        f"Measured {results['date']} on {results['machine']['cpus']} cores "
        f"({results['machine']['cpu']}); see [machine.md](machine.md). "
        f"The whole run took {st['bench_seconds']} s; the load average was "
        f"{', '.join(map(str, st['load_average_before']))} before it and "
        f"{', '.join(map(str, st['load_average_after']))} after (1, 5, 15 min).",
        "",
        f"Every figure is the median over {st['rounds']} rounds with the smallest and largest "
        "in brackets (start-up: "
        f"{st['startup_rounds']} rounds, storm: {st['storm_rounds']}). A ratio is "
        "ours ÷ reference, formed within each round and then summarised the same way. "
        "*Ours* is galaxyctl-api with its default configuration but for no authentication "
        "and a recovery budget large enough for the benchmark (bench/README.md); *reference* "
        "the Flask "
        "re-implementation under Gunicorn with 2 sync workers (bench/reference/). Both ask the "
        "same Galaxy stand-in behind the same nginx "
        f"(`{st['endpoint']}`).",
        "",
        "## Targets",
        "",
        table(("target", "goal", "measured (median)", "met"), [
            (t["target"], t["goal"],
             f"{t['measured']:.3g}" + ("×" if "x reference" in t["goal"]
                                       else " ms" if t["goal"].endswith("ms") else ""),
             "yes" if t["met"] else "**no**")
            for t in s["targets"]
        ]),
        "",
        "## Online path (Galaxy up)",
        "",
        f"wrk, {st['load_seconds']} s per run, every request the dashboard's POST. "
        "*Stand-in alone* is wrk GETting the endpoint itself: the most any controller that "
        "probes Galaxy once per request can answer on this machine.",
        "",
        table(("clients", "ours req/s", "reference req/s", "ratio", "stand-in alone req/s",
               "ours ÷ stand-in"), [
            (c, fig(s["online"]["ours"][c]["rps"], 0), fig(s["online"]["reference"][c]["rps"], 0),
             ratio(s["ratios"][f"online_rps_c{c}"]), fig(s["online"]["standin"][c]["rps"], 0),
             ratio(s["ratios"][f"online_rps_vs_standin_c{c}"]))
            for c in CLIENTS
        ]),
        "",
        table(("clients", "ours p50 ms", "ours p99 ms", "reference p50 ms",
               "reference p99 ms", "p99 ratio"), [
            (c, fig(s["online"]["ours"][c]["p50_ms"], 2), fig(s["online"]["ours"][c]["p99_ms"], 2),
             fig(s["online"]["reference"][c]["p50_ms"], 2),
             fig(s["online"]["reference"][c]["p99_ms"], 2), ratio(s["ratios"][f"online_p99_c{c}"]))
            for c in CLIENTS
        ]),
        "",
        "Errors (non-2xx answers, socket errors, timeouts) per run: ours "
        + ", ".join(f"{fig(s['online']['ours'][c]['errors'], 0)} at {c}" for c in CLIENTS)
        + "; reference "
        + ", ".join(f"{fig(s['online']['reference'][c]['errors'], 0)} at {c}" for c in CLIENTS)
        + ".",
        "",
        "### Where the CPU goes, per request, at 64 clients",
        "",
        "CPU time (user + system) of each group of processes over the run, divided by the "
        "requests answered. *manager* is the sandbox's systemd user manager, which handles "
        "the services' sd_notify messages; *journald* stores their log entries. The service's "
        "time is split into user space and kernel (system calls); the clock tick is 10 ms, "
        "so small figures are coarse.",
        "",
        table(("processes", "ours run ms/req", "reference run ms/req", "stand-in alone ms/req"), [
            (group,
             fig(s["online"]["ours"]["64"]["cpu_ms_per_request"].get(group), 3),
             fig(s["online"]["reference"]["64"]["cpu_ms_per_request"].get(group), 3),
             fig(s["online"]["standin"]["64"]["cpu_ms_per_request"].get(group), 3))
            for group in ("service", "service user", "service kernel", "galaxy", "nginx",
                          "manager", "journald")
        ]),
        "",
        "## Memory",
        "",
        "All processes in the service's cgroup, summed. Idle: after the warm-up and a second "
        "without requests; under load: the peak of samples every 50 ms during the 64-client "
        "run. RSS counts pages shared between Gunicorn's processes once per process; PSS "
        "splits them.",
        "",
        table(("service", "processes", "idle RSS MiB", "load RSS MiB", "idle PSS MiB",
               "load PSS MiB"), [
            (name, m["processes"], fig(m["idle_rss_mib"]), fig(m["load_rss_mib"]),
             fig(m["idle_pss_mib"]), fig(m["load_pss_mib"]))
            for name, m in s["memory"].items()
        ]),
        "",
        f"Ratios: idle RSS {ratio(s['ratios']['memory_idle_rss'])}, under load "
        f"{ratio(s['ratios']['memory_load_rss'])}; idle PSS "
        f"{ratio(s['ratios']['memory_idle_pss'])}, under load "
        f"{ratio(s['ratios']['memory_load_pss'])}.",
        "",
        "What the idle RSS is made of: "
        + "; ".join(f"{name} {fig(m['idle_rss_anon_mib'])} MiB anonymous (heap, stacks) and "
                    f"{fig(m['idle_rss_file_mib'])} MiB file pages (code, libraries)"
                    for name, m in s["memory"].items()) + ".",
        "",
        "## Start-up",
        "",
        "From the fork of the main process (systemd's ExecMainStartTimestampMonotonic) to "
        "READY=1 (ActiveEnterTimestampMonotonic of the Type=notify unit) and to the first "
        "galaxy-startup POST answered (polled every millisecond, on the same clock).",
        "",
        table(("service", "exec → READY=1 ms", "exec → first answer ms"), [
            (name, fig(v.get("ready_ms"), 1) if "ready_ms" in v else "(Type=simple)",
             fig(v["first_answer_ms"], 1))
            for name, v in s["startup"].items()
        ]),
        "",
        f"Ratio of the first answers: {ratio(s['ratios']['startup_first_answer'], 3)}."
        + (" The same binary and configuration in a transient unit without the shipped "
           "unit's hardening (namespaces, mounts, seccomp, which systemd sets up between fork "
           "and exec) reaches READY=1 in "
           f"{fig(s['startup']['ours']['unhardened_ready_ms'], 1)} ms."
           if "unhardened_ready_ms" in s["startup"]["ours"] else ""),
        "",
        "## Recovery",
        "",
        "Galaxy's unit stopped, then one POST, timed to its answer. *Galaxy alone* is the "
        "stand-in's own time from `systemctl --user start` to its first 200 through nginx "
        f"(it sleeps {st['galaxy_start_delay_s']} s before listening), measured separately in "
        "the same round; *overhead* is the difference, as the issue defines it. Since that "
        "subtracts two separate trials, it carries the noise of both; so each trial is also "
        "split at the moment systemd forked Galaxy's new process (ExecMainStartTimestamp) "
        "and the moment the stand-in logged that it listens (journald's timestamp): "
        "*before restart* and *after ready* are the controller's own share of that very "
        "trial, and their sum the *in-trial overhead*.",
        "",
        table(("", "POST → answer ms", "overhead ms", "before restart ms", "Galaxy itself ms",
               "after ready ms", "in-trial overhead ms", "answers"), [
            ("Galaxy alone", fig(s["recovery"]["galaxy_alone_ms"], 1), "", "", "", "", "", ""),
        ] + [
            recovery_row(name, v) for name, v in s["recovery"].items()
            if name != "galaxy_alone_ms"
        ] + ([
            recovery_row(f"ours, probe interval {s['recovery_fast_probe']['interval']}",
                         s["recovery_fast_probe"]["ours"]),
            ("Galaxy alone in those rounds",
             fig(s["recovery_fast_probe"]["galaxy_alone_ms"], 1), "", "", "", "", "", ""),
        ] if "recovery_fast_probe" in s else [])),
        "",
        "## Storm",
        "",
        f"{st['storm_requests']} POSTs at once while Galaxy's unit is stopped. Restarts are "
        "the manager's \"Started\" entries for the unit in the journal. A request failed "
        "unless it was answered 200 with `galaxy: online`.",
        "",
        table(("service", "Galaxy restarts", "nginx restarts", "failed requests",
               "s to last answer"), [
            (name, fig(v["galaxy_restarts"], 0), fig(v["nginx_restarts"], 0),
             fig(v["failed"], 0), fig(v["seconds_to_last_answer"], 2))
            for name, v in s["storm"].items()
        ]),
        "",
        "Answers per storm: " + "; ".join(
            f"{name}: " + " / ".join(
                ", ".join(f"{k} ×{n}" for k, n in sorted(a.items())) for a in v["answers"])
            for name, v in s["storm"].items()) + ".",
        "",
    ]
    if profile:
        out += [
            "## Profile of ours on the online path",
            "",
            f"callgrind, {profile['requests']} sequential galaxy-startup POSTs over one "
            f"connection, start-up excluded: {profile['ir_per_request']:,.0f} instructions per "
            "request in galaxyctl-api's process (user space only). By step, inclusive (the "
            "steps overlap; the first contains the others):",
            "",
            table(("step", "share of instructions"), [
                (name, f"{share:.1%}") for name, share in profile["by_step"]
            ]),
            "",
            "By origin, exclusive:",
            "",
            table(("origin", "share"), [
                (name, f"{share:.1%}") for name, share in profile["by_origin"]
            ]),
            "",
            "System calls per request (`strace -c -f` on the benchmarked service, not under "
            "valgrind, same requests), those made at least once per ten requests:",
            "",
            table(("system call", "per request"), [
                (name, f"{n:.2f}") for name, n in profile["syscalls_per_request"] if n >= 0.1
            ]),
            "",
            "The top functions (inclusive and exclusive) are in "
            "[callgrind-online.txt](callgrind-online.txt).",
            "",
        ]
    return "\n".join(out)


def main():
    results_dir = sys.argv[1]
    with open(os.path.join(results_dir, "results.json")) as f:
        results = json.load(f)
    profile = None
    profile_path = os.path.join(results_dir, "profile.json")
    if os.path.exists(profile_path):
        with open(profile_path) as f:
            profile = json.load(f)
    with open(os.path.join(results_dir, "results.md"), "w") as f:
        f.write(results_md(results, profile))
    with open(os.path.join(results_dir, "machine.md"), "w") as f:
        f.write(machine_md(results))


if __name__ == "__main__":
    main()
