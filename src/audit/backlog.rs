//! Records the writer could not get onto disk yet, kept in order (bounded by
//! `audit.max_pending_bytes`) so they are written first, in the same chain, when the
//! file is writable again. Past the bound records are counted into a `gap` item that
//! takes their place in the order, so the trail shows the hole instead of hiding it.

use super::Record;
use std::collections::VecDeque;

/// What the writer owes the file: a record, or a note that records were lost here.
pub enum Item {
    Rec(Box<Record>),
    Gap(Gap),
}

/// Records dropped over the bound: how many, and the first and last request ids among
/// them (records without one, e.g. aggregates, are counted but name none).
#[derive(Default)]
pub struct Gap {
    pub count: u64,
    pub first: Option<String>,
    pub last: Option<String>,
}

impl Gap {
    pub fn record(&self) -> Record {
        Record {
            event: "gap",
            decision: Some("lost".into()),
            reason: Some("max_pending_bytes".into()),
            comment: Some(format!(
                "{} audit records were lost: the trail was unwritable and the records \
                 waiting for it exceeded audit.max_pending_bytes",
                self.count
            )),
            count: Some(self.count),
            first_request_id: self.first.clone(),
            last_request_id: self.last.clone(),
            ..Default::default()
        }
    }
}

/// What a record costs the bound: its JSON plus the line's envelope (seq, ts, node,
/// prev, hash).
pub fn cost(r: &Record) -> u64 {
    serde_json::to_vec(r).map_or(1024, |v| v.len() as u64) + 256
}

pub struct Backlog {
    items: VecDeque<(Item, u64)>,
    bytes: u64,
    max: u64,
    /// Records kept (not lost) since the outage began, for the `audit_resumed` record.
    pub kept: u64,
    /// Records lost since the outage began.
    pub lost: u64,
}

impl Backlog {
    pub fn new(max: u64) -> Backlog {
        Backlog {
            items: VecDeque::new(),
            bytes: 0,
            max,
            kept: 0,
            lost: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Keeps `r` at the back if the bound allows, else counts it into a gap there.
    pub fn push(&mut self, r: Record) {
        let c = cost(&r);
        if self.bytes + c <= self.max {
            self.bytes += c;
            self.kept += 1;
            self.items.push_back((Item::Rec(Box::new(r)), c));
            return;
        }
        self.lost += 1;
        metrics::counter!("portcullis_audit_records_lost_total").increment(1);
        let id = r.request_id;
        if !matches!(self.items.back(), Some((Item::Gap(_), _))) {
            self.items.push_back((Item::Gap(Gap::default()), 0));
        }
        if let Some((Item::Gap(g), _)) = self.items.back_mut() {
            g.count += 1;
            if id.is_some() {
                if g.first.is_none() {
                    g.first = id.clone();
                }
                g.last = id;
            }
        }
    }

    /// Puts records back at the front (written but never made durable), in order.
    /// They were accepted once: they are kept whatever the bound says.
    pub fn requeue_front(&mut self, rs: Vec<Record>) {
        for r in rs.into_iter().rev() {
            let c = cost(&r);
            self.bytes += c;
            self.kept += 1;
            self.items.push_front((Item::Rec(Box::new(r)), c));
        }
    }

    /// The oldest items, up to about `budget` bytes (at least one).
    pub fn front(&self, budget: u64) -> Vec<Record> {
        let mut out = Vec::new();
        let mut used = 0;
        for (item, c) in &self.items {
            if !out.is_empty() && used + c > budget {
                break;
            }
            used += c;
            out.push(match item {
                Item::Rec(r) => (**r).clone(),
                Item::Gap(g) => g.record(),
            });
        }
        out
    }

    /// Drops the `n` oldest items (they are on disk now).
    pub fn pop_front(&mut self, n: usize) {
        for _ in 0..n {
            if let Some((_, c)) = self.items.pop_front() {
                self.bytes -= c;
            }
        }
    }

    /// The outage is over: start counting afresh.
    pub fn reset_counts(&mut self) {
        self.kept = 0;
        self.lost = 0;
    }
}
