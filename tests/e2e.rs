//! galaxyctl-api end to end: each scenario in a sandbox of its own, with a real systemd user
//! manager, D-Bus bus, journald, nginx and the Galaxy stand-in, and galaxyctl-api running as
//! the shipped `Type=notify` unit.
//!
//! What the service answers is checked against what can be seen without it: the units'
//! properties (`systemctl --user show`), the manager's own journal entries, the stand-in's
//! log lines and what nginx answers. A restart counts when the manager logged the unit's
//! start ("Started ...", message id [`UNIT_STARTED`]) and its `InvocationID` changed.

mod support;

use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{http_get, http_request, HttpResponse, Sandbox, UNIT_TIMEOUT};

const API: &str = "galaxyctl-api.service";
const GALAXY: &str = "galaxy.service";
const NGINX: &str = "nginx.service";
const STARTUP: &str = "/galaxyctl_api/v1.0/galaxy-startup";

/// How long a test waits for one answer of galaxyctl-api: longer than any answer budget
/// the tests configure, so that the service, not the client, decides when to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a test waits for something to show up in the journal or a unit's properties.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Probing every 200 ms ends a recovery soon after Galaxy answers.
const FAST_PROBES: &str = "[probe]\ninterval = \"200ms\"\n";

// systemd's message ids (systemd's catalog), on the manager's entries about a unit.
/// "Started UNIT": a start job finished with result `done`.
const UNIT_STARTED: &str = "39f53479d3a045ac8e11786248231fbf";
/// "Failed to start UNIT": a start job failed.
const UNIT_START_FAILED: &str = "be02cf6855d2428ba40df7e9d022f03d";
/// "UNIT: Failed with result '...'": the unit entered the failed state.
const UNIT_FAILED: &str = "d9b373ed55a64feb8242e02dbe79a49c";

// galaxyctl-api's message ids (units/galaxyctl-api.catalog). Written out rather than taken
// from the crate: administrators' journal queries depend on them staying the same.
const RECOVERY_STARTED: &str = "6b927d3bb35347d5b06d92c07a2debe1";
const RESTART_REQUESTED: &str = "0b20450153d541adbd0e74b4966a4491";
const JOB_FINISHED: &str = "5cdc2260279b4b48bcf4557ae0805da4";
const RECOVERY_FINISHED: &str = "47b637b48d48471ab54e09257a83248b";

/// Every entry galaxyctl-api writes itself carries this identifier. (`_SYSTEMD_USER_UNIT`
/// would miss entries of a process that exits right after logging: journald reads the
/// unit from the sender's cgroup, which is gone by then.)
const API_ENTRIES: &str = "SYSLOG_IDENTIFIER=galaxyctl-api";

// --- steering the sandbox -------------------------------------------------------------------

/// The whole stack with fast probes and `config` merged into galaxyctl-api's config.
fn sandbox_with(config: &str) -> Sandbox {
    Sandbox::builder()
        .config(FAST_PROBES)
        .config(config)
        .start()
}

/// `systemctl --user ARGS`, which must succeed.
fn systemctl(sandbox: &Sandbox, args: &[&str]) {
    let output = sandbox.systemctl(args);
    assert!(
        output.status.success(),
        "systemctl --user {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// POST galaxy-startup for the Galaxy behind the sandbox's nginx.
fn startup(sandbox: &Sandbox) -> HttpResponse {
    let url = format!("{}{STARTUP}", sandbox.api_url());
    let body = json!({ "endpoint": sandbox.galaxy_url() });
    http_request("POST", &url, Some(&body), ANSWER_TIMEOUT)
        .unwrap_or_else(|e| panic!("POST {url} got no answer: {e}\n{}", sandbox.logs()))
}

/// The answer's JSON, after checking its status.
fn json_of(answer: &HttpResponse, status: u16) -> Value {
    assert_eq!(answer.status, status, "{answer:#?}");
    assert_eq!(
        answer.header("Content-Type"),
        Some("application/json"),
        "{answer:#?}"
    );
    answer.json()
}

/// GET Galaxy's version through nginx, as its users would.
fn galaxy_front(sandbox: &Sandbox) -> std::io::Result<HttpResponse> {
    http_get(&format!("{}/api/version", sandbox.galaxy_url()))
}

/// Polls `check` until it gives a value, for at most `timeout`.
fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Polls `check` until it gives a value; panics with `what` when the time is up.
fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    poll(timeout, check).unwrap_or_else(|| panic!("{what}: not within {timeout:?}"))
}

/// One run of a unit: a restart changes both.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    invocation: String,
    main_pid: String,
}

fn run_of(sandbox: &Sandbox, unit: &str) -> Run {
    Run {
        invocation: sandbox.show(unit, "InvocationID"),
        main_pid: sandbox.show(unit, "ExecMainPID"),
    }
}

