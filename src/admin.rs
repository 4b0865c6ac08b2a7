//! Operator-facing API on `admin_listen`: health and readiness (more in later issues).

use crate::app::App;
use crate::body::{self, Body};
use crate::error::Error;
use crate::proxy::{new_request_id, Conn};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;

pub async fn handle(app: Arc<App>, _conn: Conn, req: Request<Incoming>) -> Response<Body> {
    let request_id = new_request_id();
    let r = route(&app, &req).await;
    let mut resp = r.unwrap_or_else(|e| e.to_response(&request_id));
    if let Ok(v) = http::HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

async fn route(app: &App, req: &Request<Incoming>) -> Result<Response<Body>, Error> {
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/healthz") => Ok(body::json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        ("GET", "/readyz") => {
            if app.is_draining() {
                Err(Error::Unavailable { reason: "draining", detail: "shutting down".into() })
            } else {
                Ok(body::json_response(StatusCode::OK, &serde_json::json!({"status": "ready", "policy_version": &*app.live.load().snap.policy_version})))
            }
        }
        _ => Err(Error::NotFound),
    }
}
