//! `portcullis demo`: the bundled routes.yaml in front of an in-process "tickets" API,
//! so a new user sees classification and forwarding with one command.

use crate::body::{self, Body};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// The bundled example configuration.
pub const ROUTES_YAML: &str = include_str!("../routes.yaml");

/// The placeholder operator hash in routes.yaml; `demo` swaps in a fresh operator's.
pub const DEMO_OPERATOR_HASH: &str =
    "8ac3ba6a5ce4ee9dcbf8b48a8afd3fde0e45a3a1d1ae8bbd2c3a3f2b7b5e8e3c";
/// The second operator's placeholder (critical tools need two distinct approvers).
pub const DEMO_OPERATOR2_HASH: &str =
    "3d5f0e9cbbd0a0c0e2ff5b1e0c6e0f2a9a4c8c7b6e5d4c3b2a1f0e9d8c7b6a59";

/// The upstream credential the demo injects (the agent never sees it).
pub const DEMO_UPSTREAM_KEY: &str = "Bearer demo-upstream-key";

/// Starts the demo tickets API on 127.0.0.1:0 and returns its address.
pub async fn start_api() -> std::io::Result<SocketAddr> {
    start_api_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Starts the demo tickets API on `addr`.
pub async fn start_api_on(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr).await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc =
                    service_fn(|req| async move { Ok::<_, std::convert::Infallible>(api(req)) });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn api(req: Request<Incoming>) -> Response<Body> {
    let path = req
        .uri()
        .path()
        .strip_prefix("/v2")
        .unwrap_or(req.uri().path())
        .to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let authorised = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(DEMO_UPSTREAM_KEY);
    if !authorised {
        return body::json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "the demo API wants its own key"}),
        );
    }
    let tenant = req
        .headers()
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let m = req.method().as_str();
    let (status, v) = match (m, segs.as_slice()) {
        ("GET", ["tickets"]) => (
            200,
            json!({"tenant": tenant, "tickets": [{"id": 1, "title": "Printer on fire"}, {"id": 2, "title": "Refund please"}]}),
        ),
        ("GET", ["tickets", id]) => (
            200,
            json!({"tenant": tenant, "id": id, "title": "Printer on fire", "status": "open"}),
        ),
        ("POST", ["tickets", id, "comments"]) => (
            201,
            json!({"tenant": tenant, "ticket": id, "comment": "added"}),
        ),
        ("POST", ["tickets", id, "close"]) => (
            200,
            json!({"tenant": tenant, "ticket": id, "status": "closed"}),
        ),
        ("POST", ["tickets", id, "refund"]) => (
            200,
            json!({"tenant": tenant, "ticket": id, "refunded": true}),
        ),
        ("DELETE", ["tickets", id]) => (200, json!({"tenant": tenant, "deleted": id})),
        (_, ["admin", ..]) => (200, json!({"tenant": tenant, "admin": path})),
        _ => (404, json!({"error": "no such demo endpoint", "path": path})),
    };
    body::json_response(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), &v)
}