/// The report about `unit` in a recovery's `units`.
fn report_in<'a>(units: &'a Value, unit: &str) -> &'a Value {
    units
        .as_array()
        .and_then(|units| units.iter().find(|report| report["unit"] == unit))
        .unwrap_or_else(|| panic!("no report about {unit} in {units:#}"))
}

/// The report about `unit` in `recovery.units` of an answer.
fn unit_report<'a>(body: &'a Value, unit: &str) -> &'a Value {
    report_in(&body["recovery"]["units"], unit)
}

/// The names of the units in `recovery.units` of an answer.
fn reported_units(body: &Value) -> Vec<&str> {
    body["recovery"]["units"]
        .as_array()
        .unwrap_or_else(|| panic!("no recovery.units in {body:#}"))
        .iter()
        .map(|report| report["unit"].as_str().unwrap_or_default())
        .collect()
}

// --- the journal ------------------------------------------------------------------------------

/// A place in the sandbox's journal; [`journal_since`] reads what was written after it.
struct Mark {
    cursor: String,
}

/// Names the transient units that [`flush_journal`] starts.
static FLUSHES: AtomicUsize = AtomicUsize::new(0);

/// Waits until the journal holds every entry sent to journald's socket so far, and returns
/// a cursor just after them.
///
/// The manager and galaxyctl-api both send their entries to journald's datagram socket,
/// which journald reads in order: once the manager's entry about a unit started now is in,
/// so is every entry sent before it. (The units' output arrives on stream sockets instead,
/// without that guarantee; tests wait for such lines.)
fn flush_journal(sandbox: &Sandbox) -> String {
    let unit = format!(
        "e2e-journal-flush-{}.service",
        FLUSHES.fetch_add(1, Ordering::SeqCst)
    );
    let output = sandbox
        .command("systemd-run")
        .args(["--user", "--quiet", "--collect"])
        .arg(format!("--unit={unit}"))
        .arg("/bin/true")
        .output()
        .expect("cannot run systemd-run");
    assert!(
        output.status.success(),
        "systemd-run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let entries = sandbox.wait_journal(&[&format!("USER_UNIT={unit}")], SETTLE_TIMEOUT);
    field(&entries[0], "__CURSOR").to_owned()
}

fn mark(sandbox: &Sandbox) -> Mark {
    Mark {
        cursor: flush_journal(sandbox),
    }
}

/// The entries after `mark` that have every `FIELD=value` of `matches`, oldest first, once
/// every entry sent so far is in.
///
/// The matches are applied here rather than by journalctl: with `--after-cursor` and
/// matches on two fields, journalctl 252 finds nothing.
fn journal_since(sandbox: &Sandbox, mark: &Mark, matches: &[&str]) -> Vec<Value> {
    flush_journal(sandbox);
    let matches: Vec<(&str, &str)> = matches
        .iter()
        .map(|m| m.split_once('=').expect("a match is FIELD=value"))
        .collect();
    let output = Command::new("journalctl")
        .arg("-D")
        .arg(sandbox.journal_dir())
        .args(["-o", "json", "--no-pager", "--after-cursor", &mark.cursor])
        .output()
        .expect("cannot run journalctl");
    assert!(
        output.status.success(),
        "journalctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| -> Value {
            serde_json::from_str(line).expect("journalctl -o json writes JSON lines")
        })
        .filter(|entry| {
            matches
                .iter()
                .all(|(name, value)| field(entry, name) == *value)
        })
        .collect()
}

/// A field of a journal entry; empty when it is missing or not a single string.
fn field<'a>(entry: &'a Value, name: &str) -> &'a str {
    entry[name].as_str().unwrap_or_default()
}

/// The manager's "Started UNIT" entries after `mark`: one per start of the unit.
fn starts_since(sandbox: &Sandbox, mark: &Mark, unit: &str) -> Vec<Value> {
    journal_since(
        sandbox,
        mark,
        &[
            &format!("MESSAGE_ID={UNIT_STARTED}"),
            &format!("USER_UNIT={unit}"),
        ],
    )
}

/// The stand-in's own log lines after `mark` that start with `prefix`.
fn standin_lines_since(sandbox: &Sandbox, mark: &Mark, prefix: &str) -> Vec<String> {
    journal_since(sandbox, mark, &["_SYSTEMD_USER_UNIT=galaxy.service"])
        .iter()
        .map(|entry| field(entry, "MESSAGE").to_owned())
        .filter(|message| message.starts_with(prefix))
        .collect()
}

/// Waits until the stand-in logged `count` lines starting with `prefix` after `mark`, then
/// returns them all; a stream's lines reach the journal a moment after they were written.
fn wait_standin_lines(sandbox: &Sandbox, mark: &Mark, prefix: &str, count: usize) -> Vec<String> {
    wait_for(
        &format!("{count} stand-in line(s) starting with {prefix:?}"),
        SETTLE_TIMEOUT,
        || {
            let lines = standin_lines_since(sandbox, mark, prefix);
            (lines.len() >= count).then_some(lines)
        },
    )
}

