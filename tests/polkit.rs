//! The polkit rule in `dbus/` and the user in `units/galaxyctl-api.sysusers`, checked against
//! a real polkitd.
//!
//! `tests/polkit/check-rules` runs polkitd on a private system bus in private mount and PID
//! namespaces, with only the rule under test loaded and the user added by the real
//! `systemd-sysusers` to private copies of `/etc/passwd` and `/etc/group`; nothing on the host
//! changes. For every case it asks `pkcheck` whether a process of the given user may perform
//! the action, with the `unit` and `verb` details systemd passes along for
//! `org.freedesktop.systemd1.manage-units`.
//!
//! Needs root (for the namespaces) and polkitd; without them the tests fail rather than skip,
//! since a skipped check would let a broken rule through.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dbus/galaxyctl-api.rules");
const SYSUSERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/units/galaxyctl-api.sysusers");
const CHECK_RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/polkit/check-rules");

/// Setting up takes under a second; this only stops a hung polkitd from hanging the suite.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

const MANAGE_UNITS: &str = "org.freedesktop.systemd1.manage-units";
const MANAGE_UNIT_FILES: &str = "org.freedesktop.systemd1.manage-unit-files";
const RELOAD_DAEMON: &str = "org.freedesktop.systemd1.reload-daemon";
/// An action that polkit's defaults grant to anyone (`allow_any` is `yes`).
const INHIBIT_SHUTDOWN: &str = "org.freedesktop.login1.inhibit-delay-shutdown";

const SERVICE_USER: &str = "galaxyctl-api";
const OTHER_USER: &str = "nobody";

/// What pkcheck answered, from its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Allowed,
    /// Not authorized: a rule said no.
    Denied,
    /// Authorized only after authentication, which no process here could give: what polkit's
    /// defaults answer when no rule decides.
    Challenge,
}

impl Answer {
    fn as_str(self) -> &'static str {
        match self {
            Answer::Allowed => "allowed",
            Answer::Denied => "denied",
            Answer::Challenge => "challenge",
        }
    }
}

/// One pkcheck call and the answer it must get.
struct Case {
    user: &'static str,
    action: &'static str,
    /// `(key, value)` pairs, as systemd passes them.
    details: Vec<(&'static str, &'static str)>,
    expect: Answer,
}

impl Case {
    /// What systemd asks polkit when `user` calls `verb` (`restart`, `reset-failed`, ...) on
    /// `unit`.
    fn unit(user: &'static str, unit: &'static str, verb: &'static str, expect: Answer) -> Case {
        let details = vec![("unit", unit), ("verb", verb)];
        Case {
            user,
            action: MANAGE_UNITS,
            details,
            expect,
        }
    }

    /// A check of `action` without details.
    fn action(user: &'static str, action: &'static str, expect: Answer) -> Case {
        Case {
            user,
            action,
            details: Vec::new(),
            expect,
        }
    }

    /// Says what is asked, without spaces (the cases file separates fields with them), e.g.
    /// `galaxyctl-api:manage-units:galaxy.service:restart`.
    fn name(&self) -> String {
        let action = self.action.rsplit('.').next().unwrap_or(self.action);
        let mut name = format!("{}:{action}", self.user);
        for (_, value) in &self.details {
            name.push(':');
            name.push_str(value);
        }
        name
    }
}

/// What one run of `check-rules` reported.
struct Report {
    /// The passwd and group lines systemd-sysusers wrote for the service user.
    passwd: String,
    group: String,
    /// Case name to answer (`allowed`, `denied`, `challenge` or `error-N`).
    answers: BTreeMap<String, String>,
    polkitd_log: String,
}

