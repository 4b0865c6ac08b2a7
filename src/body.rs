//! Body types: the boxed streaming body both listeners answer with, a size-capped
//! request body, and helpers for small JSON/text bodies.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use std::pin::Pin;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn json_response<T: serde::Serialize + ?Sized>(status: StatusCode, v: &T) -> Response<Body> {
    let mut bytes = serde_json::to_vec(v).unwrap_or_default();
    bytes.push(b'\n');
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The client sent more than the limit allows.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct TooLarge(pub u64);

/// Passes a body through, failing once more than `limit` bytes have gone by, and
/// dropping trailers (they are never merged into forwarded headers).
pub struct Capped<B> {
    inner: B,
    seen: u64,
    limit: u64,
}

impl<B> Capped<B> {
    pub fn new(inner: B, limit: u64) -> Self {
        Capped {
            inner,
            seen: 0,
            limit,
        }
    }
}

impl<B> http_body::Body for Capped<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let this = &mut *self;
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.seen += data.len() as u64;
                        if this.seen > this.limit {
                            return Poll::Ready(Some(Err(Box::new(TooLarge(this.limit)))));
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Err(_trailers) => continue,
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a small request body whole (admin API, operator page); over `max` or
/// unreadable → 400.
pub async fn read_small<B>(body: B, max: usize) -> Result<Bytes, crate::error::Error>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    http_body_util::Limited::new(body, max)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|_| crate::error::Error::BadRequest {
            reason: "bad_body",
            detail: format!("the body is unreadable or over {max} bytes"),
        })
}

/// Whether an error chain holds our [`TooLarge`].
pub fn is_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    too_large_limit(e).is_some()
}

/// The limit of the [`TooLarge`] in an error chain, if there is one.
pub fn too_large_limit(e: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<TooLarge>() {
            return Some(t.0);
        }
        cur = err.source();
    }
    None
}

/// Reads a request body whole, refusing more than `limit` bytes (413) — a declared
/// Content-Length over it before anything is read.
pub async fn collect_limited<B>(
    headers: &http::HeaderMap,
    body: B,
    limit: u64,
) -> Result<Bytes, crate::error::Error>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    use crate::error::Error;
    let declared: Option<u64> = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Error::BodyTooLarge { limit });
    }
    http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Error::BodyTooLarge { limit }
            } else {
                Error::BadRequest {
                    reason: "bad_body",
                    detail: "the request body could not be read".into(),
                }
            }
        })
}
