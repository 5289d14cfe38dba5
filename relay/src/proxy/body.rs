//! The relay's response body: whatever it wraps (a body streamed from the
//! tunnel, or an envelope), it counts the bytes it sends, keeps the
//! request's edge slots until it is dropped, and gives its tunnel stream
//! back to the pool once it has ended cleanly.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;

use crate::limits::Slot;

/// Gives a keep-alive connection back to its pool (a tunnel stream's, or a
/// peer node's) once the response over it has ended cleanly.
pub type GiveBack = Box<dyn FnOnce() + Send>;

/// A body and what it holds until it ends (see the module doc).
pub(super) struct Tracked<B: Body> {
    body: B,
    bytes: Option<Counter>,
    _slots: Vec<Slot>,
    lease: Option<GiveBack>,
    ended: bool,
}

impl<B: Body> Tracked<B> {
    /// `body`, holding `slots` and `lease` (if any) while it is sent.
    pub(super) fn holding(body: B, slots: Vec<Slot>, lease: Option<GiveBack>) -> Self {
        Self {
            body,
            bytes: None,
            _slots: slots,
            lease,
            ended: false,
        }
    }

    /// `body`, adding the bytes it sends to `bytes`.
    pub(super) fn counted(body: B, bytes: Counter) -> Self {
        Self {
            body,
            bytes: Some(bytes),
            _slots: Vec::new(),
            lease: None,
            ended: false,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(bytes), Some(data)) = (&self.bytes, frame.data_ref()) {
                    bytes.inc_by(data.len() as u64);
                }
            }
            Poll::Ready(None) => self.ended = true,
            // A broken body leaves its connection mid-message: never reused.
            Poll::Ready(Some(Err(_))) => self.lease = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B: Body> Drop for Tracked<B> {
    fn drop(&mut self) {
        // hyper stops polling a body whose declared length has been sent, so
        // the end shows in `is_end_stream` as often as in a final `None`.
        if self.ended || self.body.is_end_stream() {
            if let Some(give_back) = self.lease.take() {
                give_back();
            }
        }
    }
}
