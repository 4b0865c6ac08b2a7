//! Issue 12 item 1: the audit trail on a full disk (a real tmpfs filled to the last
//! byte). While the trail cannot be written nothing is forwarded (503
//! `audit_unavailable`), `/readyz` stays 503 from the first failed write until the
//! records kept meanwhile are written (no flapping), every request that was answered 200
//! has its record once space returns, in one unbroken chain, and records past
//! `audit.max_pending_bytes` leave one `gap` record naming how many and which.

use crate::common::*;
use crate::support::audit::{chain_files, out_text, records_of, scrape, verify};
use crate::support::faults::{report, Tally, Tmpfs};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long anything here may take to happen (recovery, records appearing).
const BOUND: Duration = Duration::from_secs(5);
/// How long requests keep coming while the disk is full.
const OUTAGE: Duration = Duration::from_millis(1500);

/// A config whose audit trail lives at `audit` (with `audit_extra` keys), one route
/// `/api` to `up`, everything allowed for `bot`. `fsync: always`: a failed write rolls
/// the file back to its last fsync, and on a barely full tmpfs the pages that frees can
/// let the retry succeed at once (a real, if brief, recovery); fsyncing every batch
/// keeps the disk full until the test frees it.
fn cfg(audit: &Path, audit_extra: &str, up: &Upstream) -> String {
    config(&format!(
        "upstreams:\n  api: {{ url: \"{}\" }}\nroutes:\n  - {{ prefix: /api, upstream: api }}\n",
        up.url()
    ))
    .replace(
        "audit: { path: data/audit.jsonl }",
        &format!(
            "audit: {{ path: \"{}\", fsync: always{audit_extra} }}",
            audit.display()
        ),
    )
}

/// One answered request: status, `X-Request-Id`, refusal reason.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    id: String,
    reason: Option<String>,
}

/// `n` concurrent GETs (each on its own connection) with `token` (none if empty).
async fn burst(addr: SocketAddr, token: &str, n: usize) -> Vec<Answer> {
    let reqs = (0..n).map(|i| {
        let token = token.to_string();
        async move {
            let r = get(addr, &format!("/api/item/{i}"), &token).await;
            Answer {
                status: r.status,
                id: r.header("x-request-id").unwrap_or_default().to_string(),
                reason: r.reason(),
            }
        }
    });
    futures_util::future::join_all(reqs).await
}

async fn readyz(p: &Proxy) -> u16 {
    admin_call(p.admin, "GET", "/readyz", "", None).await.status
}

/// Waits (bounded) until `/readyz` answers `want`.
async fn wait_ready(p: &Proxy, want: u16, what: &str) {
    eventually(what, BOUND, || async {
        match readyz(p).await {
            s if s == want => Ok(()),
            s => Err(format!("/readyz {s}")),
        }
    })
    .await
}

