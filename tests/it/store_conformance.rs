//! One conformance suite for `portcullis::store::Store`, run against both backends:
//! `embedded` (a redb file in a temp dir) and `redis` (a real `redis-server` on an
//! ephemeral port, a random key prefix per store). Every `check_*` function is
//! backend-agnostic; the `conformance!` macro instantiates it once per backend.

use crate::support::redis::{random_prefix, RedisServer};
use portcullis::classify::Risk;
use portcullis::config::{RedisSettings, StoreConfig, StoreKind};
use portcullis::store::TimeIndex::{Decided, Expiry};
use portcullis::store::{now_ms, Event, Scope, Store, SwitchChange, SwitchState, TokenRecord};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Bound for anything asynchronous the store does on its own (feeds, events).
const BOUND: Duration = Duration::from_secs(5);

/// Where fresh stores come from: one backing (a temp dir, or one redis-server) per test.
enum Backend {
    Embedded {
        dir: tempfile::TempDir,
        n: AtomicUsize,
    },
    Redis {
        server: RedisServer,
    },
}

impl Backend {
    fn embedded() -> Backend {
        Backend::Embedded {
            dir: tempfile::tempdir().expect("tempdir"),
            n: AtomicUsize::new(0),
        }
    }

    fn redis() -> Backend {
        Backend::Redis {
            server: RedisServer::start(),
        }
    }

    /// The config of a store nobody has used yet.
    fn fresh_config(&self) -> StoreConfig {
        let kind = match self {
            Backend::Embedded { dir, n } => {
                let i = n.fetch_add(1, Ordering::SeqCst);
                StoreKind::Embedded(dir.path().join(format!("data/store-{i}.redb")))
            }
            Backend::Redis { server } => StoreKind::Redis(Box::new(RedisSettings::from_url(
                server.url(),
                random_prefix(),
            ))),
        };
        StoreConfig { kind, pepper: None }
    }

    /// A fresh, empty store whose invalidation feed is live.
    async fn fresh(&self) -> Store {
        open_live(&self.fresh_config(), "node-a").await
    }
}

async fn open_live(cfg: &StoreConfig, node: &str) -> Store {
    let s = Store::open(cfg, node)
        .await
        .unwrap_or_else(|e| panic!("Store::open({:?}): {e}", cfg.kind));
    wait_live(&s).await;
    s
}

async fn wait_live(s: &Store) {
    crate::common::eventually("the store's invalidation feed live", BOUND, || async {
        s.feed_live().then_some(()).ok_or("not live".to_string())
    })
    .await
}

fn record(id: &str, agent: &str, created_at_ms: u64) -> TokenRecord {
    TokenRecord {
        id: id.to_string(),
        agent: agent.to_string(),
        hash: format!("{:0>64}", id),
        created_at_ms,
        expires_at_ms: created_at_ms + 3_600_000,
        tools: None,
        max_risk: None,
        max_calls: None,
        revoked: false,
        issued_by: "tester".into(),
    }
}

