"""Turns the raw measurements of measure.py into medians and spreads, per-round ratios of ours
to the reference, and the issue's targets with whether each is met."""

import statistics

# The numbers of concurrent clients of the online-path runs.
CONCURRENCY = (1, 16, 64)


def summary(values):
    """Median and spread (min, max) of the values measured in the rounds."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


def ratio_runs(a_runs, b_runs, key):
    """Per-round ratios a/b of one figure."""
    return [a[key] / b[key] if b[key] else None for a, b in zip(a_runs, b_runs)]


def summarise(raw):
    out = {"online": {}, "ratios": {}}
    for target, levels in raw["online"].items():
        out["online"][target] = {}
        for conns, runs in levels.items():
            entry = {
                "rps": summary([r["rps"] for r in runs]),
                "p50_ms": summary([r["p50_us"] / 1e3 for r in runs]),
                "p99_ms": summary([r["p99_us"] / 1e3 for r in runs]),
                "errors": summary([r["errors"] for r in runs]),
                "cpu_ms_per_request": {
                    g: summary([r["cpu_ms_per_request"][g] for r in runs])
                    for g in runs[0]["cpu_ms_per_request"]
                },
            }
            out["online"][target][conns] = entry
    ours, ref, standin = (raw["online"][t] for t in ("ours", "reference", "standin"))
    for conns in ours:
        out["ratios"][f"online_rps_c{conns}"] = summary(ratio_runs(ours[conns], ref[conns], "rps"))
        out["ratios"][f"online_p99_c{conns}"] = summary(
            ratio_runs(ours[conns], ref[conns], "p99_us"))
        out["ratios"][f"online_rps_vs_standin_c{conns}"] = summary(
            ratio_runs(ours[conns], standin[conns], "rps"))

    top = str(max(CONCURRENCY))
    memory = {}
    for name in ("ours", "reference"):
        idle = raw["idle_memory"][name]
        load = [r["memory_under_load"] for r in raw["online"][name][top]]
        memory[name] = {
            "processes": idle[0]["processes"],
            "idle_rss_mib": summary([m["rss_kib"] / 1024 for m in idle]),
            "idle_pss_mib": summary([m["pss_kib"] / 1024 for m in idle]),
            "idle_rss_anon_mib": summary([m["rss_anon_kib"] / 1024 for m in idle]),
            "idle_rss_file_mib": summary([m["rss_file_kib"] / 1024 for m in idle]),
            "load_rss_mib": summary([m["rss_kib"] / 1024 for m in load]),
            "load_pss_mib": summary([m["pss_kib"] / 1024 for m in load]),
        }
    out["memory"] = memory
    idle_o, idle_r = raw["idle_memory"]["ours"], raw["idle_memory"]["reference"]
    load_o = [r["memory_under_load"] for r in raw["online"]["ours"][top]]
    load_r = [r["memory_under_load"] for r in raw["online"]["reference"][top]]
    out["ratios"]["memory_idle_rss"] = summary(ratio_runs(idle_o, idle_r, "rss_kib"))
    out["ratios"]["memory_load_rss"] = summary(ratio_runs(load_o, load_r, "rss_kib"))
    out["ratios"]["memory_idle_pss"] = summary(ratio_runs(idle_o, idle_r, "pss_kib"))
    out["ratios"]["memory_load_pss"] = summary(ratio_runs(load_o, load_r, "pss_kib"))

    startup = {}
    for name, runs in raw["startup"].items():
        startup[name] = {"first_answer_ms": summary([r["first_answer_ms"] for r in runs])}
        if "ready_ms" in runs[0]:
            startup[name]["ready_ms"] = summary([r["ready_ms"] for r in runs])
    if "startup_unhardened_ready_ms" in raw:
        startup["ours"]["unhardened_ready_ms"] = summary(raw["startup_unhardened_ready_ms"])
    out["startup"] = startup
    out["ratios"]["startup_first_answer"] = summary(ratio_runs(
        raw["startup"]["ours"], raw["startup"]["reference"], "first_answer_ms"))

    def recovery_summary(runs, names):
        entry = {"galaxy_alone_ms": summary(runs["galaxy_alone_ms"])}
        for name in names:
            entry[name] = {
                "total_ms": summary([r["total_ms"] for r in runs[name]]),
                "overhead_ms": summary([r["overhead_ms"] for r in runs[name]]),
                **{key: summary([r.get(key) for r in runs[name]]) for key in (
                    "before_restart_ms", "galaxy_own_ms", "after_ready_ms",
                    "in_trial_overhead_ms")},
                "answers": sorted({f"{r['status']} {r['galaxy']}" for r in runs[name]}),
            }
        return entry

    out["recovery"] = recovery_summary(raw["recovery"], ["ours", "reference"])
    out["ratios"]["recovery_overhead"] = summary(ratio_runs(
        raw["recovery"]["ours"], raw["recovery"]["reference"], "overhead_ms"))
    if "recovery_fast_probe" in raw:
        out["recovery_fast_probe"] = recovery_summary(raw["recovery_fast_probe"], ["ours"])
        out["recovery_fast_probe"]["interval"] = raw["recovery_fast_probe"]["interval"]

    storm = {}
    for name, runs in raw["storm"].items():
        storm[name] = {
            "galaxy_restarts": summary([r["galaxy_restarts"] for r in runs]),
            "nginx_restarts": summary([r["nginx_restarts"] for r in runs]),
            "failed": summary([r["failed"] for r in runs]),
            "seconds_to_last_answer": summary([r["seconds_to_last_answer"] for r in runs]),
            "answers": [r["answers"] for r in runs],
        }
    out["storm"] = storm
    out["targets"] = targets(out)
    return out


def targets(s):
    """The issue's targets, each with the measured median and whether it is met."""
    rows = []

    def add(name, goal, value, met):
        rows.append({"target": name, "goal": goal, "measured": value, "met": met})

    for conns in (str(c) for c in CONCURRENCY):
        rps = s["ratios"][f"online_rps_c{conns}"]["median"]
        add(f"online throughput, {conns} clients", "ours >= 20x reference", rps, rps >= 20)
        p99 = s["ratios"][f"online_p99_c{conns}"]["median"]
        add(f"online p99, {conns} clients", "ours <= 0.1x reference", p99, p99 <= 0.1)
    for kind in ("idle", "load"):
        m = s["ratios"][f"memory_{kind}_rss"]["median"]
        add(f"memory (RSS) {'idle' if kind == 'idle' else 'under load'}",
            "ours <= 0.2x reference", m, m <= 0.2)
    ready = s["startup"]["ours"]["ready_ms"]["median"]
    add("start-up, exec to READY=1", "<= 50 ms", ready, ready <= 50)
    variants = [("default config", s["recovery"]["ours"])]
    if "recovery_fast_probe" in s:
        variants.append((f"probe interval {s['recovery_fast_probe']['interval']}",
                         s["recovery_fast_probe"]["ours"]))
    for label, entry in variants:
        overhead = entry["overhead_ms"]["median"]
        add(f"recovery overhead, {label}: POST → answer minus Galaxy alone", "< 100 ms",
            overhead, overhead < 100)
        if entry["in_trial_overhead_ms"]:
            overhead = entry["in_trial_overhead_ms"]["median"]
            add(f"recovery overhead, {label}: before restart + after ready", "< 100 ms",
                overhead, overhead < 100)
    restarts = s["storm"]["ours"]["galaxy_restarts"]
    add("Galaxy restarts in the storm", "exactly 1", restarts["median"],
        restarts["min"] == restarts["max"] == 1)
    return rows
