//! Parks being read per agent: a bound on how many request bodies one agent can have
//! in memory at once while they are parked (each up to `max_parked_body_bytes`).

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct Parking(Mutex<HashMap<String, usize>>);

/// Holds one slot; dropping it frees the slot (and the agent's entry at zero, so the
/// map holds only agents parking right now).
pub struct Slot<'a> {
    parking: &'a Parking,
    agent: String,
}

impl Parking {
    /// A slot for `agent`, or `None` if it already has `max`
    /// (`limits.max_concurrent_parks_per_agent`).
    pub fn enter(&self, agent: &str, max: usize) -> Option<Slot<'_>> {
        let mut m = self.0.lock().expect("parking lock");
        let n = m.entry(agent.to_string()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            parking: self,
            agent: agent.to_string(),
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut m = self.parking.0.lock().expect("parking lock");
        if let Some(n) = m.get_mut(&self.agent) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.agent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_agent_and_freed_on_drop() {
        let p = Parking::default();
        let held: Vec<_> = (0..4).map(|_| p.enter("a", 4).unwrap()).collect();
        assert!(p.enter("a", 4).is_none());
        assert!(p.enter("b", 4).is_some());
        drop(held);
        assert!(p.enter("a", 4).is_some());
        assert!(p.0.lock().unwrap().is_empty());
    }
}