/// Waits (bounded) for an event satisfying `want`, skipping any other event.
async fn expect_event(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    what: &str,
    want: impl Fn(&Event) -> bool,
) {
    let end = Instant::now() + BOUND;
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(ev)) if want(&ev) => return,
            Ok(Ok(ev)) => seen.push(ev),
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(e)) => panic!("event feed closed while waiting for {what}: {e}"),
            Err(_) => panic!("no {what} event within {BOUND:?}; saw {seen:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------

async fn check_token_round_trip(b: &Backend) {
    let s = b.fresh().await;
    assert!(
        s.list_tokens().await.unwrap().is_empty(),
        "a fresh store lists no token"
    );
    let now = now_ms();
    let plain = record("aaaa0001", "support-bot", now);
    let narrowed = TokenRecord {
        tools: Some(vec!["tickets.get".into(), "tickets.comments.*".into()]),
        max_risk: Some(Risk::Low),
        max_calls: Some(7),
        ..record("aaaa0002", "ops-bot", now + 1)
    };
    let third = record("aaaa0003", "support-bot", now + 2);
    // Inserted out of order: `list_tokens` orders by creation.
    for t in [&third, &plain, &narrowed] {
        s.put_token(t).await.unwrap();
    }
    assert_eq!(
        s.get_token("aaaa0001").await.unwrap().as_ref(),
        Some(&plain)
    );
    assert_eq!(
        s.get_token("aaaa0002").await.unwrap().as_ref(),
        Some(&narrowed)
    );
    assert_eq!(
        s.get_token("aaaa0003").await.unwrap().as_ref(),
        Some(&third)
    );
    let listed = s.list_tokens().await.unwrap();
    assert_eq!(listed, vec![plain.clone(), narrowed.clone(), third.clone()]);

    // A put with the same id replaces the record.
    let replaced = TokenRecord {
        expires_at_ms: now + 5,
        ..plain.clone()
    };
    s.put_token(&replaced).await.unwrap();
    assert_eq!(s.get_token("aaaa0001").await.unwrap(), Some(replaced));
    assert_eq!(
        s.list_tokens().await.unwrap().len(),
        3,
        "no duplicate on replace"
    );
}

async fn check_unknown_token(b: &Backend) {
    let s = b.fresh().await;
    s.put_token(&record("bbbb0001", "a", now_ms()))
        .await
        .unwrap();
    assert_eq!(s.get_token("bbbb0002").await.unwrap(), None);
    assert_eq!(s.get_token("").await.unwrap(), None);
    assert_eq!(
        s.get_token("bbbb000").await.unwrap(),
        None,
        "no prefix match"
    );
}

async fn check_revoke(b: &Backend) {
    let s = b.fresh().await;
    let now = now_ms();
    s.put_token(&record("cccc0001", "a", now)).await.unwrap();
    s.put_token(&record("cccc0002", "a", now + 1))
        .await
        .unwrap();
    assert!(
        s.revoke_token("cccc0001").await.unwrap(),
        "revoking a known token"
    );
    let t = s.get_token("cccc0001").await.unwrap().expect("still there");
    assert!(t.revoked, "revoked token reads back revoked");
    let other = s.get_token("cccc0002").await.unwrap().expect("other token");
    assert!(!other.revoked, "revoking one token leaves others alone");
    let listed = s.list_tokens().await.unwrap();
    let states: Vec<(String, bool)> = listed.iter().map(|t| (t.id.clone(), t.revoked)).collect();
    assert_eq!(
        states,
        vec![("cccc0001".into(), true), ("cccc0002".into(), false)],
        "list shows the revocation"
    );
    assert!(
        s.revoke_token("cccc0001").await.unwrap(),
        "revoking twice still names a known token"
    );
    assert!(
        !s.revoke_token("cccc0009").await.unwrap(),
        "unknown id → false"
    );
    assert_eq!(
        s.get_token("cccc0009").await.unwrap(),
        None,
        "revoking an unknown id creates nothing"
    );
}

async fn check_spend_budget_concurrent(b: &Backend) {
    let s = b.fresh().await;
    let id = "dddd0001";
    s.put_token(&TokenRecord {
        max_calls: Some(10),
        ..record(id, "a", now_ms())
    })
    .await
    .unwrap();
    let spends = (0..50).map(|_| s.spend_call(id, 10));
    let results = futures_util::future::join_all(spends).await;
    let ok = results
        .iter()
        .filter(|r| *r.as_ref().expect("spend_call"))
        .count();
    assert_eq!(ok, 10, "exactly max=10 of 50 concurrent spends succeed");
    assert!(
        !s.spend_call(id, 10).await.unwrap(),
        "spent budget stays spent"
    );
    // Budgets are per token.
    let other = "dddd0002";
    assert!(s.spend_call(other, 1).await.unwrap());
    assert!(!s.spend_call(other, 1).await.unwrap());
}

async fn check_spend_budget_parallel_tasks(b: &Backend) {
    // Same property with real parallelism: spends from many tasks on a multi-thread runtime.
    let s = std::sync::Arc::new(b.fresh().await);
    let id = "dddd0003";
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let s = s.clone();
        tasks.spawn(async move { s.spend_call(id, 10).await.expect("spend_call") });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        if r.expect("task") {
            ok += 1;
        }
    }
    assert_eq!(ok, 10, "exactly 10 of 50 parallel spends succeed");
}

