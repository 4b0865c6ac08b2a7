//! Signals and brakes: the proxy watches each agent's outcomes — refusals, calls,
//! response bytes, upstream failures, operator denials, first calls of a tool — and
//! when a pattern crosses its threshold it raises a signal and, where configured,
//! applies a brake through the existing switches. It observes what the one gate decided
//! and never decides anything itself: a brake is a switch (pause, revoke, draft-only)
//! that the gate's ordinary precedence then enforces.
//!
//! The request path only counts ([`Signals::observe`]: one map lookup and one
//! uncontended lock, no store round trip); a request that crosses a threshold awaits the
//! signal ([`brake::fire`]) before it is answered, so the next one meets the brake. With
//! the redis store, [`aggregate`] flushes each replica's counts on a short timer and
//! fires what only the total across replicas crossed; the store's atomic claim lets
//! exactly one replica fire.

pub mod aggregate;
pub mod api;
pub mod brake;
pub mod config;
pub mod metered;
pub mod record;
pub mod window;

pub use config::{Action, Kind};

use crate::fastmap::FastMap;
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use window::Tracks;

/// After a request crossed a threshold, the same agent and kind are not evaluated again
/// on this replica for this long (the store's claim decides whether it fires; an open
/// signal is not re-claimed on every request).
const QUIET: Duration = Duration::from_secs(1);

/// One agent's counters.
#[derive(Default)]
pub struct AgentTracks(Mutex<Tracks>);

impl AgentTracks {
    pub fn lock(&self) -> MutexGuard<'_, Tracks> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every agent's counters on this replica (agents come from the config, so the map is
/// small; it is replaced whole when an agent is first seen, and read without a lock).
#[derive(Default)]
pub struct Signals {
    agents: ArcSwap<FastMap<String, Arc<AgentTracks>>>,
    insert: Mutex<()>,
}

/// What became of a request, as the signals see it.
pub enum Outcome<'a> {
    /// Refused after authentication (deny, 400, 429). `brake`: refused by a switch (an
    /// agent already stopped is not counted again).
    Refused { brake: bool },
    /// Answered (forwarded or parked): the upstream's status when it was forwarded, and
    /// the response body's length when it is known up front (otherwise it is counted
    /// as it streams: [`meter`]).
    Answered {
        upstream_status: Option<u16>,
        tool: Option<&'a Arc<str>>,
        bytes: Option<u64>,
    },
    /// The upstream failed or timed out.
    UpstreamFailed,
}

/// A threshold crossed: the evidence of a signal about to be raised.
#[derive(Debug, Clone)]
pub struct Crossing {
    pub kind: Kind,
    pub action: Action,
    pub agent: String,
    pub credential: Option<String>,
    pub request_id: Option<String>,
    pub tool: Option<String>,
    pub window: Option<Duration>,
    pub observed: f64,
    pub threshold: f64,
    pub baseline: Option<f64>,
    /// `new_tool`: how long after its first call an agent is still learning.
    pub learn_for: Duration,
    pub max_tools: u64,
}

impl Crossing {
    fn new(
        kind: Kind,
        rule: &config::Rule,
        agent: &str,
        observed: f64,
        threshold: f64,
    ) -> Crossing {
        Crossing {
            kind,
            action: rule.action,
            agent: agent.to_string(),
            credential: None,
            request_id: None,
            tool: None,
            window: None,
            observed,
            threshold,
            baseline: None,
            learn_for: rule.learn_for,
            max_tools: rule.max_tools,
        }
    }
}

/// The threshold of a spike signal: `factor` times the baseline, never less than
/// `factor` times `min_baseline`.
pub fn spike_threshold(rule: &config::Rule, baseline: f64) -> f64 {
    rule.factor * baseline.max(rule.min_baseline)
}

impl Signals {
    /// The agent's counters (created on its first request).
    pub fn tracks(&self, agent: &str) -> Arc<AgentTracks> {
        if let Some(t) = self.agents.load().get(agent) {
            return t.clone();
        }
        self.insert(agent)
    }

    fn insert(&self, agent: &str) -> Arc<AgentTracks> {
        let _g = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.agents.load();
        if let Some(t) = cur.get(agent) {
            return t.clone();
        }
        let mut next = FastMap::clone(&cur);
        let t = Arc::new(AgentTracks::default());
        next.insert(agent.to_string(), t.clone());
        self.agents.store(Arc::new(next));
        t
    }

