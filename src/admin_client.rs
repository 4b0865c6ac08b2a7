//! The CLI's client for the admin API: one request, JSON in and out, operator token
//! from `PORTCULLIS_OPERATOR_TOKEN` or `--token-file` (never a bare argument).

use crate::body;
use crate::error::Error;
use crate::upstream::tls_config;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::path::PathBuf;

pub struct AdminClient {
    base: String,
    token: String,
}

impl AdminClient {
    pub fn new(base: &str, token_file: Option<&PathBuf>) -> Result<AdminClient, Error> {
        let token = match token_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| Error::Internal(format!("{}: {e}", f.display())))?
                .trim()
                .to_string(),
            None => std::env::var("PORTCULLIS_OPERATOR_TOKEN").map_err(|_| {
                Error::Internal("set PORTCULLIS_OPERATOR_TOKEN or pass --token-file".into())
            })?,
        };
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// Sends one request; a non-2xx answer becomes an error carrying the server's reason.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, Error> {
        let (status, _, bytes) = self.send(method, path, true, body).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if status == StatusCode::UNAUTHORIZED && self.is_agent_port().await {
            return Err(Error::Internal(format!(
                "{} answered like portcullis' agent port (`listen`), not its admin API \
                 (`admin_listen`, default http://127.0.0.1:9090): point --admin or \
                 PORTCULLIS_ADMIN at the admin listener",
                self.base
            )));
        }
        if !status.is_success() {
            let why = v
                .get("detail")
                .or_else(|| v.get("error"))
                .and_then(|d| d.as_str())
                .unwrap_or("no detail");
            return Err(Error::Internal(format!(
                "admin API answered {status}: {why}"
            )));
        }
        Ok(v)
    }

    /// Whether `base` is an agent port: the admin API answers `GET /healthz` without a
    /// token; the agent port refuses it (no credential) with its `Portcullis-Decision`.
    async fn is_agent_port(&self) -> bool {
        match self.send(Method::GET, "/healthz", false, None).await {
            Ok((status, headers, _)) => {
                !status.is_success() && headers.contains_key("portcullis-decision")
            }
            Err(_) => false,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        with_token: bool,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, http::HeaderMap, bytes::Bytes), Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let tls = tls_config(None).map_err(Error::Internal)?;
        let conn = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client: Client<_, body::Body> = Client::builder(TokioExecutor::new()).build(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if with_token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        }
        let b = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                body::full(serde_json::to_vec(&v).unwrap_or_default())
            }
            None => body::empty(),
        };
        let req = req.body(b).map_err(|e| Error::Internal(e.to_string()))?;
        let resp = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                Error::Internal(format!(
                    "nothing answers at {} ({e}): is `portcullis serve` running, and is this \
                     its admin_listen? (--admin or PORTCULLIS_ADMIN; default http://127.0.0.1:9090)",
                    self.base
                ))
            } else {
                Error::Internal(format!("admin API at {}: {e}", self.base))
            }
        })?;
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .to_bytes();
        Ok((parts.status, parts.headers, bytes))
    }
}