/// How one switch change moves the expected state.
type Edit = Box<dyn Fn(&mut SwitchState)>;

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn check_switches(b: &Backend) {
    let s = b.fresh().await;
    assert_eq!(
        s.switches().await.unwrap(),
        SwitchState::default(),
        "fresh store: nothing paused"
    );

    let mut want = SwitchState::default();
    let steps: Vec<(SwitchChange, Edit)> = vec![
        (
            SwitchChange::Pause(Scope::All, String::new()),
            Box::new(|w| w.paused_all = true),
        ),
        (
            SwitchChange::Pause(Scope::Agent, "support-bot".into()),
            Box::new(|w| w.paused_agents = set(&["support-bot"])),
        ),
        (
            SwitchChange::Pause(Scope::Agent, "ops-bot".into()),
            Box::new(|w| w.paused_agents = set(&["ops-bot", "support-bot"])),
        ),
        // Pausing twice is idempotent.
        (
            SwitchChange::Pause(Scope::Agent, "ops-bot".into()),
            Box::new(|_| {}),
        ),
        (
            SwitchChange::Pause(Scope::Tool, "tickets.*".into()),
            Box::new(|w| w.paused_tools = set(&["tickets.*"])),
        ),
        (
            SwitchChange::Pause(Scope::Tenant, "acme".into()),
            Box::new(|w| w.paused_tenants = set(&["acme"])),
        ),
        (
            SwitchChange::Disable("support-bot".into()),
            Box::new(|w| w.disabled_agents = set(&["support-bot"])),
        ),
        (
            SwitchChange::DraftOnly(true),
            Box::new(|w| w.draft_only = true),
        ),
        // Now undo each, one at a time.
        (
            SwitchChange::Resume(Scope::All, String::new()),
            Box::new(|w| w.paused_all = false),
        ),
        (
            SwitchChange::Resume(Scope::Agent, "support-bot".into()),
            Box::new(|w| w.paused_agents = set(&["ops-bot"])),
        ),
        // Resuming something not paused changes nothing.
        (
            SwitchChange::Resume(Scope::Agent, "nobody".into()),
            Box::new(|_| {}),
        ),
        (
            SwitchChange::Resume(Scope::Agent, "ops-bot".into()),
            Box::new(|w| w.paused_agents = set(&[])),
        ),
        (
            SwitchChange::Resume(Scope::Tool, "tickets.*".into()),
            Box::new(|w| w.paused_tools = set(&[])),
        ),
        (
            SwitchChange::Resume(Scope::Tenant, "acme".into()),
            Box::new(|w| w.paused_tenants = set(&[])),
        ),
        (
            SwitchChange::Enable("support-bot".into()),
            Box::new(|w| w.disabled_agents = set(&[])),
        ),
        (
            SwitchChange::DraftOnly(false),
            Box::new(|w| w.draft_only = false),
        ),
    ];
    for (change, edit) in steps {
        s.apply(&change)
            .await
            .unwrap_or_else(|e| panic!("apply {change:?}: {e}"));
        edit(&mut want);
        assert_eq!(s.switches().await.unwrap(), want, "after {change:?}");
    }
    assert_eq!(
        want,
        SwitchState::default(),
        "the steps end where they began"
    );
}

async fn check_events(b: &Backend) {
    let s = b.fresh().await;
    let mut rx = s.events();
    s.put_token(&record("eeee0001", "a", now_ms()))
        .await
        .unwrap();
    expect_event(&mut rx, "Token(eeee0001) after put", |e| {
        *e == Event::Token("eeee0001".into())
    })
    .await;
    s.revoke_token("eeee0001").await.unwrap();
    expect_event(&mut rx, "Token(eeee0001) after revoke", |e| {
        *e == Event::Token("eeee0001".into())
    })
    .await;
    for change in [
        SwitchChange::Pause(Scope::All, String::new()),
        SwitchChange::Pause(Scope::Tool, "x.*".into()),
        SwitchChange::Disable("a".into()),
        SwitchChange::Enable("a".into()),
        SwitchChange::DraftOnly(true),
        SwitchChange::Resume(Scope::All, String::new()),
    ] {
        s.apply(&change).await.unwrap();
        expect_event(&mut rx, &format!("Switches after {change:?}"), |e| {
            *e == Event::Switches
        })
        .await;
    }
    // An approval is announced by its changes, not by its creation: nobody can be
    // waiting on an id that has not been answered yet. The token notice published after
    // the creation arrives with no approval notice before it.
    assert!(s
        .create_approval("ev1", "a", "parking", b"rec-ev1", b"", 5, u64::MAX)
        .await
        .unwrap());
    s.put_token(&record("eeee0002", "a", now_ms()))
        .await
        .unwrap();
    expect_event(&mut rx, "Token(eeee0002) after a creation", |e| match e {
        Event::Approval(id) => panic!("creating approval {id} published a change notice"),
        e => *e == Event::Token("eeee0002".into()),
    })
    .await;
    assert!(s
        .cas_approval(portcullis::store::Cas {
            id: "ev1",
            agent: "a",
            old: b"rec-ev1",
            new: b"rec-ev1-pending",
            old_state: "parking",
            new_state: "pending",
            result: None,
        })
        .await
        .unwrap());
    expect_event(&mut rx, "Approval(ev1) after parking -> pending", |e| {
        *e == Event::Approval("ev1".into())
    })
    .await;
}