/// Waits (bounded) for every id in `ids` to have a record; panics naming the missing.
async fn wait_records(audit: &Path, ids: &[String]) -> Vec<Value> {
    eventually(
        "every request answered 200 has its audit record",
        BOUND,
        || async {
            let recs = records_of(audit);
            let have: std::collections::BTreeSet<&str> = recs
                .iter()
                .filter_map(|r| r["request_id"].as_str())
                .collect();
            let missing: Vec<&String> = ids.iter().filter(|i| !have.contains(i.as_str())).collect();
            if missing.is_empty() {
                Ok(recs)
            } else {
                Err(format!(
                    "{} have none (first: {:?})",
                    missing.len(),
                    missing.first()
                ))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn full_audit_disk_forwards_nothing_unrecorded_and_recovers_in_order() {
    let Some(fs) = Tmpfs::mount("full_audit_disk", "size=1m") else {
        return;
    };
    fs.prepare_filler();
    let up = Upstream::start(Behaviour::Fixed).await;
    let audit = fs.path().join("audit.jsonl");
    let p = Proxy::start(&cfg(&audit, "", &up), &[]);
    let token = p.agent_token("bot").await;
    let mut answers: Vec<Answer> = Vec::new();

    // Healthy: everything forwarded.
    let before = burst(p.addr, &token, 10).await;
    assert!(before.iter().all(|a| a.status == 200), "{before:?}");
    answers.extend(before);
    assert_eq!(readyz(&p).await, 200);

    // The disk fills. Keep sending allowed requests (8 at a time) and sample /readyz
    // after each round: from the first 503 on, nothing may be forwarded and /readyz may
    // never say ready again until space returns.
    fs.fill();
    let mut first_503: Option<usize> = None;
    let mut ready_samples = Tally::default();
    let mut forwarded_after_first_503 = 0;
    let start = Instant::now();
    while start.elapsed() < OUTAGE || first_503.is_none() {
        assert!(
            start.elapsed() < BOUND + OUTAGE,
            "no request was refused within {:?} of the disk filling up",
            BOUND + OUTAGE
        );
        let hits_before = up.hits();
        let round = burst(p.addr, &token, 8).await;
        if first_503.is_some() {
            forwarded_after_first_503 += up.hits() - hits_before;
            ready_samples.add(readyz(&p).await);
        }
        for a in &round {
            if a.status == 503 && first_503.is_none() {
                first_503 = Some(answers.len());
                ready_samples.add(readyz(&p).await);
            }
        }
        answers.extend(round);
    }
    let outage: Vec<Answer> = answers[first_503.unwrap()..].to_vec();
    for a in &outage {
        assert!(
            a.status == 503 || a.status == 200,
            "during the outage: {a:?}"
        );
        if a.status == 503 {
            assert_eq!(a.reason.as_deref(), Some("audit_unavailable"), "{a:?}");
        }
    }
    assert_eq!(
        ready_samples.get(200),
        0,
        "/readyz said ready while the disk was full: {ready_samples}"
    );

    // Space returns: ready again once the kept records are written.
    fs.free();
    wait_ready(&p, 200, "ready again once space returns").await;
    let after = burst(p.addr, &token, 10).await;
    assert!(after.iter().all(|a| a.status == 200), "{after:?}");
    answers.extend(after);

    // Every 200 reached the upstream once and has exactly one record; nothing else did.
    let mut tally = Tally::default();
    for a in &answers {
        tally.add(a.status);
    }
    let ok: Vec<String> = answers
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| a.id.clone())
        .collect();
    let recs = wait_records(&audit, &ok).await;
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &recs {
        if let Some(id) = r["request_id"].as_str() {
            *per_id.entry(id).or_default() += 1;
        }
    }
    for id in &ok {
        assert_eq!(per_id.get(id.as_str()), Some(&1), "records of {id}");
    }
    assert_eq!(up.hits(), tally.get(200), "upstream calls vs 200 answers");
    assert_eq!(
        forwarded_after_first_503, 0,
        "requests reached the upstream after the first 503"
    );
    // The kept records were written before anything after the recovery, and the trail
    // says when it could not be written.
    let resumed: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "audit_resumed")
        .collect();
    assert_eq!(resumed.len(), 1, "one audit_resumed record: {resumed:?}");
    let seq_of = |id: &str| {
        recs.iter()
            .find(|r| r["request_id"].as_str() == Some(id))
            .and_then(|r| r["seq"].as_u64())
            .unwrap()
    };
    let resumed_seq = resumed[0]["seq"].as_u64().unwrap();
    for a in &answers[..answers.len() - 10] {
        if a.status == 200 {
            assert!(
                seq_of(&a.id) < resumed_seq,
                "{a:?} written after the recovery"
            );
        }
    }
    for a in &answers[answers.len() - 10..] {
        assert!(
            seq_of(&a.id) > resumed_seq,
            "{a:?} written before the recovery"
        );
    }
    let o = verify(&chain_files(&audit), &[], &[]);
    assert!(o.status.success(), "{}", out_text(&o));
    report(
        "full audit disk (1 MiB tmpfs filled)",
        tally.sent(),
        &tally,
        up.hits(),
        recs.len(),
    );
    eprintln!(
        "  outage: {} requests, {} answered 200 (in flight at the first failed write, records kept), /readyz samples {ready_samples}",
        outage.len(),
        outage.iter().filter(|a| a.status == 200).count()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn records_past_max_pending_bytes_leave_one_gap_record() {
    let Some(fs) = Tmpfs::mount("audit_gap", "size=1m") else {
        return;
    };
    fs.prepare_filler();
    let up = Upstream::start(Behaviour::Fixed).await;
    let audit = fs.path().join("audit.jsonl");
    let p = Proxy::start(&cfg(&audit, ", max_pending_bytes: 8192", &up), &[]);
    let token = p.agent_token("bot").await;
    let warm = burst(p.addr, &token, 5).await;
    assert!(warm.iter().all(|a| a.status == 200), "{warm:?}");

    // Full disk; a request forwarded now fails its write, and the sink goes down.
    fs.fill();
    let end = Instant::now() + BOUND;
    while readyz(&p).await != 503 {
        let _ = burst(p.addr, &token, 1).await;
        assert!(Instant::now() < end, "the full disk was never noticed");
    }
    // Requests without a credential are refused (401) and sampled into the trail
    // without waiting for it: 60 of them, one by one, overflow an 8 KiB backlog.
    let mut unauth = Vec::new();
    for _ in 0..60 {
        let a = burst(p.addr, "", 1).await.remove(0);
        assert_eq!(a.status, 401, "{a:?}");
        unauth.push(a.id);
    }
    // Records wait in the queue until the writer's next retry; only when that fails too
    // are they moved to the bounded backlog. Wait until it has taken them all and
    // counted the overflow, with the disk still full.
    eventually("the writer shelves the records", BOUND, || async {
        let m = scrape(&p).await;
        let lost = m.sum("portcullis_audit_records_lost_total");
        let queued = m.sum("portcullis_audit_queue_depth");
        if lost > 0.0 && queued == 0.0 {
            Ok(())
        } else {
            Err(format!("lost {lost}, queued {queued}"))
        }
    })
    .await;
    fs.free();
    wait_ready(&p, 200, "ready again once space returns").await;
    let recs = records_of(&audit);
    let gaps: Vec<&Value> = recs.iter().filter(|r| r["event"] == "gap").collect();
    assert_eq!(
        gaps.len(),
        1,
        "exactly one gap record; the trail: {:?}; log:\n{}",
        recs.iter()
            .map(|r| format!("{} {} {}", r["seq"], r["event"], r["status"]))
            .collect::<Vec<_>>(),
        p.logs()
    );
    let gap = gaps[0];
    let lost = gap["count"].as_u64().expect("gap count") as usize;
    let pos = |id: &str| unauth.iter().position(|u| u == id);
    let first = pos(gap["first_request_id"].as_str().expect("first_request_id"))
        .expect("the gap's first request id is one of the refused requests");
    let last = pos(gap["last_request_id"].as_str().expect("last_request_id"))
        .expect("the gap's last request id is one of the refused requests");
    // (index among the refused, seq) of every refused request that has a record.
    let kept: Vec<(usize, u64)> = recs
        .iter()
        .filter_map(|r| {
            let i = r["request_id"].as_str().and_then(pos)?;
            Some((i, r["seq"].as_u64().unwrap()))
        })
        .collect();
    assert!(lost > 0 && !kept.is_empty(), "kept {kept:?}, lost {lost}");
    // The gap takes the lost records' place in the order: what was kept before the hole
    // is older than its first record and written before it; a record that still fitted
    // the bound after the hole (the sampler refilled, or a shorter record) is newer than
    // its last and written after it.
    let gap_seq = gap["seq"].as_u64().unwrap();
    assert!(first <= last, "gap {first}..={last}");
    for (i, seq) in &kept {
        assert!(
            (*i < first && *seq < gap_seq) || (*i > last && *seq > gap_seq),
            "refused request #{i} (seq {seq}) is out of order around the gap of \
             #{first}..=#{last} (seq {gap_seq}); kept {kept:?}"
        );
    }
    assert!(
        kept.iter().any(|(i, _)| *i < first),
        "the records that fitted before the hole were kept: {kept:?}"
    );
    assert!(
        kept.len() + lost <= unauth.len(),
        "kept {} + lost {lost} > {} refused",
        kept.len(),
        unauth.len()
    );
    let o = verify(&chain_files(&audit), &[], &[]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(
        out_text(&o).contains("gap"),
        "verify names the gap: {}",
        out_text(&o)
    );
    let mut tally = Tally::default();
    for _ in &unauth {
        tally.add(401);
    }
    report(
        "audit backlog over max_pending_bytes (8 KiB)",
        unauth.len(),
        &tally,
        up.hits(),
        recs.len(),
    );
    eprintln!(
        "  during the outage: {} refusal records kept, {lost} lost into one gap record (ids {first}..={last} of the refused)",
        kept.len()
    );
}
