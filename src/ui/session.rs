//! Operator page sessions: what a sign-in leaves on this node (the operator's name, the
//! SHA-256 of the token they signed in with — never the token — the roles they had, a
//! CSRF token), and the check every request makes against the live `operators:`.

use crate::config::Operator;
use crate::identity::random_hex;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const TTL: Duration = Duration::from_secs(8 * 3600);
const MAX_SESSIONS: usize = 10_000;

#[derive(Clone)]
pub struct Session {
    pub operator: String,
    /// The roles at sign-in: losing any of them ends the session.
    pub roles: Vec<String>,
    pub token_sha256: [u8; 32],
    pub csrf: String,
    expires: Instant,
}

/// Sessions of this node (a load balancer in front of several replicas needs sticky
/// sessions for the page; the API and CLI need nothing).
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

impl Sessions {
    /// A new session; returns its id (the cookie's value).
    pub fn create(&self, operator: String, roles: Vec<String>, token_sha256: [u8; 32]) -> String {
        let id = random_hex(32);
        let mut m = self.0.lock().expect("sessions lock");
        let now = Instant::now();
        m.retain(|_, s| s.expires > now);
        if m.len() >= MAX_SESSIONS {
            m.clear();
        }
        m.insert(
            id.clone(),
            Session {
                operator,
                roles,
                token_sha256,
                csrf: random_hex(16),
                expires: now + TTL,
            },
        );
        id
    }

    /// A session that has not expired.
    pub fn get(&self, id: &str) -> Option<Session> {
        let m = self.0.lock().expect("sessions lock");
        m.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    pub fn remove(&self, id: &str) {
        self.0.lock().expect("sessions lock").remove(id);
    }
}

/// The roles `s` holds under the live `operators`, or `None` when the session must end:
/// no operator of that name has that token hash any more (removed or re-keyed), or the
/// operator lost a role they signed in with or the viewer role (demoted). Hashes are
/// compared in constant time.
pub fn live_roles(operators: &[Operator], s: &Session) -> Option<Vec<String>> {
    let op = operators.iter().find(|o| {
        o.name == s.operator
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                &o.token_sha256[..],
                &s.token_sha256[..],
            ))
    })?;
    let holds = |r: &str| op.roles.iter().any(|x| x == r);
    (holds("viewer") && s.roles.iter().all(|r| holds(r))).then(|| op.roles.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, hash: u8, roles: &[&str]) -> Operator {
        Operator {
            name: name.into(),
            token_sha256: [hash; 32],
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn sessions_follow_the_live_operators() {
        let sessions = Sessions::default();
        let id = sessions.create(
            "alice".into(),
            vec!["viewer".into(), "approver".into()],
            [7; 32],
        );
        let s = sessions.get(&id).unwrap();
        let roles = |ops: &[Operator]| live_roles(ops, &s);
        assert_eq!(
            roles(&[op("alice", 7, &["viewer", "approver"])])
                .unwrap()
                .len(),
            2
        );
        // Promoted: the live roles count.
        assert_eq!(
            roles(&[op("alice", 7, &["viewer", "approver", "admin"])])
                .unwrap()
                .len(),
            3
        );
        assert_eq!(roles(&[]), None, "removed");
        assert_eq!(
            roles(&[op("alice", 8, &["viewer", "approver"])]),
            None,
            "re-keyed"
        );
        assert_eq!(roles(&[op("alice", 7, &["viewer"])]), None, "demoted");
        assert_eq!(
            roles(&[op("bob", 7, &["viewer", "approver"])]),
            None,
            "renamed"
        );
        sessions.remove(&id);
        assert!(sessions.get(&id).is_none());
    }
}