async fn check_schema_recorded(b: &Backend) {
    // Opening a fresh store twice (the second open reads the marker the first wrote).
    let cfg = b.fresh_config();
    {
        let s = open_live(&cfg, "node-a").await;
        s.put_token(&record("ffff0001", "a", now_ms()))
            .await
            .unwrap();
    }
    let s = open_live(&cfg, "node-b").await;
    assert!(
        s.get_token("ffff0001").await.unwrap().is_some(),
        "a second open of the same store sees its data"
    );
}

/// Approval records: the per-agent quota is enforced atomically at creation, a
/// compare-and-set has exactly one winner, the per-state index follows each transition,
/// the result is stored in the same step, and delete removes everything.
async fn check_approvals(b: &Backend) {
    use portcullis::store::Cas;
    let s = b.fresh().await;
    assert!(s
        .create_approval("a1", "bot", "pending", b"rec-1", b"body-1", 2, 1_000)
        .await
        .unwrap());
    assert!(s
        .create_approval("a2", "bot", "pending", b"rec-2", b"", 2, 1_000)
        .await
        .unwrap());
    assert!(
        !s.create_approval("a3", "bot", "pending", b"rec-3", b"", 2, 1_000)
            .await
            .unwrap(),
        "quota of 2"
    );
    assert!(
        s.create_approval("b1", "other", "pending", b"rec-b", b"", 2, 1_000)
            .await
            .unwrap(),
        "the quota is per agent"
    );
    assert_eq!(s.get_approval("a3").await.unwrap(), None);
    assert_eq!(
        s.get_approval_body("a1").await.unwrap().as_deref(),
        Some(&b"body-1"[..])
    );
    assert_eq!(s.list_approvals(Some("pending")).await.unwrap().len(), 3);

    // 20 racing compare-and-sets from the same old value: exactly one wins.
    let wins = futures_util::future::join_all((0..20).map(|i| {
        let s = &s;
        async move {
            let new = format!("rec-1-approved-{i}");
            s.cas_approval(Cas {
                id: "a1",
                agent: "bot",
                old: b"rec-1",
                new: new.as_bytes(),
                old_state: "pending",
                new_state: "approved",
                result: None,
            })
            .await
            .unwrap()
        }
    }))
    .await;
    assert_eq!(wins.iter().filter(|w| **w).count(), 1);
    let cur = s.get_approval("a1").await.unwrap().unwrap();
    assert!(cur.starts_with(b"rec-1-approved-"));
    assert_eq!(s.list_approvals(Some("pending")).await.unwrap().len(), 2);
    assert_eq!(
        s.list_approvals(Some("approved")).await.unwrap(),
        vec![cur.clone()]
    );
    // Leaving `pending` frees the agent's quota slot.
    assert!(s
        .create_approval("a3", "bot", "pending", b"rec-3", b"", 2, 1_000)
        .await
        .unwrap());

    // A stale old value changes nothing; the right one stores the result with it.
    assert!(!s
        .cas_approval(Cas {
            id: "a1",
            agent: "bot",
            old: b"rec-1",
            new: b"x",
            old_state: "approved",
            new_state: "executed",
            result: Some(b"r")
        })
        .await
        .unwrap());
    assert_eq!(s.get_approval_result("a1").await.unwrap(), None);
    assert!(s
        .cas_approval(Cas {
            id: "a1",
            agent: "bot",
            old: &cur,
            new: b"done",
            old_state: "approved",
            new_state: "executed",
            result: Some(b"result")
        })
        .await
        .unwrap());
    assert_eq!(
        s.get_approval_result("a1").await.unwrap().as_deref(),
        Some(&b"result"[..])
    );
    assert_eq!(
        s.list_approvals(Some("executed")).await.unwrap(),
        vec![b"done".to_vec()]
    );
    assert!(s.list_approvals(Some("approved")).await.unwrap().is_empty());
    assert_eq!(s.list_approvals(None).await.unwrap().len(), 4);

    s.delete_approval("a1", "bot", "executed").await.unwrap();
    assert_eq!(s.get_approval("a1").await.unwrap(), None);
    assert_eq!(s.get_approval_body("a1").await.unwrap(), None);
    assert_eq!(s.get_approval_result("a1").await.unwrap(), None);
    assert!(s.list_approvals(Some("executed")).await.unwrap().is_empty());
    assert_eq!(s.list_approvals(None).await.unwrap().len(), 3);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded_store {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name(&super::Backend::embedded()).await;
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name(&super::Backend::redis()).await;
                }
            )*
        }
    };
}