    /// Every agent with counters, for the flusher.
    pub fn all(&self) -> Arc<FastMap<String, Arc<AgentTracks>>> {
        self.agents.load_full()
    }

    /// Counts one request's outcome for `agent`; answers a threshold it crossed.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &self,
        rules: &config::Rules,
        shared: bool,
        agent: &str,
        credential: Option<&str>,
        request_id: &str,
        o: Outcome<'_>,
    ) -> Option<Crossing> {
        if !rules.enabled {
            return None;
        }
        // The map is read in place (no reference count touched on the request path).
        let map = self.agents.load();
        let fresh;
        let t = match map.get(agent) {
            Some(t) => t,
            None => {
                fresh = self.insert(agent);
                &fresh
            }
        };
        let now_ms = crate::store::now_ms();
        let mut g = t.lock();
        let mut crossed = None;
        match o {
            Outcome::Refused { brake: true } => {}
            Outcome::Refused { brake: false } => {
                if let Some(r) = rules.on(Kind::RefusalBurst) {
                    g.note(request_id, credential);
                    g.refusals.add(r.window, now_ms, 1);
                    let n = g.refusals.estimate(now_ms, shared);
                    if n >= r.threshold {
                        let mut c = Crossing::new(
                            Kind::RefusalBurst,
                            r,
                            agent,
                            n as f64,
                            r.threshold as f64,
                        );
                        c.window = Some(r.window);
                        crossed = Some(c);
                    }
                }
            }
            Outcome::UpstreamFailed => {
                crossed = failure(rules, shared, &mut g, agent, request_id, credential)
            }
            Outcome::Answered {
                upstream_status,
                tool,
                bytes,
            } => {
                // The evidence of a spike the flusher may find.
                g.note(request_id, credential);
                if let (Some(r), Some(n)) = (rules.on(Kind::VolumeSpike), bytes) {
                    if n > 0 {
                        g.bytes.add(r.window, now_ms, n);
                    }
                }
                if let Some(r) = rules.on(Kind::RateSpike) {
                    g.calls.add(r.window, now_ms, 1);
                    if let Some(b) = g.baseline[0] {
                        let n = g.calls.estimate(now_ms, shared) as f64;
                        let thr = spike_threshold(r, b);
                        if n >= thr {
                            let mut c = Crossing::new(Kind::RateSpike, r, agent, n, thr);
                            c.window = Some(r.window);
                            c.baseline = Some(b);
                            crossed = Some(c);
                        }
                    }
                }
                match upstream_status {
                    Some(s) if s >= 500 => {
                        crossed = failure(rules, shared, &mut g, agent, request_id, credential)
                            .or(crossed)
                    }
                    Some(_) => g.failures.succeed(),
                    None => {}
                }
                if let (Some(r), Some(tool), None) = (rules.on(Kind::NewTool), tool, &crossed) {
                    let again = g.last_tool.as_ref().is_some_and(|t| Arc::ptr_eq(t, tool));
                    if !again {
                        g.last_tool = Some(tool.clone());
                    }
                    if !again && !g.tools.contains(tool) && (g.tools.len() as u64) < r.max_tools {
                        g.tools.insert(tool.clone());
                        let mut c = Crossing::new(Kind::NewTool, r, agent, 1.0, 1.0);
                        c.tool = Some(tool.to_string());
                        crossed = Some(c);
                    }
                }
            }
        }
        let mut c = crossed?;
        // New tools are checked against the store's history (which decides); the rest
        // are held quiet here while the claim is made.
        if c.kind != Kind::NewTool {
            let now = Instant::now();
            if g.quiet(c.kind, now) {
                return None;
            }
            g.hush(c.kind, QUIET);
        }
        drop(g);
        c.credential = credential.map(str::to_string);
        c.request_id = Some(request_id.to_string());
        Some(c)
    }