/// Asserts that the manager logged exactly one start of `unit` after `mark`, of the run
/// the unit is in now, and returns that entry.
fn assert_restarted_once(sandbox: &Sandbox, mark: &Mark, unit: &str, before: &Run) -> Value {
    let now = run_of(sandbox, unit);
    assert_ne!(
        now.invocation, before.invocation,
        "{unit} was not restarted"
    );
    let starts = starts_since(sandbox, mark, unit);
    assert_eq!(
        starts.len(),
        1,
        "{unit} started more than once: {starts:#?}"
    );
    assert_eq!(
        field(&starts[0], "USER_INVOCATION_ID"),
        now.invocation,
        "the start the manager logged is not of the run {unit} is in"
    );
    starts[0].clone()
}

/// Asserts that `unit` runs as it did before and the manager logged no start of it.
fn assert_untouched(sandbox: &Sandbox, mark: &Mark, unit: &str, before: &Run) {
    assert_eq!(&run_of(sandbox, unit), before, "{unit} was restarted");
    let starts = starts_since(sandbox, mark, unit);
    assert!(starts.is_empty(), "{unit} was started: {starts:#?}");
}

/// The job number in a job's object path, `/org/freedesktop/systemd1/job/NUMBER`.
fn job_number(path: &str) -> &str {
    path.strip_prefix("/org/freedesktop/systemd1/job/")
        .unwrap_or_else(|| panic!("{path} is not a job's path"))
}

// --- the restarts ---------------------------------------------------------------------------

#[test]
fn online_galaxy_is_answered_without_a_restart() {
    let sandbox = Sandbox::start();
    let galaxy = run_of(&sandbox, GALAXY);
    let nginx = run_of(&sandbox, NGINX);
    let mark = mark(&sandbox);

    let body = json_of(&startup(&sandbox), 200);
    assert_eq!(body["galaxy"], "online", "{body:#}");
    assert_eq!(body["http_status"], 200, "{body:#}");
    assert!(body.get("recovery").is_none(), "{body:#}");

    // The probe reached Galaxy through nginx, and nothing was restarted.
    wait_standin_lines(&sandbox, &mark, "127.0.0.1 \"GET /galaxy HTTP", 1);
    assert_untouched(&sandbox, &mark, GALAXY, &galaxy);
    assert_untouched(&sandbox, &mark, NGINX, &nginx);
    let recoveries = journal_since(
        &sandbox,
        &mark,
        &[API_ENTRIES, &format!("MESSAGE_ID={RECOVERY_STARTED}")],
    );
    assert!(recoveries.is_empty(), "{recoveries:#?}");
}

#[test]
fn stopped_galaxy_behind_running_nginx_is_restarted() {
    let sandbox = sandbox_with("");
    let galaxy = run_of(&sandbox, GALAXY);
    let nginx = run_of(&sandbox, NGINX);
    systemctl(&sandbox, &["stop", GALAXY]);
    assert_eq!(galaxy_front(&sandbox).unwrap().status, 502);
    let mark = mark(&sandbox);

    let body = json_of(&startup(&sandbox), 200);
    assert_eq!(body["galaxy"], "online", "{body:#}");
    assert_eq!(reported_units(&body), [GALAXY], "{body:#}");
    let report = unit_report(&body, GALAXY);
    assert_eq!(report["job"]["result"], "done", "{body:#}");

    // systemd's view: restarted once, by the job the answer names, and running.
    assert_eq!(sandbox.show(GALAXY, "ActiveState"), "active");
    assert_eq!(sandbox.show(GALAXY, "SubState"), "running");
    let started = assert_restarted_once(&sandbox, &mark, GALAXY, &galaxy);
    let job = report["job"]["job"].as_str().unwrap_or_default();
    assert_eq!(field(&started, "JOB_ID"), job_number(job), "{started:#}");
    assert_eq!(
        report["state"]["invocation_id"],
        sandbox.show(GALAXY, "InvocationID"),
        "{body:#}"
    );
    assert_untouched(&sandbox, &mark, NGINX, &nginx);
    assert_eq!(galaxy_front(&sandbox).unwrap().status, 200);
}

#[test]
fn galaxy_still_starting_is_waited_for_not_restarted() {
    // galaxy.service is active at once (Type=simple) but listens only after 4 s, as a Galaxy
    // loading its app does; nginx answers 502 meanwhile.
    let sandbox = Sandbox::builder()
        .config(FAST_PROBES)
        .config("[recovery]\nstartup_grace = \"2min\"\nanswer_budget = \"30s\"\n")
        .galaxy_env(&[("STANDIN_START_DELAY", "4")])
        .wait_galaxy(false)
        .start();
    sandbox.wait_active(GALAXY, SETTLE_TIMEOUT);
    let galaxy = run_of(&sandbox, GALAXY);
    let nginx = run_of(&sandbox, NGINX);
    assert_eq!(galaxy_front(&sandbox).unwrap().status, 502);
    let mark = mark(&sandbox);

    let body = json_of(&startup(&sandbox), 200);
    assert_eq!(body["galaxy"], "online", "{body:#}");
    assert!(
        reported_units(&body).is_empty(),
        "nothing restarted: {body:#}"
    );
    assert_untouched(&sandbox, &mark, GALAXY, &galaxy);
    assert_untouched(&sandbox, &mark, NGINX, &nginx);
    assert_eq!(galaxy_front(&sandbox).unwrap().status, 200);
}

