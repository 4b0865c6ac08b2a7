//! `preview: current`: before a PUT, PATCH or DELETE parks, the resource it will change
//! is read with a `GET` of the same path, sent the way any forward is (the upstream's
//! credential injected, hygiene applied), recorded in the trail as event `preview`,
//! never parked and never counted against a budget or a rate. What came back (capped
//! at `limits.max_result_bytes` and [`MAX_PREVIEW`]) is kept with the approval for the page's diff; a read
//! that fails leaves a note instead and the park goes on. Nothing is read while the
//! audit trail cannot take the read's record.

use crate::app::{App, Live};
use crate::audit::Record;
use crate::canon::{Canonical, Method};
use http::{header, HeaderMap, HeaderValue, Request};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};

/// The most of a preview kept: it lives inside the approval record, which every listing
/// reads, and a longer document is not read field by field anyway.
pub const MAX_PREVIEW: u64 = 64 * 1024;

/// The resource as read at park time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Preview {
    pub at_ms: u64,
    /// The upstream's status; `None` when it could not be read (see `note`).
    pub status: Option<u16>,
    /// The body as UTF-8 text (`None` when it was not text).
    pub body: Option<String>,
    pub truncated: bool,
    pub note: Option<String>,
}

/// Whether a request to `tool` on `route` is previewed.
pub fn wanted(live: &Live, route: usize, tool: &str, m: Method) -> bool {
    matches!(m, Method::Put | Method::Patch | Method::Delete)
        && live.snap.routes[route].previews(tool)
}

/// Whose request the read is made for (the trail names them; the tenant header is set).
pub struct For<'a> {
    pub agent: &'a str,
    pub credential: &'a str,
    pub tenant: Option<&'a str>,
}

/// Reads the current resource for a parked write.
pub async fn fetch(
    app: &App,
    live: &Live,
    who: For<'_>,
    route: usize,
    tool: &str,
    c: &Canonical,
    request_id: &str,
) -> Preview {
    let snap = &live.snap;
    let r = &snap.routes[route];
    let up = &snap.upstreams[r.upstream];
    let mut get = c.clone();
    get.method = Method::Get;
    get.query = None;
    let started = std::time::Instant::now();
    // Fail closed like any forward: no upstream read that the trail cannot record.
    if !app.audit.ready() {
        return Preview {
            at_ms: crate::store::now_ms(),
            status: None,
            body: None,
            truncated: false,
            note: Some(
                "the current resource was not read: the audit trail is not accepting records"
                    .into(),
            ),
        };
    }
    let read = async {
        let mut client = HeaderMap::new();
        client.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let origin = crate::upstream::Origin {
            forwarded_for: None,
            https: false,
            host: None,
            tenant: who.tenant,
            request_id,
        };
        let mut out = Request::new(crate::body::empty());
        *out.method_mut() = http::Method::GET;
        *out.uri_mut() = crate::upstream::upstream_uri(up, r, &get)?;
        *out.headers_mut() = crate::upstream::outbound_headers(&client, up, &origin);
        let resp = crate::upstream::send(&live.clients[r.upstream], up, out).await?;
        let status = resp.status().as_u16();
        let max =
            usize::try_from(snap.limits.max_result_bytes.min(MAX_PREVIEW)).unwrap_or(usize::MAX);
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        let mut truncated = false;
        while let Some(f) = body.frame().await {
            let f = f.map_err(|_| crate::error::Error::BadGateway {
                upstream: up.name.clone(),
                detail: "the preview's body was cut off".into(),
                connect: false,
            })?;
            if let Ok(d) = f.into_data() {
                let room = max - buf.len();
                if d.len() > room {
                    buf.extend_from_slice(&d[..room]);
                    truncated = true;
                    break;
                }
                buf.extend_from_slice(&d);
            }
        }
        Ok::<_, crate::error::Error>((status, buf, truncated))
    };
    let got = tokio::time::timeout(up.response_timeout, read).await;
    let now = crate::store::now_ms();
    let p = match got {
        Ok(Ok((status, buf, truncated))) => Preview {
            at_ms: now,
            status: Some(status),
            body: String::from_utf8(buf).ok(),
            truncated,
            note: (!(200..300).contains(&status))
                .then(|| format!("the upstream answered {status} to the preview read")),
        },
        Ok(Err(e)) => Preview {
            at_ms: now,
            status: None,
            body: None,
            truncated: false,
            note: Some(format!(
                "the current resource could not be read ({})",
                e.reason()
            )),
        },
        Err(_) => Preview {
            at_ms: now,
            status: None,
            body: None,
            truncated: false,
            note: Some("the current resource could not be read in time".into()),
        },
    };
    let rec = Record {
        event: "preview",
        request_id: Some(request_id.to_string()),
        agent: Some(who.agent.to_string()),
        credential: Some(who.credential.to_string()),
        tenant: who.tenant.map(str::to_string),
        method: Some("GET".into()),
        path: Some(crate::audit::redact_query(
            &get.path_and_query(),
            &snap.audit.redact_query,
        )),
        tool: Some(tool.to_string()),
        decision: Some("allow".into()),
        reason: Some("preview".into()),
        policy_version: Some(snap.policy_version.to_string()),
        upstream_status: p.status,
        duration_us: Some(started.elapsed().as_micros() as u64),
        ..Default::default()
    };
    if app.audit.record(rec).is_err() {
        tracing::warn!(
            request_id,
            "audit record for a preview read could not be queued"
        );
    }
    p
}

/// On opening a pending request's page: the resource read again, to warn when it no
/// longer is what the diff was made against. `None` when the request has no preview,
/// its tool no longer previews, or the read failed (the page then says nothing new).
pub async fn reread(app: &App, a: &super::Approval) -> Option<Preview> {
    let kept = a.preview.as_ref()?;
    kept.status?;
    let live = app.live.load_full();
    let m = Method::parse(&a.method)?;
    let path = a.path.split('?').next().unwrap_or("").to_string();
    let tool = live.snap.classifier.classify(m, &path).ok()?;
    if *tool.name != a.tool || !wanted(&live, tool.route, &tool.name, m) {
        return None;
    }
    let c = Canonical {
        method: m,
        path,
        query: None,
        host: String::new(),
        encoded_slash: false,
    };
    let who = For {
        agent: &a.agent,
        credential: &a.credential,
        tenant: a.tenant.as_deref(),
    };
    let p = fetch(app, &live, who, tool.route, &a.tool, &c, &a.request_id).await;
    p.status.is_some().then_some(p)
}
