//! Operations: each recovery, kept for a while with its steps, so that a caller who got
//! "starting" or 202 can later ask how it went.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::{json, Value};

use super::Report;

/// At most this many operations are kept.
pub const MAX_KEPT: usize = 100;
/// A finished operation is forgotten this long after it ended.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What started an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A galaxy-startup request found Galaxy down.
    Startup,
    /// An explicit restart, asked for even though Galaxy may answer.
    Restart,
}

/// One step of an operation, as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// When (RFC 3339, milliseconds).
    pub at: String,
    pub step: String,
}

/// One recovery and what it did.
#[derive(Debug)]
pub struct Operation {
    pub id: String,
    pub kind: Kind,
    started_at: SystemTime,
    steps: Mutex<Vec<Step>>,
    /// The outcome and when it came, once the recovery ended.
    ended: Mutex<Option<(Instant, Arc<Report>)>>,
}

impl Operation {
    pub fn new(id: String, kind: Kind) -> Operation {
        Operation {
            id,
            kind,
            started_at: SystemTime::now(),
            steps: Mutex::new(Vec::new()),
            ended: Mutex::new(None),
        }
    }

    /// Records a step, stamped now.
    pub fn step(&self, text: impl Into<String>) {
        let step = Step {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            step: text.into(),
        };
        self.steps
            .lock()
            .expect("steps lock is never held across a panic")
            .push(step);
    }

    pub fn finish(&self, report: Arc<Report>) {
        *self
            .ended
            .lock()
            .expect("outcome lock is never held across a panic") = Some((Instant::now(), report));
    }

    fn ended_at(&self) -> Option<Instant> {
        let ended = self
            .ended
            .lock()
            .expect("outcome lock is never held across a panic");
        ended.as_ref().map(|(at, _)| *at)
    }

    /// The operation as `GET /operations/{id}` shows it.
    pub fn to_json(&self) -> Value {
        let steps = self
            .steps
            .lock()
            .expect("steps lock is never held across a panic")
            .clone();
        let ended = self
            .ended
            .lock()
            .expect("outcome lock is never held across a panic");
        let mut body = json!({
            "id": self.id,
            "kind": self.kind,
            "started_at": humantime::format_rfc3339_millis(self.started_at).to_string(),
            "steps": steps,
        });
        match ended.as_ref() {
            None => body["state"] = json!("running"),
            Some((_, report)) => {
                body["state"] = json!("finished");
                body["finished_at"] =
                    json!(humantime::format_rfc3339_millis(report.finished_at).to_string());
                body["duration_ms"] = json!(report.duration.as_millis() as u64);
                body["units"] = json!(report.units);
                match &report.outcome {
                    Ok(()) => body["galaxy"] = json!("online"),
                    Err(failure) => {
                        body["galaxy"] = json!("unavailable");
                        body["error"] =
                            json!({ "code": failure.code(), "message": failure.to_string() });
                    }
                }
            }
        }
        body
    }
}

/// The operations kept, newest last, bounded in number and age.
#[derive(Debug, Default)]
pub struct Operations {
    kept: Mutex<VecDeque<Arc<Operation>>>,
}

impl Operations {
    pub fn add(&self, operation: Arc<Operation>) {
        let mut kept = self
            .kept
            .lock()
            .expect("operations lock is never held across a panic");
        kept.retain(|op| op.ended_at().is_none_or(|at| at.elapsed() < MAX_AGE));
        while kept.len() >= MAX_KEPT {
            kept.pop_front();
        }
        kept.push_back(operation);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Operation>> {
        let kept = self
            .kept
            .lock()
            .expect("operations lock is never held across a panic");
        kept.iter()
            .find(|op| op.id == id && op.ended_at().is_none_or(|at| at.elapsed() < MAX_AGE))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_bounded_number() {
        let operations = Operations::default();
        for i in 0..MAX_KEPT + 5 {
            operations.add(Arc::new(Operation::new(format!("op{i}"), Kind::Restart)));
        }
        assert!(operations.get("op0").is_none(), "the oldest is forgotten");
        assert!(operations.get("op4").is_none());
        assert!(operations.get("op5").is_some());
        assert!(operations.get(&format!("op{}", MAX_KEPT + 4)).is_some());
    }

    #[test]
    fn steps_are_kept_in_order() {
        let op = Operation::new("x".to_owned(), Kind::Startup);
        op.step("first");
        op.step("second");
        let json = op.to_json();
        assert_eq!(json["state"], "running");
        assert_eq!(json["steps"][0]["step"], "first");
        assert_eq!(json["steps"][1]["step"], "second");
    }
}