#[test]
fn stopped_nginx_is_restarted_and_galaxy_left_alone() {
    let sandbox = sandbox_with("");
    let galaxy = run_of(&sandbox, GALAXY);
    let nginx = run_of(&sandbox, NGINX);
    systemctl(&sandbox, &["stop", NGINX]);
    let refused = galaxy_front(&sandbox).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let mark = mark(&sandbox);

    let body = json_of(&startup(&sandbox), 200);
    assert_eq!(body["galaxy"], "online", "{body:#}");
    assert_eq!(reported_units(&body), [NGINX], "{body:#}");
    assert_eq!(unit_report(&body, NGINX)["job"]["result"], "done");

    assert_eq!(sandbox.show(NGINX, "ActiveState"), "active");
    assert_restarted_once(&sandbox, &mark, NGINX, &nginx);
    assert_untouched(&sandbox, &mark, GALAXY, &galaxy);
    assert_eq!(galaxy_front(&sandbox).unwrap().status, 200);
}

/// Makes Galaxy fail at start, stops it and asks for it: the answer is that recovery's.
fn ask_for_galaxy_that_cannot_start(sandbox: &Sandbox) -> (Value, Mark) {
    sandbox.set_galaxy_env(&[("STANDIN_MODE", "fail-start")]);
    systemctl(sandbox, &["stop", GALAXY]);
    let mark = mark(sandbox);
    let body = json_of(&startup(sandbox), 503);
    (body, mark)
}

