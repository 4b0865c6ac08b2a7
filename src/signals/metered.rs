//! Response bytes for `volume_spike`: the body an agent receives, counted as it streams
//! and added to the agent's window when it ends (or is dropped).

use super::AgentTracks;
use crate::body::{Body, BoxError};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub struct Metered {
    inner: Body,
    tracks: Arc<AgentTracks>,
    window: Duration,
    bytes: u64,
}

/// `body`, counted into `tracks` over `window`.
pub fn wrap(body: Body, tracks: Arc<AgentTracks>, window: Duration) -> Body {
    Metered {
        inner: body,
        tracks,
        window,
        bytes: 0,
    }
    .boxed()
}

impl Drop for Metered {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let now = crate::store::now_ms();
            self.tracks.lock().bytes.add(self.window, now, self.bytes);
        }
    }
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                self.bytes += d.len() as u64;
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