    /// Counts an operator's denial of one of `agent`'s parked requests.
    pub fn observe_denial(
        &self,
        rules: &config::Rules,
        shared: bool,
        agent: &str,
        credential: &str,
        request_id: &str,
    ) -> Option<Crossing> {
        let r = rules.on(Kind::ApprovalDenials)?;
        let t = self.tracks(agent);
        let now_ms = crate::store::now_ms();
        let mut g = t.lock();
        g.denials.add(r.window, now_ms, 1);
        let n = g.denials.estimate(now_ms, shared);
        if n < r.threshold || g.quiet(Kind::ApprovalDenials, Instant::now()) {
            return None;
        }
        g.hush(Kind::ApprovalDenials, QUIET);
        let mut c = Crossing::new(
            Kind::ApprovalDenials,
            r,
            agent,
            n as f64,
            r.threshold as f64,
        );
        c.window = Some(r.window);
        c.credential = Some(credential.to_string());
        c.request_id = Some(request_id.to_string());
        Some(c)
    }

    /// Ends the quiet period of `agent` and `kind` on this replica.
    pub fn unhush(&self, agent: &str, kind: Kind) {
        self.tracks(agent).lock().quiet_until[kind as usize] = None;
    }

    /// Forgets an agent's counts of `kind` on this replica (its signal was acknowledged).
    pub fn reset(&self, agent: &str, kind: Kind) {
        let t = self.tracks(agent);
        let mut g = t.lock();
        match kind {
            Kind::RefusalBurst => g.refusals.reset(),
            Kind::RateSpike => g.calls.reset(),
            Kind::VolumeSpike => g.bytes.reset(),
            Kind::ApprovalDenials => g.denials.reset(),
            Kind::UpstreamFailures => g.failures = Default::default(),
            Kind::NewTool => {}
        }
        g.quiet_until[kind as usize] = None;
    }
}

fn failure(
    rules: &config::Rules,
    shared: bool,
    g: &mut Tracks,
    agent: &str,
    request_id: &str,
    credential: Option<&str>,
) -> Option<Crossing> {
    let r = rules.on(Kind::UpstreamFailures)?;
    g.note(request_id, credential);
    g.failures.fail();
    let n = g.failures.estimate(shared);
    (n >= r.threshold).then(|| {
        Crossing::new(
            Kind::UpstreamFailures,
            r,
            agent,
            n as f64,
            r.threshold as f64,
        )
    })
}

/// The request path's one call, where it records the outcome: counts it for the
/// request's agent and answers the threshold it crossed (none for a request no agent
/// was authenticated for).
pub fn observed(
    app: &crate::app::App,
    snap: &crate::config::Snapshot,
    agent: Option<&str>,
    credential: Option<&str>,
    request_id: &str,
    o: Outcome<'_>,
) -> Option<Crossing> {
    let agent = agent?;
    let rules = snap.signals.rules(agent);
    app.signals
        .observe(rules, app.store.shared(), agent, credential, request_id, o)
}

/// Whether a refusal counts toward `refusal_burst`, and whether a switch made it.
pub fn refusal(e: &crate::error::Error) -> Option<Outcome<'static>> {
    use crate::error::Error;
    match e {
        Error::BadGateway { .. } | Error::GatewayTimeout { .. } => Some(Outcome::UpstreamFailed),
        _ if matches!(e.status().as_u16(), 400 | 403 | 422 | 429) => Some(Outcome::Refused {
            brake: matches!(e.reason(), "paused" | "agent_disabled" | "draft_only"),
        }),
        _ => None,
    }
}

/// Raises what a request crossed before it is answered (so the next request meets the
/// brake); a possible new tool is checked against the store's history in the background.
pub async fn settle(app: &Arc<crate::app::App>, c: Option<Crossing>) {
    match c {
        None => {}
        Some(c) if c.kind == Kind::NewTool => {
            let app = app.clone();
            tokio::spawn(async move { brake::fire(&app, c).await });
        }
        Some(c) => {
            brake::fire(app, c).await;
        }
    }
}

/// The response body, counted for `volume_spike` as it streams when it is on for
/// `agent` and the body's length was not known up front.
pub fn meter(
    app: &crate::app::App,
    snap: &crate::config::Snapshot,
    agent: Option<&str>,
    resp: http::Response<crate::body::Body>,
) -> http::Response<crate::body::Body> {
    let Some(agent) = agent else { return resp };
    if http_body::Body::size_hint(resp.body()).exact().is_some() {
        return resp;
    }
    let Some(r) = snap.signals.rules(agent).on(Kind::VolumeSpike) else {
        return resp;
    };
    let (tracks, window) = (app.signals.tracks(agent), r.window);
    resp.map(|b| metered::wrap(b, tracks, window))
}