#[test]
fn galaxy_that_cannot_start_is_reported_with_systemds_result() {
    let sandbox = sandbox_with("");
    let (body, mark) = ask_for_galaxy_that_cannot_start(&sandbox);

    assert_eq!(body["galaxy"], "unavailable", "{body:#}");
    let code = body["error"]["code"].as_str().unwrap_or_default();
    assert!(["unit_failed", "job_failed"].contains(&code), "{body:#}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("galaxy.service"), "{body:#}");
    assert!(message.contains("exit-code"), "{body:#}");
    assert_eq!(
        unit_report(&body, GALAXY)["job"]["result"],
        "done",
        "{body:#}"
    );

    // systemd's view: the stand-in ran, said why it stops, and the unit failed.
    wait_standin_lines(&sandbox, &mark, "failing at start", 1);
    assert_eq!(sandbox.show(GALAXY, "ActiveState"), "failed");
    assert_eq!(sandbox.show(GALAXY, "Result"), "exit-code");
    let failed = journal_since(
        &sandbox,
        &mark,
        &[
            &format!("MESSAGE_ID={UNIT_FAILED}"),
            "USER_UNIT=galaxy.service",
        ],
    );
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(field(&failed[0], "UNIT_RESULT"), "exit-code", "{failed:#?}");
}

/// A Type=simple unit's start job ends `done` before its process can fail, so the unit is
/// still running when its job ends; the answer must not stop at that moment.
#[test]
fn failed_galaxy_is_reported_in_the_state_systemd_gives() {
    let sandbox = sandbox_with("");
    let (body, _) = ask_for_galaxy_that_cannot_start(&sandbox);

    let state = &unit_report(&body, GALAXY)["state"];
    let systemd = (
        sandbox.show(GALAXY, "ActiveState"),
        sandbox.show(GALAXY, "Result"),
    );
    assert_eq!(systemd, ("failed".to_owned(), "exit-code".to_owned()));
    assert_eq!(
        (state["active_state"].as_str(), state["result"].as_str()),
        (Some("failed"), Some("exit-code")),
        "the answer reports galaxy.service in another state than systemd: {body:#}"
    );
}

#[test]
fn galaxy_at_its_start_limit_is_reported_as_start_limit_hit() {
    let sandbox = sandbox_with("");

    // One start a minute at most, and that one is spent on a Galaxy that runs but answers
    // 500. (Not on a Galaxy that fails to start: a unit keeps the result of its first
    // failure, so the start limit would then show as `exit-code`.) `reset-failed` starts
    // the count afresh.
    let dropin = sandbox
        .unit_dir()
        .join("galaxy.service.d/60-start-limit.conf");
    fs::create_dir_all(dropin.parent().unwrap()).unwrap();
    fs::write(
        &dropin,
        "[Unit]\nStartLimitBurst=1\nStartLimitIntervalSec=1min\n",
    )
    .unwrap();
    sandbox.set_galaxy_env(&[("STANDIN_MODE", "error")]);
    assert_eq!(sandbox.show(GALAXY, "StartLimitBurst"), "1");
    systemctl(&sandbox, &["reset-failed", GALAXY]);
    systemctl(&sandbox, &["restart", GALAXY]);
    wait_for("Galaxy answering 500", SETTLE_TIMEOUT, || {
        galaxy_front(&sandbox).ok().filter(|r| r.status == 500)
    });
    let mark = mark(&sandbox);

    let body = json_of(&startup(&sandbox), 503);
    assert_eq!(body["galaxy"], "unavailable", "{body:#}");
    assert_eq!(body["error"]["code"], "job_failed", "{body:#}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("start-limit-hit"), "{body:#}");
    let report = unit_report(&body, GALAXY);
    assert_eq!(report["job"]["result"], "failed", "{body:#}");
    assert_eq!(report["state"]["result"], "start-limit-hit", "{body:#}");

    // systemd's view: the start job the answer names failed on the start limit.
    assert_eq!(sandbox.show(GALAXY, "ActiveState"), "failed");
    assert_eq!(sandbox.show(GALAXY, "Result"), "start-limit-hit");
    let failed_starts = journal_since(
        &sandbox,
        &mark,
        &[
            &format!("MESSAGE_ID={UNIT_START_FAILED}"),
            "USER_UNIT=galaxy.service",
        ],
    );
    assert_eq!(failed_starts.len(), 1, "{failed_starts:#?}");
    let job = report["job"]["job"].as_str().unwrap_or_default();
    assert_eq!(field(&failed_starts[0], "JOB_ID"), job_number(job));
    assert_eq!(field(&failed_starts[0], "JOB_RESULT"), "failed");
    let failed = journal_since(
        &sandbox,
        &mark,
        &[
            &format!("MESSAGE_ID={UNIT_FAILED}"),
            "USER_UNIT=galaxy.service",
        ],
    );
    assert_eq!(
        field(&failed[0], "UNIT_RESULT"),
        "start-limit-hit",
        "{failed:#?}"
    );
}

#[test]
fn unknown_galaxy_unit_is_reported_as_no_such_unit() {
    let sandbox = sandbox_with("[galaxy]\nunits = [\"no-such-galaxy.service\"]\n");
    let nginx = run_of(&sandbox, NGINX);
    systemctl(&sandbox, &["stop", GALAXY]);
    let mark = mark(&sandbox);

    let body = json_of(&startup(&sandbox), 503);
    assert_eq!(body["galaxy"], "unavailable", "{body:#}");
    assert_eq!(body["error"]["code"], "no_such_unit", "{body:#}");
    assert_eq!(
        reported_units(&body),
        ["no-such-galaxy.service"],
        "{body:#}"
    );
    let report = unit_report(&body, "no-such-galaxy.service");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("org.freedesktop.systemd1.NoSuchUnit"),
        "{body:#}"
    );
    assert!(report.get("job").is_none(), "{body:#}");

    // systemd's view: no such unit, and nothing else was started in its place.
    assert_eq!(
        sandbox.show("no-such-galaxy.service", "LoadState"),
        "not-found"
    );
    assert_eq!(sandbox.show(GALAXY, "ActiveState"), "inactive");
    assert!(starts_since(&sandbox, &mark, GALAXY).is_empty());
    assert_untouched(&sandbox, &mark, NGINX, &nginx);
    let refused = journal_since(
        &sandbox,
        &mark,
        &[
            API_ENTRIES,
            "DBUS_ERROR=org.freedesktop.systemd1.NoSuchUnit",
        ],
    );
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(field(&refused[0], "UNIT"), "no-such-galaxy.service");
}

#[test]
fn slow_galaxy_is_answered_starting_then_comes_online_after_one_restart() {
    let sandbox = sandbox_with("[recovery]\nanswer_budget = \"2s\"\n");
    let galaxy = run_of(&sandbox, GALAXY);
    sandbox.set_galaxy_env(&[("STANDIN_START_DELAY", "8")]);
    systemctl(&sandbox, &["stop", GALAXY]);
    let mark = mark(&sandbox);

    // Galaxy takes 8 s to listen; the answer comes after the 2 s budget.
    let body = json_of(&startup(&sandbox), 202);
    assert_eq!(body["galaxy"], "starting", "{body:#}");
    let id = body["recovery"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!id.is_empty(), "{body:#}");
    assert_eq!(body["recovery"]["restarting"], json!([GALAXY]), "{body:#}");
    let href = format!("/galaxyctl_api/v1.0/operations/{id}");
    assert_eq!(body["operation"]["href"], href, "{body:#}");

    // The recovery carries on without the caller and ends with Galaxy online.
    let url = format!("{}{href}", sandbox.api_url());
    let operation = wait_for("the recovery to finish", Duration::from_secs(30), || {
        let body = json_of(&http_get(&url).unwrap(), 200);
        assert_eq!(body["id"], id.as_str(), "{body:#}");
        (body["state"] == "finished").then_some(body)
    });
    assert_eq!(operation["galaxy"], "online", "{operation:#}");
    assert_eq!(
        report_in(&operation["units"], GALAXY)["job"]["result"],
        "done"
    );
    assert_eq!(galaxy_front(&sandbox).unwrap().status, 200);

    // Asked again, it finds Galaxy online and restarts nothing more.
    let again = json_of(&startup(&sandbox), 200);
    assert_eq!(again["galaxy"], "online", "{again:#}");
    assert!(again.get("recovery").is_none(), "{again:#}");
    assert_restarted_once(&sandbox, &mark, GALAXY, &galaxy);
    assert_eq!(
        wait_standin_lines(&sandbox, &mark, "listening on", 1).len(),
        1
    );
    assert_eq!(
        standin_lines_since(&sandbox, &mark, "starting, will listen in").len(),
        1
    );
}

#[test]
fn fifty_concurrent_requests_cause_one_restart() {
    const CALLERS: usize = 50;
    let sandbox = sandbox_with("");
    let galaxy = run_of(&sandbox, GALAXY);
    let nginx = run_of(&sandbox, NGINX);
    systemctl(&sandbox, &["stop", GALAXY]);
    let mark = mark(&sandbox);

    let all_set = Barrier::new(CALLERS);
    let answers: Vec<HttpResponse> = thread::scope(|scope| {
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                scope.spawn(|| {
                    all_set.wait();
                    startup(&sandbox)
                })
            })
            .collect();
        callers
            .into_iter()
            .map(|caller| caller.join().expect("a caller panicked"))
            .collect()
    });

    // Every caller hears "online"; those who waited on a recovery name the same one.
    let mut recoveries = Vec::new();
    for answer in &answers {
        let body = json_of(answer, 200);
        assert_eq!(body["galaxy"], "online", "{body:#}");
        if let Some(id) = body["recovery"]["id"].as_str() {
            recoveries.push(id.to_owned());
        }
    }
    recoveries.sort();
    recoveries.dedup();
    assert_eq!(recoveries.len(), 1, "{recoveries:?}");

    // systemd's view: one start of Galaxy, by one restart request.
    assert_restarted_once(&sandbox, &mark, GALAXY, &galaxy);
    assert_untouched(&sandbox, &mark, NGINX, &nginx);
    assert_eq!(
        wait_standin_lines(&sandbox, &mark, "listening on", 1).len(),
        1
    );
    let requested = journal_since(
        &sandbox,
        &mark,
        &[API_ENTRIES, &format!("MESSAGE_ID={RESTART_REQUESTED}")],
    );
    assert_eq!(requested.len(), 1, "{requested:#?}");
}

// --- galaxyctl-api as a unit --------------------------------------------------------------------

#[test]
fn api_tells_systemd_where_it_listens_and_what_it_last_saw() {
    let sandbox = Sandbox::start();
    assert_eq!(sandbox.show(API, "Type"), "notify");
    assert_eq!(sandbox.show(API, "NotifyAccess"), "main");
    let listening = format!(
        "Listening on http://127.0.0.1:{}, systemd on the user bus",
        sandbox.api_port()
    );
    assert_eq!(sandbox.show(API, "StatusText"), listening);

    let status = sandbox.systemctl(&["status", "--no-pager", "--lines=0", API]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains("Active: active (running)"), "{status}");
    assert!(
        status.contains(&format!("Status: \"{listening}\"")),
        "{status}"
    );

    // After a request, the status line tells the last check of Galaxy.
    json_of(&startup(&sandbox), 200);
    let text = wait_for("the last check in StatusText", SETTLE_TIMEOUT, || {
        let text = sandbox.show(API, "StatusText");
        text.contains("; last check ").then_some(text)
    });
    assert!(text.starts_with(&listening), "{text}");
    assert!(text.ends_with(": online (HTTP 200)"), "{text}");
    let status = sandbox.systemctl(&["status", "--no-pager", "--lines=0", API]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains(&format!("Status: \"{text}\"")), "{status}");
}

#[test]
fn api_feeds_the_watchdog() {
    let sandbox = Sandbox::start();
    assert_eq!(sandbox.show(API, "WatchdogUSec"), "30s");

    // The shipped 30 s would mean a feed every 15 s; 2 s shows several in a few seconds.
    let dropin = sandbox
        .unit_dir()
        .join("galaxyctl-api.service.d/60-watchdog.conf");
    fs::write(&dropin, "[Service]\nWatchdogSec=2s\n").unwrap();
    systemctl(&sandbox, &["daemon-reload"]);
    systemctl(&sandbox, &["restart", API]);
    sandbox.wait_active(API, UNIT_TIMEOUT);
    assert_eq!(sandbox.show(API, "WatchdogUSec"), "2s");
    let run = run_of(&sandbox, API);

    // Past activation, only WATCHDOG=1 moves the watchdog timestamp.
    let stamp = || -> u64 {
        let text = sandbox.show(API, "WatchdogTimestampMonotonic");
        text.parse()
            .unwrap_or_else(|e| panic!("WatchdogTimestampMonotonic={text:?}: {e}"))
    };
    let mut stamps = vec![stamp()];
    while stamps.len() < 3 {
        let last = *stamps.last().unwrap();
        let next = wait_for("the watchdog to be fed", SETTLE_TIMEOUT, || {
            Some(stamp()).filter(|now| *now != last)
        });
        assert!(
            next > last,
            "the watchdog timestamp went back: {stamps:?}, {next}"
        );
        stamps.push(next);
    }

    // Fed in time: systemd never killed it.
    assert_eq!(run_of(&sandbox, API), run);
    assert_eq!(sandbox.show(API, "ActiveState"), "active");
    assert_eq!(sandbox.show(API, "NRestarts"), "0");
}

#[test]
fn api_journals_each_step_of_a_restart_with_its_fields() {
    let sandbox = sandbox_with("");
    systemctl(&sandbox, &["stop", GALAXY]);
    let mark = mark(&sandbox);

    let body = json_of(&startup(&sandbox), 200);
    let recovery_id = body["recovery"]["id"].as_str().unwrap_or_default();
    let request_id = body["request_id"].as_str().unwrap_or_default();
    let job = unit_report(&body, GALAXY)["job"]["job"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !recovery_id.is_empty() && !request_id.is_empty(),
        "{body:#}"
    );

    // The entries of the recovery, in order, each with its own fields.
    let entries = journal_since(
        &sandbox,
        &mark,
        &[API_ENTRIES, &format!("RECOVERY_ID={recovery_id}")],
    );
    let messages: Vec<&str> = entries.iter().map(|e| field(e, "MESSAGE")).collect();
    let steps = [
        "recovery started",
        "restart requested",
        "job finished",
        "unit state",
        "recovery finished",
    ];
    let mut at = 0;
    let mut step_entries = Vec::new();
    for step in steps {
        let found = messages[at..]
            .iter()
            .position(|message| *message == step)
            .unwrap_or_else(|| panic!("no {step:?} after {:?} in {messages:?}", &messages[..at]));
        at += found;
        step_entries.push(&entries[at]);
        at += 1;
    }
    let [started, requested, finished, state, done] = step_entries[..] else {
        unreachable!("one entry per step");
    };
    assert_eq!(field(started, "MESSAGE_ID"), RECOVERY_STARTED);
    assert_eq!(field(started, "VERDICT"), "answered HTTP 502");
    assert_eq!(field(requested, "MESSAGE_ID"), RESTART_REQUESTED);
    assert_eq!(field(requested, "UNIT"), GALAXY);
    assert_eq!(field(finished, "MESSAGE_ID"), JOB_FINISHED);
    assert_eq!(field(finished, "UNIT"), GALAXY);
    assert_eq!(field(finished, "JOB"), job);
    assert_eq!(field(finished, "JOB_RESULT"), "done");
    assert_eq!(field(state, "ACTIVE_STATE"), "active");
    assert_eq!(field(done, "MESSAGE_ID"), RECOVERY_FINISHED);
    assert_eq!(field(done, "OUTCOME"), "online");
    for entry in &entries {
        assert_eq!(field(entry, "REQUEST_ID"), request_id, "{entry:#}");
        assert_eq!(field(entry, "_SYSTEMD_USER_UNIT"), API, "{entry:#}");
    }

    // The job it logged is the one the manager ran, and an administrator's query finds it.
    let started_by_manager = starts_since(&sandbox, &mark, GALAXY);
    assert_eq!(started_by_manager.len(), 1, "{started_by_manager:#?}");
    assert_eq!(field(&started_by_manager[0], "JOB_ID"), job_number(&job));
    let restarts_of_galaxy = journal_since(
        &sandbox,
        &mark,
        &[
            &format!("MESSAGE_ID={RESTART_REQUESTED}"),
            "UNIT=galaxy.service",
        ],
    );
    assert_eq!(restarts_of_galaxy.len(), 1, "{restarts_of_galaxy:#?}");
}

#[test]
fn stop_answers_the_request_under_way_and_ends_inactive() {
    // The budget outlasts the shutdown's grace: only the stop itself can answer in time.
    let sandbox = sandbox_with("[recovery]\nanswer_budget = \"50s\"\n");
    sandbox.set_galaxy_env(&[("STANDIN_START_DELAY", "30")]);
    systemctl(&sandbox, &["stop", GALAXY]);
    let pid = sandbox.show(API, "MainPID");
    let mark = mark(&sandbox);

    let answer = thread::scope(|scope| {
        let caller = scope.spawn(|| startup(&sandbox));
        // The request is in once its recovery started; then stop the service.
        wait_for("the request's recovery", SETTLE_TIMEOUT, || {
            let started = journal_since(
                &sandbox,
                &mark,
                &[API_ENTRIES, &format!("MESSAGE_ID={RECOVERY_STARTED}")],
            );
            (!started.is_empty()).then_some(())
        });
        systemctl(&sandbox, &["stop", API]);
        caller.join().expect("the caller panicked")
    });

    // The request under way got its answer before the service went.
    let body = json_of(&answer, 202);
    assert_eq!(body["galaxy"], "starting", "{body:#}");

    assert_eq!(sandbox.show(API, "ActiveState"), "inactive");
    assert_eq!(sandbox.show(API, "Result"), "success");
    assert!(http_get(&format!("{}/galaxyctl_api/v1.0/info", sandbox.api_url())).is_err());
    let entries = journal_since(&sandbox, &mark, &[API_ENTRIES, &format!("_PID={pid}")]);
    let messages: Vec<&str> = entries.iter().map(|e| field(e, "MESSAGE")).collect();
    let shutting_down = messages.iter().position(|m| *m == "shutting down");
    let stopped = messages.iter().position(|m| *m == "stopped");
    assert!(
        matches!((shutting_down, stopped), (Some(a), Some(b)) if a < b),
        "{messages:?}"
    );
    let signal = &entries[shutting_down.unwrap()];
    assert_eq!(field(signal, "SIGNAL"), "SIGTERM", "{signal:#}");
}

// --- a bad configuration ----------------------------------------------------------------------

/// Stops galaxyctl-api, puts `[probe] timeout = "soon"` in its config, starts it again and
/// returns whether `systemctl start` succeeded, and the mark taken before.
fn start_with_bad_timeout(sandbox: &Sandbox) -> (bool, Mark) {
    systemctl(sandbox, &["stop", API]);
    let path = sandbox.dir().join("galaxyctl-api.toml");
    let mut config = fs::read_to_string(&path).unwrap();
    assert!(!config.contains("[probe]"), "{config}");
    config.push_str("\n[probe]\ntimeout = \"soon\"\n");
    fs::write(&path, config).unwrap();
    let mark = mark(sandbox);
    let started = sandbox.systemctl(&["start", API]).status.success();
    (started, mark)
}

/// galaxyctl-api's entries after `mark` that say what is wrong with `soon`.
fn config_errors(sandbox: &Sandbox, mark: &Mark) -> Vec<String> {
    wait_for("an entry about the bad value", SETTLE_TIMEOUT, || {
        let errors: Vec<String> = journal_since(sandbox, mark, &[API_ENTRIES])
            .iter()
            .flat_map(|entry| [field(entry, "MESSAGE"), field(entry, "ERROR")])
            .filter(|text| text.contains("soon"))
            .map(str::to_owned)
            .collect();
        (!errors.is_empty()).then_some(errors)
    })
}

#[test]
fn bad_config_value_fails_the_start_before_ready() {
    let sandbox = Sandbox::start();

    let (started, mark) = start_with_bad_timeout(&sandbox);
    assert!(!started, "systemctl start succeeded with a bad config");
    assert_ne!(sandbox.show(API, "ActiveState"), "active");

    // The manager logs "Started" for a Type=notify unit on READY=1: it never came.
    let started = starts_since(&sandbox, &mark, API);
    assert!(started.is_empty(), "{started:#?}");
    let failed = journal_since(
        &sandbox,
        &mark,
        &[
            &format!("MESSAGE_ID={UNIT_START_FAILED}"),
            "USER_UNIT=galaxyctl-api.service",
        ],
    );
    assert!(!failed.is_empty(), "the manager logged no failed start");
    assert_eq!(field(&failed[0], "JOB_RESULT"), "failed", "{failed:#?}");
    assert!(!config_errors(&sandbox, &mark).is_empty());
    let ready = journal_since(&sandbox, &mark, &[API_ENTRIES, "MESSAGE=ready"]);
    assert!(ready.is_empty(), "{ready:#?}");
}

#[test]
fn bad_config_value_is_reported_with_its_key() {
    let sandbox = Sandbox::start();

    let (_, mark) = start_with_bad_timeout(&sandbox);
    let errors = config_errors(&sandbox, &mark);
    assert!(
        errors.iter().any(|error| error.contains("probe.timeout")),
        "no entry names the key probe.timeout: {errors:#?}"
    );
}

#[test]
fn bad_config_value_leaves_the_unit_failed_without_restarts() {
    let sandbox = Sandbox::start();

    let (started, _) = start_with_bad_timeout(&sandbox);
    assert!(!started, "systemctl start succeeded with a bad config");
    // Restart=on-failure with RestartSec=2s would try again for ever, and systemd's start
    // limit (5 in 10 s) never stops it: a config error must end the unit `failed`.
    let failed = poll(Duration::from_secs(12), || {
        (sandbox.show(API, "ActiveState") == "failed").then_some(())
    });
    assert!(
        failed.is_some(),
        "galaxyctl-api is {} ({}) after {} automatic restarts, not failed",
        sandbox.show(API, "ActiveState"),
        sandbox.show(API, "SubState"),
        sandbox.show(API, "NRestarts"),
    );
    assert_eq!(sandbox.show(API, "Result"), "exit-code");
    assert_eq!(sandbox.show(API, "NRestarts"), "0");
}