/// The expiry index: entries come back once, by due time, only when due; a record that
/// is gone is skipped; `track_approval` re-enters one; deleting a pending record frees the
/// agent's quota slot like leaving `pending` does.
async fn check_expiry_index(b: &Backend) {
    let s = b.fresh().await;
    for (id, exp) in [("x1", 100), ("x2", 200), ("x3", 300)] {
        let rec = format!("rec-{id}");
        assert!(s
            .create_approval(id, "bot", "pending", rec.as_bytes(), b"", 3, exp)
            .await
            .unwrap());
    }
    assert!(
        !s.create_approval("x9", "bot", "pending", b"rec-x9", b"", 3, 900)
            .await
            .unwrap(),
        "quota of 3"
    );
    assert!(s
        .take_due_approvals(Expiry, 99, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.take_due_approvals(Expiry, 200, 10).await.unwrap(),
        vec![b"rec-x1".to_vec(), b"rec-x2".to_vec()],
        "due by 200, soonest first"
    );
    assert!(
        s.take_due_approvals(Expiry, 200, 10)
            .await
            .unwrap()
            .is_empty(),
        "an entry is taken once"
    );
    s.track_approval(Expiry, "x1", 250).await.unwrap();
    s.track_approval(Expiry, "x1", 250).await.unwrap();
    assert_eq!(
        s.take_due_approvals(Expiry, 1_000, 1).await.unwrap(),
        vec![b"rec-x1".to_vec()],
        "re-entered once, and the limit holds"
    );
    s.delete_approval("x3", "bot", "pending").await.unwrap();
    assert!(
        s.take_due_approvals(Expiry, 1_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "a deleted record is skipped"
    );
    assert!(
        s.create_approval("x4", "bot", "pending", b"rec-x4", b"", 3, 400)
            .await
            .unwrap(),
        "deleting a pending record freed its quota slot"
    );
    assert!(!s
        .create_approval("x5", "bot", "pending", b"rec-x5", b"", 3, 400)
        .await
        .unwrap());
}

/// The decided index (retention) is separate from the expiry index: entries in one never
/// come out of the other; it answers by time like the expiry index.
async fn check_decided_index(b: &Backend) {
    let s = b.fresh().await;
    assert!(s
        .create_approval("d1", "bot", "pending", b"rec-d1", b"", 5, 10_000)
        .await
        .unwrap());
    assert!(s
        .create_approval("d2", "bot", "pending", b"rec-d2", b"", 5, 10_000)
        .await
        .unwrap());
    s.track_approval(Decided, "d1", 50).await.unwrap();
    s.track_approval(Decided, "d2", 70).await.unwrap();
    assert!(
        s.take_due_approvals(Decided, 49, 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing decided by 49"
    );
    assert_eq!(
        s.take_due_approvals(Decided, 60, 10).await.unwrap(),
        vec![b"rec-d1".to_vec()]
    );
    assert!(
        s.take_due_approvals(Expiry, 5_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "the expiry index holds only the creations' expiry times"
    );
    assert_eq!(
        s.take_due_approvals(Decided, 1_000, 10).await.unwrap(),
        vec![b"rec-d2".to_vec()]
    );
    assert_eq!(
        s.take_due_approvals(Expiry, 10_000, 10).await.unwrap(),
        vec![b"rec-d1".to_vec(), b"rec-d2".to_vec()],
        "taking from the decided index left the expiry entries alone"
    );
}

conformance!(
    check_decided_index,
    check_expiry_index,
    check_token_round_trip,
    check_unknown_token,
    check_revoke,
    check_spend_budget_concurrent,
    check_spend_budget_parallel_tasks,
    check_switches,
    check_events,
    check_schema_recorded,
    check_approvals,
);

// ---------------------------------------------------------------------------------------
// Backend-specific properties
// ---------------------------------------------------------------------------------------

/// The embedded store survives a close and reopen of its file: tokens (with revocation),
/// spent budgets and switches.
#[tokio::test(flavor = "multi_thread")]
async fn embedded_reopen_keeps_tokens_switches_and_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("data/p.redb");
    let cfg = StoreConfig {
        kind: StoreKind::Embedded(path.clone()),
        pepper: None,
    };
    let now = now_ms();
    let kept = record("11110001", "support-bot", now);
    {
        let s = open_live(&cfg, "node").await;
        s.put_token(&kept).await.unwrap();
        s.put_token(&record("11110002", "support-bot", now + 1))
            .await
            .unwrap();
        assert!(s.revoke_token("11110002").await.unwrap());
        assert!(s.spend_call("11110001", 2).await.unwrap());
        for c in [
            SwitchChange::Pause(Scope::Tool, "tickets.delete".into()),
            SwitchChange::Pause(Scope::Tenant, "acme".into()),
            SwitchChange::Disable("ops-bot".into()),
            SwitchChange::DraftOnly(true),
        ] {
            s.apply(&c).await.unwrap();
        }
        // `s` is dropped here: the file is closed.
    }
    assert!(path.exists(), "the redb file is where the config put it");
    let s = open_live(&cfg, "node").await;
    assert_eq!(s.get_token("11110001").await.unwrap(), Some(kept));
    assert!(
        s.get_token("11110002")
            .await
            .unwrap()
            .expect("kept")
            .revoked,
        "revocation survives"
    );
    assert_eq!(s.list_tokens().await.unwrap().len(), 2);
    assert!(
        s.spend_call("11110001", 2).await.unwrap(),
        "one of two calls was left"
    );
    assert!(
        !s.spend_call("11110001", 2).await.unwrap(),
        "the spent call was remembered"
    );
    let want = SwitchState {
        paused_tools: set(&["tickets.delete"]),
        paused_tenants: set(&["acme"]),
        disabled_agents: set(&["ops-bot"]),
        draft_only: true,
        ..SwitchState::default()
    };
    assert_eq!(s.switches().await.unwrap(), want, "switches survive");
}

/// A redb file whose schema marker is newer than this build is refused at open.
/// (Written with redb directly, in the `meta` table `schema` key the backend keeps.)
#[tokio::test(flavor = "multi_thread")]
async fn embedded_refuses_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.redb");
    let cfg = StoreConfig {
        kind: StoreKind::Embedded(path.clone()),
        pepper: None,
    };
    // A store this build wrote opens again...
    drop(open_live(&cfg, "node").await);
    drop(open_live(&cfg, "node").await);
    // ...but not once a newer schema has marked it.
    {
        const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
        use redb::ReadableTable;
        let db = redb::Database::create(&path).expect("open redb directly");
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(META).unwrap();
            let old = t.get("schema").unwrap().map(|g| g.value());
            assert_eq!(
                old,
                Some(portcullis::store::SCHEMA_VERSION),
                "the store records its schema version under meta/schema"
            );
            t.insert("schema", 99u64).unwrap();
        }
        tx.commit().unwrap();
    }
    match Store::open(&cfg, "node").await {
        Ok(_) => panic!("a store written by schema 99 was opened"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("99"),
                "the refusal names the schema found: {msg}"
            );
        }
    }
}

