//! Outbound: one pooled keep-alive client per upstream (rustls for https, with
//! webpki roots plus an optional private CA), header hygiene, credential injection.

use crate::body::{self, Body, BoxError};
use crate::canon::Canonical;
use crate::config::{Route, Upstream};
use crate::error::Error;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;

pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// The proxy's own outbound headers, parsed once (a `&str` name is parsed on every use).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one hop and never cross the proxy.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Client-sent headers the proxy owns, that carry the agent's identity, that a backend
/// or a framework routes on (a request the gate classified as one path must not run
/// as another), or that claim a client address the proxy did not see.
const CLIENT_STRIPPED: [&str; 24] = [
    "host",
    "authorization",
    "forwarded",
    "x-real-ip",
    "x-request-id",
    "expect",
    "portcullis-decision",
    // the agent's words for the operator (`rationale`), never the backend's
    "portcullis-rationale",
    "cookie2",
    // routing overrides (IIS URL Rewrite, Symfony, Zend/Laminas, Spring behind proxies)
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-original-uri",
    "x-original-host",
    "x-host",
    "x-http-destinationurl",
    // client-address claims
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
];

pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(f) = ca_file {
        let certs = CertificateDer::pem_file_iter(f)
            .map_err(|e| format!("{}: {e}", f.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", f.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificates", f.display()));
        }
        for c in certs {
            roots.add(c).map_err(|e| format!("{}: {e}", f.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

pub fn build_client(u: &Upstream) -> Result<HttpsClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(u.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let tls = tls_config(u.ca_file.as_deref())?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(connector))
}

/// What the proxy adds about the client.
pub struct Origin<'a> {
    /// The X-Forwarded-For value to send (a trusted proxy's chain plus the peer);
    /// none for replays, which have no client connection.
    pub forwarded_for: Option<&'a str>,
    pub https: bool,
    /// The X-Forwarded-Host to send: configured (`public_host`), or the client's Host
    /// when it is one of the configured `hosts:`; never an arbitrary client value.
    pub host: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub request_id: &'a str,
}

/// Names listed in `Connection` (they are hop-by-hop for this message).
fn connection_named(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

fn is_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Whether a client header never crosses the proxy (hygiene shared by forwarding and parking).
fn dropped(name: &HeaderName, named: &[HeaderName], up: &Upstream) -> bool {
    let n = name.as_str();
    is_hop(n)
        || CLIENT_STRIPPED.contains(&n)
        || n.starts_with("x-forwarded-")
        || (!up.cookies_pass && n == "cookie")
        || named.contains(name)
        || up.tenant_header.as_ref() == Some(name)
        || up.inject.as_ref().is_some_and(|i| i.header == name)
}

/// The client headers kept with a parked request: hygiene applied, and no cookie or
/// length (credentials are never stored; the length is recomputed at replay).
pub fn kept_headers(client: &HeaderMap, up: &Upstream) -> Vec<(String, String)> {
    let named = connection_named(client);
    client
        .iter()
        .filter(|(n, _)| {
            !dropped(n, &named, up) && *n != header::COOKIE && *n != header::CONTENT_LENGTH
        })
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// The headers the upstream receives: re-serialised from the parsed map, hygiene applied,
/// then the proxy's own headers, the credential last.
pub fn outbound_headers(client: &HeaderMap, up: &Upstream, o: &Origin) -> HeaderMap {
    let named = connection_named(client);
    let mut out = HeaderMap::with_capacity(client.len() + 6);
    for (name, value) in client {
        if !dropped(name, &named, up) {
            out.append(name.clone(), value.clone());
        }
    }
    if let Some(v) = &up.host {
        out.insert(header::HOST, v.clone());
    }
    if let Some(v) = o.forwarded_for.and_then(|f| HeaderValue::from_str(f).ok()) {
        out.insert(X_FORWARDED_FOR, v);
    }
    out.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if o.https { "https" } else { "http" }),
    );
    if let Some(v) = o.host.and_then(|h| HeaderValue::from_str(h).ok()) {
        out.insert(X_FORWARDED_HOST, v);
    }
    if let Ok(v) = HeaderValue::from_str(o.request_id) {
        out.insert(X_REQUEST_ID, v);
    }
    if let (Some(h), Some(t)) = (&up.tenant_header, o.tenant) {
        if let Ok(v) = HeaderValue::from_str(t) {
            out.insert(h.clone(), v);
        }
    }
    if let Some(i) = &up.inject {
        out.insert(i.header.clone(), i.value.clone());
    }
    out
}

/// The path the upstream receives: its base path + the canonical path (minus the
/// route prefix with `strip_prefix`), then the canonical query.
pub fn upstream_uri(up: &Upstream, route: &Route, c: &Canonical) -> Result<http::Uri, Error> {
    let mut path = c.path.as_str();
    if route.strip_prefix && route.prefix != "/" {
        path = &path[route.prefix.len()..];
    }
    let mut pq = String::with_capacity(
        up.base_path.len() + path.len() + c.query.as_ref().map_or(0, |q| q.len() + 1),
    );
    pq.push_str(&up.base_path);
    if path.is_empty() || !path.starts_with('/') {
        pq.push('/');
    }
    pq.push_str(path);
    if let Some(q) = &c.query {
        pq.push('?');
        pq.push_str(q);
    }
    http::Uri::builder()
        .scheme(if up.https { "https" } else { "http" })
        .authority(up.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|e| Error::Internal(format!("building the upstream URI: {e}")))
}

/// Sends one request upstream; the response's headers must arrive within the upstream's
/// response timeout. Nothing is retried.
pub async fn send(
    client: &HttpsClient,
    up: &Upstream,
    req: Request<Body>,
) -> Result<Response<Incoming>, Error> {
    match tokio::time::timeout(up.response_timeout, client.request(req)).await {
        Err(_) => Err(Error::GatewayTimeout {
            upstream: up.name.clone(),
            after: up.response_timeout,
        }),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(classify_error(up, &e)),
    }
}

fn classify_error(up: &Upstream, e: &hyper_util::client::legacy::Error) -> Error {
    if let Some(limit) = body::too_large_limit(e) {
        return Error::BodyTooLarge { limit };
    }
    if crate::override_scan::is_found(e) {
        return crate::override_scan::refusal();
    }
    let connect = e.is_connect();
    let detail = if connect {
        let mut msg = "connection failed".to_string();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(err) = cur {
            msg = err.to_string();
            cur = err.source();
        }
        msg
    } else {
        "the upstream closed the connection before answering".to_string()
    };
    Error::BadGateway {
        upstream: up.name.clone(),
        detail,
        connect,
    }
}

/// A bodiless method that carries a body (a route's `allow_body_on`): sent on a
/// connection that is closed afterwards, so a backend that ignores the body cannot
/// read it as the next request on a pooled connection.
pub fn mark_not_reused(h: &mut HeaderMap) {
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// The upstream's response as the client sees it: hop-by-hop headers removed, and
/// `Set-Cookie` (a session minted under the injected credential) unless the upstream
/// has `cookies: pass`.
pub fn inbound_response(resp: Response<Incoming>, up: &Upstream) -> Response<Body> {
    let (mut parts, incoming) = resp.into_parts();
    let stripped = |n: &HeaderName| {
        is_hop(n.as_str()) || (!up.cookies_pass && (n == header::SET_COOKIE || n == "set-cookie2"))
    };
    // Most responses carry none of these: one pass over the names instead of a lookup
    // per name. Headers a `Connection` header names are looked for only when it is there
    // (it is itself hop-by-hop).
    if parts.headers.keys().any(stripped) {
        let named = connection_named(&parts.headers);
        for n in named {
            parts.headers.remove(n);
        }
        for n in HOP_BY_HOP {
            parts.headers.remove(n);
        }
        if !up.cookies_pass {
            parts.headers.remove(header::SET_COOKIE);
            parts.headers.remove("set-cookie2");
        }
    }
    let b = incoming.map_err(|e| -> BoxError { Box::new(e) }).boxed();
    Response::from_parts(parts, b)
}

pub fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed()
}