/// Runs `check-rules` with `rules` as the only rules file and asks about every case.
fn check_rules(rules: &str, cases: &[Case]) -> Report {
    assert_root();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let rules_path = dir.path().join("galaxyctl-api.rules");
    fs::write(&rules_path, rules).expect("writing the rules file");

    let cases_path = dir.path().join("cases");
    let lines: Vec<String> = cases
        .iter()
        .map(|case| {
            let mut line = format!("{} {} {}", case.name(), case.user, case.action);
            for (key, value) in &case.details {
                line.push_str(&format!(" {key} {value}"));
            }
            line
        })
        .collect();
    fs::write(&cases_path, lines.join("\n") + "\n").expect("writing the cases");

    // Files rather than pipes: nothing has to drain them while the child runs.
    let work = dir.path().join("work");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(CHECK_RULES)
        .arg(&rules_path)
        .arg(SYSUSERS)
        .arg(&cases_path)
        .arg(&work)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("creating the stdout file"))
        .stderr(File::create(&stderr_path).expect("creating the stderr file"))
        .spawn()
        .expect("starting tests/polkit/check-rules");

    // The child is unshare itself: killing it makes the kernel end everything in its
    // namespaces.
    let deadline = Instant::now() + CHECK_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for check-rules") {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().expect("killing check-rules");
            child.wait().expect("reaping check-rules");
            panic!(
                "check-rules took longer than {CHECK_TIMEOUT:?}\n{}",
                logs(dir.path(), &work)
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "check-rules failed: {status}\n{}",
        logs(dir.path(), &work)
    );

    let stdout = fs::read_to_string(&stdout_path).expect("reading the stdout file");
    let mut passwd = String::new();
    let mut group = String::new();
    let mut answers = BTreeMap::new();
    for line in stdout.lines() {
        match line.split_once(' ') {
            Some(("passwd", entry)) => passwd = entry.to_owned(),
            Some(("group", entry)) => group = entry.to_owned(),
            Some(("case", rest)) => {
                let (name, answer) = rest.split_once(' ').expect("`case NAME ANSWER`");
                answers.insert(name.to_owned(), answer.to_owned());
            }
            _ => panic!("unexpected line from check-rules: {line:?}"),
        }
    }

    let polkitd_log = fs::read_to_string(work.join("polkitd.log")).expect("polkitd.log");
    Report {
        passwd,
        group,
        answers,
        polkitd_log,
    }
}

fn assert_root() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .expect("running id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the polkit tests need root: they run polkitd in private namespaces"
    );
}

/// Everything the scripts and polkitd wrote, for a failure message.
fn logs(dir: &Path, work: &Path) -> String {
    let mut text = String::new();
    for (title, path) in [
        ("stdout", dir.join("stdout")),
        ("stderr", dir.join("stderr")),
        ("polkitd.log", work.join("polkitd.log")),
        ("dbus-daemon.log", work.join("dbus-daemon.log")),
    ] {
        let content = fs::read_to_string(&path).unwrap_or_else(|e| format!("({e})"));
        text.push_str(&format!("--- {title} ---\n{content}\n"));
    }
    text
}