/// A redis store marked with a newer schema (`<prefix>schema` = 99) is refused; the
/// marker this build writes is its own version.
#[tokio::test(flavor = "multi_thread")]
async fn redis_refuses_newer_schema() {
    let server = RedisServer::start();
    let prefix = random_prefix();
    let cfg = StoreConfig {
        kind: StoreKind::Redis(Box::new(RedisSettings::from_url(
            server.url(),
            prefix.clone(),
        ))),
        pepper: None,
    };
    drop(open_live(&cfg, "node").await);
    let mut c = server.conn();
    let marker: u64 = redis::cmd("GET")
        .arg(format!("{prefix}schema"))
        .query(&mut c)
        .expect("schema marker written");
    assert_eq!(marker, portcullis::store::SCHEMA_VERSION);

    let other = random_prefix();
    let _: () = redis::cmd("SET")
        .arg(format!("{other}schema"))
        .arg(99)
        .query(&mut c)
        .unwrap();
    let newer = StoreConfig {
        kind: StoreKind::Redis(Box::new(RedisSettings::from_url(
            server.url(),
            other.clone(),
        ))),
        pepper: None,
    };
    match Store::open(&newer, "node").await {
        Ok(_) => panic!("a redis store written by schema 99 was opened"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("99"),
                "the refusal names the schema found: {msg}"
            );
        }
    }
    let after: u64 = redis::cmd("GET")
        .arg(format!("{other}schema"))
        .query(&mut c)
        .unwrap();
    assert_eq!(
        after, 99,
        "a refused open does not rewrite the newer marker"
    );
}

