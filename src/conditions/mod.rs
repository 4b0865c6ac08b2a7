//! Conditions: CEL expressions over what a request says (`when:` on profile entries,
//! `when_risk:` on tool overrides). Compiled when the config loads ([`compile`]),
//! evaluated once per request before the gate ([`eval`]) against values built from the
//! request ([`context`], [`body`]); `decide` reads their outcomes and stays pure.

pub mod body;
pub mod compile;
pub mod context;
pub mod eval;

pub use compile::{Condition, Needs};
pub use eval::{Evaluated, Outcome};

use crate::classify::Risk;
use std::sync::Arc;

/// One `when_risk` entry of a tool override: when `when` holds, the request has this
/// risk (and, with `name`, this name).
#[derive(Debug)]
pub struct WhenRisk {
    pub when: Arc<Condition>,
    pub risk: Risk,
    pub name: Option<Arc<str>>,
    /// The entry does not lower the override's risk: a condition that fails at run
    /// time applies it (the safe side); one that lowers it is then not applied.
    pub raises: bool,
}

#[cfg(test)]
mod tests;
