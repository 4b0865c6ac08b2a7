//! The one error enum and the one place that turns an error into an HTTP response.

use crate::body::{self, Body};
use crate::classify::Risk;
use crate::config::ConfigError;
use http::{header, HeaderValue, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// A policy refusal: what was asked, which rule said no, under which policy.
#[derive(Debug, Clone)]
pub struct Denial {
    pub reason: &'static str,
    pub detail: String,
    pub tool: Option<Arc<str>>,
    pub risk: Option<Risk>,
    pub policy_version: Arc<str>,
    /// The condition that decided it (`request.body.amount > 100`), when one did.
    pub condition: Option<Arc<str>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{detail}")]
    BadRequest {
        reason: &'static str,
        detail: String,
    },
    /// `validate: request`: the request does not match its operation's schema.
    #[error("{detail}")]
    SchemaViolation {
        /// JSON pointer into `{"query": …, "body": …}`.
        pointer: String,
        /// The JSON Schema keyword that failed (`type`, `required`, …).
        rule: String,
        detail: String,
    },
    #[error("method {0} is not allowed")]
    MethodNotAllowed(String),
    #[error("authentication required")]
    Unauthorized,
    /// The admin API's 401: unlike the agent port's, it says what to send.
    #[error("send an operator token as `Authorization: Bearer pco_…` (`portcullis operators new-token NAME` makes one)")]
    OperatorUnauthorized,
    #[error("{}", .0.detail)]
    Denied(Box<Denial>),
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("the request body exceeds the {limit}-byte limit")]
    BodyTooLarge { limit: u64 },
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{detail}")]
    UnsupportedMediaType {
        reason: &'static str,
        detail: String,
    },
    #[error("{detail}")]
    TooMany {
        reason: &'static str,
        detail: String,
        retry_after: u64,
    },
    #[error("{detail}")]
    Unavailable {
        reason: &'static str,
        detail: String,
    },
    #[error("upstream `{upstream}` could not be reached: {detail}")]
    BadGateway {
        upstream: String,
        detail: String,
        /// The connection failed: nothing of the request reached the upstream.
        connect: bool,
    },
    #[error("upstream `{upstream}` did not answer within {}ms", .after.as_millis())]
    GatewayTimeout { upstream: String, after: Duration },
    #[error("the request did not complete within {}ms", .0.as_millis())]
    Deadline(Duration),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest { .. } | Error::SchemaViolation { .. } => StatusCode::BAD_REQUEST,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::Unauthorized | Error::OperatorUnauthorized => StatusCode::UNAUTHORIZED,
            Error::Denied(_) | Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Gone(_) => StatusCode::GONE,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Error::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            Error::GatewayTimeout { .. } | Error::Deadline(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            // A configuration that does not compile (a refused reload): the caller's input.
            Error::Config(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// The machine-readable reason code (also the audit `reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::BadRequest { reason, .. } => reason,
            Error::SchemaViolation { .. } => "schema_violation",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::Unauthorized | Error::OperatorUnauthorized => "unauthenticated",
            Error::Denied(d) => d.reason,
            Error::Forbidden(_) => "forbidden",
            Error::NotFound => "not_found",
            Error::Conflict(_) => "conflict",
            Error::Gone(_) => "gone",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::NotAcceptable(_) => "not_acceptable",
            Error::UnsupportedMediaType { reason, .. } => reason,
            Error::TooMany { reason, .. } => reason,
            Error::Unavailable { reason, .. } => reason,
            Error::BadGateway { .. } => "upstream_unreachable",
            Error::GatewayTimeout { .. } => "upstream_timeout",
            Error::Deadline(_) => "request_deadline",
            Error::Internal(_) => "internal",
            Error::Config(_) => "invalid_config",
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Error::BadRequest { .. } | Error::SchemaViolation { .. } => "bad_request",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::Unauthorized | Error::OperatorUnauthorized => "unauthorized",
            Error::Denied(_) => "denied",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound => "not_found",
            Error::Conflict(_) => "conflict",
            Error::Gone(_) => "gone",
            Error::BodyTooLarge { .. } => "payload_too_large",
            Error::NotAcceptable(_) => "not_acceptable",
            Error::UnsupportedMediaType { .. } => "unsupported_media_type",
            Error::TooMany { .. } => "too_many_requests",
            Error::Unavailable { .. } => "unavailable",
            Error::BadGateway { .. } => "bad_gateway",
            Error::GatewayTimeout { .. } | Error::Deadline(_) => "gateway_timeout",
            Error::Internal(_) => "internal",
            Error::Config(_) => "invalid_config",
        }
    }

    /// `deny` when the request was refused, `error` when the proxy or upstream failed.
    pub fn decision(&self) -> &'static str {
        if self.status().is_server_error() {
            "error"
        } else {
            "deny"
        }
    }

    /// The response the client sees. Internal details stay in the log.
    pub fn to_response(&self, request_id: &str) -> Response<Body> {
        let mut v = serde_json::json!({ "error": self.kind() });
        let o = v.as_object_mut().expect("object");
        if !matches!(self, Error::Unauthorized) {
            o.insert("reason".into(), self.reason().into());
            let detail = match self {
                Error::Internal(_) => "internal error; see the proxy log".to_string(),
                e => e.to_string(),
            };
            o.insert("detail".into(), detail.into());
        }
        if let Error::SchemaViolation { pointer, rule, .. } = self {
            o.insert("pointer".into(), pointer.as_str().into());
            o.insert("rule".into(), rule.as_str().into());
        }
        if let Error::Denied(d) = self {
            if let Some(t) = &d.tool {
                o.insert("tool".into(), t.as_ref().into());
            }
            if let Some(r) = d.risk {
                o.insert("risk".into(), r.as_str().into());
            }
            o.insert("policy_version".into(), d.policy_version.as_ref().into());
            if let Some(c) = &d.condition {
                o.insert("condition".into(), c.as_ref().into());
            }
        }
        o.insert("request_id".into(), request_id.into());
        let mut resp = body::json_response(self.status(), &v);
        let h = resp.headers_mut();
        h.insert(
            crate::proxy::DECISION,
            HeaderValue::from_static(self.decision()),
        );
        match self {
            Error::Unauthorized | Error::OperatorUnauthorized => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Error::MethodNotAllowed(_) => {
                h.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            Error::TooMany { retry_after, .. } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        resp
    }
}