/// Two redis stores with the same prefix (two replicas): a change on one is visible and
/// announced on the other, and they share one call budget.
#[tokio::test(flavor = "multi_thread")]
async fn redis_two_nodes_share_state_and_events() {
    let server = RedisServer::start();
    let cfg = StoreConfig {
        kind: StoreKind::Redis(Box::new(RedisSettings::from_url(
            server.url(),
            random_prefix(),
        ))),
        pepper: None,
    };
    let a = open_live(&cfg, "node-a").await;
    let b = open_live(&cfg, "node-b").await;
    let mut rx_b = b.events();

    a.put_token(&record("22220001", "bot", now_ms()))
        .await
        .unwrap();
    expect_event(&mut rx_b, "Token on B after put on A", |e| {
        *e == Event::Token("22220001".into())
    })
    .await;
    assert!(b.get_token("22220001").await.unwrap().is_some());

    a.revoke_token("22220001").await.unwrap();
    expect_event(&mut rx_b, "Token on B after revoke on A", |e| {
        *e == Event::Token("22220001".into())
    })
    .await;
    assert!(b.get_token("22220001").await.unwrap().unwrap().revoked);

    a.apply(&SwitchChange::Pause(Scope::All, String::new()))
        .await
        .unwrap();
    expect_event(&mut rx_b, "Switches on B after pause on A", |e| {
        *e == Event::Switches
    })
    .await;
    assert!(b.switches().await.unwrap().paused_all);

    // One budget across both nodes.
    let spends = (0..40).map(|i| {
        if i % 2 == 0 {
            a.spend_call("22220001", 7)
        } else {
            b.spend_call("22220001", 7)
        }
    });
    let ok = futures_util::future::join_all(spends)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(ok, 7, "exactly max=7 of 40 spends across two nodes succeed");
}

/// With redis down, store calls fail (they neither hang nor answer from nowhere) and the
/// feed stops being live; once redis is back (AOF), the same store object works again
/// and the data written before is there.
#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_fails_closed_and_recovers() {
    let mut server = RedisServer::start_aof();
    let cfg = StoreConfig {
        kind: StoreKind::Redis(Box::new(RedisSettings::from_url(
            server.url(),
            random_prefix(),
        ))),
        pepper: None,
    };
    let s = open_live(&cfg, "node").await;
    s.put_token(&record("33330001", "bot", now_ms()))
        .await
        .unwrap();
    s.apply(&SwitchChange::Disable("bot".into())).await.unwrap();

    server.kill();
    let r = tokio::time::timeout(BOUND, s.get_token("33330001")).await;
    match r {
        Err(_) => panic!("get_token hung for {BOUND:?} with redis down"),
        Ok(Ok(v)) => panic!("get_token answered {v:?} with redis down"),
        Ok(Err(_)) => {}
    }
    assert!(
        tokio::time::timeout(BOUND, s.switches())
            .await
            .expect("switches() hung")
            .is_err(),
        "switches() fails with redis down"
    );
    crate::common::eventually("the feed down after redis died", BOUND, || async {
        (!s.feed_live())
            .then_some(())
            .ok_or("still live".to_string())
    })
    .await;

    server.restart();
    let tok = crate::common::eventually(
        "the store recovers after redis comes back",
        Duration::from_secs(10),
        || async {
            match s.get_token("33330001").await {
                Ok(Some(t)) => Ok(t),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(tok.id, "33330001", "token survived the redis restart (AOF)");
    assert_eq!(s.switches().await.unwrap().disabled_agents, set(&["bot"]));
    wait_live(&s).await;
}