/// Fails with one line per case whose answer differs, so a run shows every broken case.
fn assert_answers(report: &Report, cases: &[Case]) {
    let mut wrong = Vec::new();
    for case in cases {
        let name = case.name();
        let got = report
            .answers
            .get(&name)
            .map_or("(no answer)", String::as_str);
        if got != case.expect.as_str() {
            wrong.push(format!(
                "{name}: expected {}, got {got}",
                case.expect.as_str()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "polkitd answered otherwise than expected:\n{}\n--- polkitd.log ---\n{}",
        wrong.join("\n"),
        report.polkitd_log
    );
}

/// Lines in which polkitd reports an error: a rules file that does not compile or a rule that
/// throws while it is evaluated.
fn errors_in(polkitd_log: &str) -> Vec<&str> {
    polkitd_log
        .lines()
        .filter(|line| line.to_lowercase().contains("error"))
        .collect()
}

/// polkitd counts the rules files it loaded without error; only the one under test is there.
fn assert_rule_loaded(report: &Report) {
    let errors = errors_in(&report.polkitd_log);
    assert!(
        errors.is_empty(),
        "polkitd reported errors:\n{}",
        errors.join("\n")
    );
    assert!(
        report
            .polkitd_log
            .contains("Finished loading, compiling and executing 1 rules"),
        "polkitd did not load the rules file:\n{}",
        report.polkitd_log
    );
}

fn shipped_rules() -> String {
    fs::read_to_string(RULES).expect("reading dbus/galaxyctl-api.rules")
}

#[test]
fn service_user_may_only_restart_and_reset_the_listed_units() {
    use Answer::*;
    let cases = [
        // What the daemon does.
        Case::unit(SERVICE_USER, "galaxy.service", "restart", Allowed),
        Case::unit(SERVICE_USER, "nginx.service", "restart", Allowed),
        Case::unit(SERVICE_USER, "galaxy.service", "reset-failed", Allowed),
        Case::unit(SERVICE_USER, "nginx.service", "reset-failed", Allowed),
        // Other verbs on the same units.
        Case::unit(SERVICE_USER, "galaxy.service", "start", Denied),
        Case::unit(SERVICE_USER, "galaxy.service", "stop", Denied),
        Case::unit(SERVICE_USER, "nginx.service", "stop", Denied),
        Case::unit(SERVICE_USER, "galaxy.service", "reload-or-restart", Denied),
        Case::unit(SERVICE_USER, "galaxy.service", "kill", Denied),
        Case::unit(SERVICE_USER, "galaxy.service", "set-property", Denied),
        // Other units, or none named.
        Case::unit(SERVICE_USER, "ssh.service", "restart", Denied),
        Case::unit(SERVICE_USER, "galaxy.target", "restart", Denied),
        Case::unit(SERVICE_USER, "galaxy", "restart", Denied),
        Case {
            user: SERVICE_USER,
            action: MANAGE_UNITS,
            details: vec![("verb", "restart")],
            expect: Denied,
        },
        Case::action(SERVICE_USER, MANAGE_UNITS, Denied),
        // Other actions, including one that polkit's defaults grant to anyone.
        Case {
            user: SERVICE_USER,
            action: MANAGE_UNIT_FILES,
            details: vec![("unit", "galaxy.service")],
            expect: Denied,
        },
        Case::action(SERVICE_USER, RELOAD_DAEMON, Denied),
        Case::action(SERVICE_USER, INHIBIT_SHUTDOWN, Denied),
        // Other users get polkit's defaults, as if there were no rule.
        Case::unit(OTHER_USER, "galaxy.service", "restart", Challenge),
        Case::unit(OTHER_USER, "nginx.service", "reset-failed", Challenge),
        Case::action(OTHER_USER, INHIBIT_SHUTDOWN, Allowed),
    ];

    let report = check_rules(&shipped_rules(), &cases);

    assert_answers(&report, &cases);
    assert_rule_loaded(&report);
}

#[test]
fn sysusers_entry_makes_a_system_user_without_login() {
    let report = check_rules(&shipped_rules(), &[]);

    // name:x:uid:gid:gecos:home:shell
    let fields: Vec<&str> = report.passwd.split(':').collect();
    assert_eq!(fields.len(), 7, "passwd line {:?}", report.passwd);
    assert_eq!(fields[0], SERVICE_USER);
    let uid: u32 = fields[2].parse().expect("a numeric UID");
    assert!(
        (1..1000).contains(&uid),
        "UID {uid} is not in the system range"
    );
    assert_eq!(fields[5], "/", "home");
    assert!(fields[6].ends_with("/nologin"), "shell {:?}", fields[6]);

    // The user's primary group is its own group, of the same name.
    let group: Vec<&str> = report.group.split(':').collect();
    assert_eq!(
        group.first(),
        Some(&SERVICE_USER),
        "group line {:?}",
        report.group
    );
    assert_eq!(
        group.get(2),
        Some(&fields[3]),
        "the user's GID is not its group's"
    );
}

/// Under Gravity the Galaxy unit is galaxy.target: the administrator puts it in the rule's
/// list in place of galaxy.service, one name per line.
#[test]
fn an_edited_unit_list_moves_the_permission() {
    use Answer::*;
    let listed = "    \"galaxy.service\",\n";
    let shipped = shipped_rules();
    assert_eq!(
        shipped.matches(listed).count(),
        1,
        "galaxy.service is not alone on its line"
    );
    let rules = shipped.replace(listed, "    \"galaxy.target\",\n");
    let cases = [
        Case::unit(SERVICE_USER, "galaxy.target", "restart", Allowed),
        Case::unit(SERVICE_USER, "galaxy.target", "reset-failed", Allowed),
        Case::unit(SERVICE_USER, "nginx.service", "restart", Allowed),
        Case::unit(SERVICE_USER, "galaxy.target", "stop", Denied),
        Case::unit(SERVICE_USER, "galaxy.service", "restart", Denied),
    ];

    let report = check_rules(&rules, &cases);

    assert_answers(&report, &cases);
    assert_rule_loaded(&report);
}

/// The error check above is worth something only if polkitd's log really shows a broken file.
#[test]
fn a_rules_file_that_does_not_compile_shows_in_polkitd_log() {
    // An unterminated function: the whole file fails to compile, so no rule decides.
    let broken = shipped_rules() + "\npolkit.addRule(function (action, subject) {\n";
    let cases = [Case::unit(
        SERVICE_USER,
        "galaxy.service",
        "restart",
        Answer::Challenge,
    )];

    let report = check_rules(&broken, &cases);

    assert_answers(&report, &cases);
    assert!(
        !errors_in(&report.polkitd_log).is_empty(),
        "no error in polkitd's log for a broken rules file:\n{}",
        report.polkitd_log
    );
    assert!(
        report
            .polkitd_log
            .contains("Finished loading, compiling and executing 0 rules"),
        "polkitd loaded a broken rules file:\n{}",
        report.polkitd_log
    );
}
