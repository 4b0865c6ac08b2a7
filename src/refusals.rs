//! Refusals of one authenticated agent, metered per second: up to
//! `audit.max_refusals_per_second` are recorded one by one; past that they are answered
//! 429 and counted into one `refusals_aggregated` record per agent per second (count,
//! first and last request id), so every refused call is still on the trail and a flood
//! cannot fill the disk.

use crate::audit::Record;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// One agent's current second.
struct Window {
    second: u64,
    count: u32,
    suppressed: u64,
    first: Option<String>,
    last: Option<String>,
    tenant: Option<String>,
}

impl Window {
    fn starting(second: u64) -> Window {
        Window {
            second,
            count: 0,
            suppressed: 0,
            first: None,
            last: None,
            tenant: None,
        }
    }
}

/// Whether a refusal gets its own record.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Record,
    /// Over the rate: answer 429 and count it into the second's aggregate.
    Aggregated,
}

/// Keyed by agent id; agents come from the configuration, so the map is bounded by it.
#[derive(Default)]
pub struct Meter(Mutex<HashMap<String, Window>>);

fn now_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Meter {
    /// Counts one refusal of `agent`. Returns the verdict and, when a past second with
    /// suppressed refusals was closed by this call, its aggregate record.
    pub fn refuse(
        &self,
        agent: &str,
        tenant: Option<&str>,
        request_id: &str,
        max_per_second: u32,
    ) -> (Verdict, Option<Record>) {
        let now = now_second();
        let mut m = self.0.lock().expect("refusal meter lock");
        let w = m
            .entry(agent.to_string())
            .or_insert_with(|| Window::starting(now));
        let mut closed = None;
        if w.second != now {
            closed = aggregate(agent, w);
            *w = Window::starting(now);
        }
        w.count = w.count.saturating_add(1);
        if w.count <= max_per_second {
            return (Verdict::Record, closed);
        }
        w.suppressed += 1;
        if w.first.is_none() {
            w.first = Some(request_id.to_string());
        }
        w.last = Some(request_id.to_string());
        w.tenant = tenant.map(str::to_string);
        (Verdict::Aggregated, closed)
    }

    /// Aggregates of every second that has ended (run each second, and at shutdown
    /// with `all`), removing idle agents so the map stays small.
    pub fn take_closed(&self, all: bool) -> Vec<Record> {
        let now = now_second();
        let mut m = self.0.lock().expect("refusal meter lock");
        let mut out = Vec::new();
        m.retain(|agent, w| {
            if w.second == now && !all {
                return true;
            }
            out.extend(aggregate(agent, w));
            false
        });
        out
    }
}

fn aggregate(agent: &str, w: &mut Window) -> Option<Record> {
    if w.suppressed == 0 {
        return None;
    }
    Some(Record {
        event: "refusals_aggregated",
        agent: Some(agent.to_string()),
        tenant: w.tenant.take(),
        decision: Some("deny".into()),
        reason: Some("refusal_rate".into()),
        status: Some(429),
        count: Some(w.suppressed),
        first_request_id: w.first.take(),
        last_request_id: w.last.take(),
        comment: Some(format!(
            "{} refusals in the second starting {} were over the per-agent limit and answered 429",
            w.suppressed, w.second
        )),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_rate_refusals_are_aggregated_and_counted() {
        let m = Meter::default();
        let mut verdicts = Vec::new();
        for i in 0..5 {
            let (v, closed) = m.refuse("bot", None, &format!("r{i}"), 2);
            assert!(closed.is_none());
            verdicts.push(v);
        }
        // Unless the second turned over mid-test, 2 recorded and 3 aggregated.
        let recorded = verdicts.iter().filter(|v| **v == Verdict::Record).count();
        assert!(recorded >= 2);
        let recs = m.take_closed(true);
        let suppressed: u64 = recs.iter().map(|r| r.count.unwrap_or(0)).sum();
        assert_eq!(recorded as u64 + suppressed, 5);
        if let Some(r) = recs.first() {
            assert_eq!(r.event, "refusals_aggregated");
            assert_eq!(r.last_request_id.as_deref(), Some("r4"));
        }
        assert!(m.take_closed(true).is_empty());
    }
}
