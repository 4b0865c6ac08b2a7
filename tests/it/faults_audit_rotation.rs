//! Issue 12 item 7: rotation while the disk is full. On a tmpfs whose inodes and then
//! blocks run out, a rotation renames the full file but cannot create the next one; the
//! proxy refuses to forward (503 `audit_unavailable`) until space returns, then writes
//! what it kept into the new file, and the rotated files plus the live one verify as one
//! chain: no torn line, no lost link, every 200 recorded once.

use crate::common::*;
use crate::support::audit::{chain_files, out_text, records_of, scrape, verify};
use crate::support::faults::{report, Tally, Tmpfs};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread")]
async fn rotation_while_the_disk_is_full_keeps_the_chain_whole() {
    let Some(mut fs) = Tmpfs::mount("rotation_disk_full", "size=2m,nr_inodes=64") else {
        return;
    };
    fs.prepare_filler();
    let up = Upstream::start(Behaviour::Fixed).await;
    let audit = fs.path().join("audit.jsonl");
    let cfg = config(&format!(
        "upstreams:\n  api: {{ url: \"{}\" }}\nroutes:\n  - {{ prefix: /api, upstream: api }}\n",
        up.url()
    ))
    .replace(
        "audit: { path: data/audit.jsonl }",
        &format!(
            "audit: {{ path: \"{}\", fsync: always, rotate_bytes: 4096 }}",
            audit.display()
        ),
    );
    let p = Proxy::start(&cfg, &[]);
    let token = p.agent_token("bot").await;
    let mut answers: Vec<(u16, String)> = Vec::new();
    let send = |n: usize| {
        let token = token.clone();
        let addr = p.addr;
        async move {
            let mut out = Vec::new();
            for i in 0..n {
                let r = get(addr, &format!("/api/r/{i}"), &token).await;
                out.push((
                    r.status,
                    r.header("x-request-id").unwrap_or_default().to_string(),
                ));
            }
            out
        }
    };
    answers.extend(send(10).await);
    assert!(answers.iter().all(|a| a.0 == 200), "{answers:?}");

    // No inode left: the next rotation renames the file and cannot create a new one.
    let inodes = fs.exhaust_inodes();
    let end = Instant::now() + BOUND;
    while !answers.iter().any(|a| a.0 == 503) {
        assert!(
            Instant::now() < end,
            "no refusal within {BOUND:?} of the inodes running out"
        );
        answers.extend(send(1).await);
    }
    let first_503 = answers.iter().position(|a| a.0 == 503).unwrap();
    assert!(
        !audit.exists(),
        "the live file should be rotated away with no new one"
    );
    // And no block either; keep asking for a while, plus refusals that are recorded
    // without waiting (kept for later).
    let filled = fs.fill();
    let hits_before = up.hits();
    for _ in 0..20 {
        answers.extend(send(1).await);
        let r = get(p.addr, "/api/unauth", "").await;
        assert_eq!(r.status, 401);
    }
    assert_eq!(
        up.hits(),
        hits_before,
        "forwarded while the trail was unwritable"
    );
    // Let the writer retry (and fail) with the disk full and take every queued record.
    eventually("failed retries take every queued record", BOUND, || async {
        let m = scrape(&p).await;
        let errors = m.sum("portcullis_audit_write_errors_total");
        let queued = m.sum("portcullis_audit_queue_depth");
        if errors >= 3.0 && queued == 0.0 {
            Ok(())
        } else {
            Err(format!("{errors} write errors, {queued} queued"))
        }
    })
    .await;
    let r = admin_call(p.admin, "GET", "/readyz", "", None).await;
    assert_eq!(r.status, 503, "ready while the trail is unwritable");

    // Space and inodes return: the kept records go into a new file, then new traffic.
    fs.free();
    fs.free_inodes();
    eventually("ready again once space returns", BOUND, || async {
        match admin_call(p.admin, "GET", "/readyz", "", None).await.status {
            200 => Ok(()),
            s => Err(format!("/readyz {s}")),
        }
    })
    .await;
    let after = send(10).await;
    assert!(after.iter().all(|a| a.0 == 200), "{after:?}");
    answers.extend(after);

    let mut tally = Tally::default();
    for a in &answers {
        tally.add(a.0);
    }
    for a in &answers[first_503..answers.len() - 10] {
        assert!(
            a.0 == 503 || a.0 == 200,
            "during the outage: {a:?} (200 only for requests in flight)"
        );
    }
    let ok: Vec<&String> = answers
        .iter()
        .filter(|a| a.0 == 200)
        .map(|a| &a.1)
        .collect();
    let end = Instant::now() + BOUND;
    let (files, recs) = loop {
        // Listed afresh each time: the writer may rotate again while the backlog drains.
        let files = chain_files(&audit);
        let recs: Vec<serde_json::Value> = files.iter().flat_map(|f| records_of(f)).collect();
        let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
        for r in &recs {
            if let Some(id) = r["request_id"].as_str() {
                *per_id.entry(id.to_string()).or_default() += 1;
            }
        }
        if ok.iter().all(|id| per_id.get(id.as_str()) == Some(&1)) {
            break (files, recs);
        }
        assert!(
            Instant::now() < end,
            "not every 200 has exactly one record: {:?}; files {files:?}; trail {:?}; log:\n{}",
            ok.iter()
                .filter(|id| per_id.get(id.as_str()) != Some(&1))
                .map(|id| (id, per_id.get(id.as_str())))
                .collect::<Vec<_>>(),
            recs.iter()
                .map(|r| format!(
                    "{} {} {} {}",
                    r["seq"], r["event"], r["status"], r["request_id"]
                ))
                .collect::<Vec<_>>(),
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(up.hits(), tally.get(200), "upstream calls vs 200 answers");
    let o = verify(&files, &[], &[]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(
        files.len() >= 3,
        "rotations happened around the outage: {files:?}"
    );
    assert_eq!(
        recs.iter()
            .filter(|r| r["event"] == "audit_resumed")
            .count(),
        1
    );
    report(
        "rotation with no inode and no block left",
        tally.sent() + 20,
        &{
            let mut t = tally.clone();
            for _ in 0..20 {
                t.add(401);
            }
            t
        },
        up.hits(),
        recs.len(),
    );
    eprintln!(
        "  {inodes} inodes and {filled} bytes taken; {} files in the chain, verify: {}",
        files.len(),
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
}
