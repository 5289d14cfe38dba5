//! WebSocket frames as they pass through, untouched.
//!
//! Each frame's bytes go on as they came (masks, fragments, pings and pongs
//! included), so the two ends still talk to each other: the far side's
//! pings reach the client and the client's pings reach the far side. Only
//! the frame headers are read (tungstenite parses them), which gives the
//! frame boundaries where Keyway's own pings and close frames may go, and
//! the whole of small control frames, which lets the pongs that answer its
//! own pings be swallowed. What the two ends agreed on passes too: Keyway's
//! own frames are control frames, which extensions such as
//! permessage-deflate leave uncompressed.

use std::io::{self, Cursor};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};

/// The payload of Keyway's own pings; the pongs carrying it are not
/// forwarded.
pub(super) const RELAY_PING: &[u8] = b"keyway-relay";
/// A control frame's payload is at most this long (RFC 6455 §5.5).
const MAX_CONTROL: u64 = 125;
/// How much is read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// How a pass ended.
#[derive(Debug)]
pub(super) enum Fail {
    /// The side read from ended or failed (`None`: cleanly, between frames).
    Read(Option<io::Error>),
    /// The side written to failed.
    Write(io::Error),
    /// The side read from broke the framing.
    Protocol(String),
}

/// A frame header as read, its raw bytes at the front of the buffer.
struct Head {
    header: FrameHeader,
    raw_len: usize,
    payload_len: u64,
}

/// The frames arriving on one side.
pub(super) struct Frames<'a, R> {
    io: R,
    buf: BytesMut,
    /// Set on every read that brings bytes (a client sending one long,
    /// slow frame is not silent).
    heard: Option<&'a AtomicBool>,
}

impl<'a, R: AsyncRead + Unpin> Frames<'a, R> {
    pub(super) fn new(io: R) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            heard: None,
        }
    }

    /// As [`Frames::new`], marking `heard` whenever bytes arrive.
    pub(super) fn heard_by(io: R, heard: &'a AtomicBool) -> Self {
        Self {
            heard: Some(heard),
            ..Self::new(io)
        }
    }

    /// Reads more; `Fail::Read(None)` when the side ended.
    async fn fill(&mut self) -> Result<(), Fail> {
        self.buf.reserve(READ_CHUNK);
        match self.io.read_buf(&mut self.buf).await {
            Ok(0) => Err(Fail::Read(None)),
            Ok(_) => {
                if let Some(heard) = self.heard {
                    heard.store(true, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(e) => Err(Fail::Read(Some(e))),
        }
    }

    /// The next frame's header. Cancel-safe: what was read stays buffered.
    async fn head(&mut self) -> Result<Head, Fail> {
        loop {
            let mut cursor = Cursor::new(&self.buf[..]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, payload_len))) => {
                    let raw_len = cursor.position() as usize;
                    return Ok(Head {
                        header,
                        raw_len,
                        payload_len,
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(Fail::Protocol(e.to_string())),
            }
            let was_empty = self.buf.is_empty();
            match self.fill().await {
                Err(Fail::Read(None)) if !was_empty => {
                    return Err(Fail::Read(Some(io::ErrorKind::UnexpectedEof.into())));
                }
                other => other?,
            }
        }
    }

    /// The whole of a short frame (header and payload), taken off the buffer.
    async fn take(&mut self, head: &Head) -> Result<BytesMut, Fail> {
        let total = head.raw_len + head.payload_len as usize;
        while self.buf.len() < total {
            self.fill().await.map_err(truncated)?;
        }
        Ok(self.buf.split_to(total))
    }

    /// Moves a frame (header and payload) to `to` as it arrives.
    async fn pass<W: AsyncWrite + Unpin>(&mut self, head: &Head, to: &mut W) -> Result<(), Fail> {
        let mut left = head.raw_len as u64 + head.payload_len;
        while left > 0 {
            if self.buf.is_empty() {
                self.fill().await.map_err(truncated)?;
            }
            let n = left.min(self.buf.len() as u64) as usize;
            let chunk = self.buf.split_to(n);
            to.write_all(&chunk).await.map_err(Fail::Write)?;
            left -= n as u64;
        }
        to.flush().await.map_err(Fail::Write)
    }
}

/// An end inside a frame is a failure, not a clean close.
fn truncated(e: Fail) -> Fail {
    match e {
        Fail::Read(None) => Fail::Read(Some(io::ErrorKind::UnexpectedEof.into())),
        other => other,
    }
}

fn is_control(h: &FrameHeader, c: Control) -> bool {
    h.opcode == OpCode::Control(c)
}

/// Client to tunnel, dropping the pongs to Keyway's pings. Ends after
/// passing a close frame (`Ok`), or with how it failed.
pub(super) async fn up<R, W>(mut from: Frames<'_, R>, mut to: W) -> Result<(), Fail>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let head = from.head().await?;
        if matches!(head.header.opcode, OpCode::Data(_)) {
            from.pass(&head, &mut to).await?;
            continue;
        }
        if head.payload_len > MAX_CONTROL {
            return Err(Fail::Protocol("control frame over 125 bytes".into()));
        }
        let frame = from.take(&head).await?;
        if is_control(&head.header, Control::Pong) && unmasked(&head, &frame) == RELAY_PING {
            continue;
        }
        to.write_all(&frame).await.map_err(Fail::Write)?;
        to.flush().await.map_err(Fail::Write)?;
        if is_control(&head.header, Control::Close) {
            return Ok(());
        }
    }
}

/// A control frame's payload with the client's mask taken off.
fn unmasked(head: &Head, frame: &[u8]) -> Vec<u8> {
    let mut payload = frame[head.raw_len..].to_vec();
    if let Some(mask) = head.header.mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    payload
}

/// What Keyway itself says to the client, between frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Say {
    Ping,
    /// A close frame with this code; the pass ends after it.
    Close(u16),
}

/// Tunnel to client, with what Keyway has to `say` put between frames.
/// Ends after passing the tunnel's close frame or saying a close (`Ok`);
/// when the tunnel ends or breaks first it tells the client `on_tunnel_end`.
pub(super) async fn down<R, W>(
    mut from: Frames<'_, R>,
    mut to: W,
    mut say: mpsc::Receiver<Say>,
    on_tunnel_end: u16,
) -> Result<(), Fail>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let head = tokio::select! {
            biased;
            Some(what) = say.recv() => {
                let frame = match what {
                    Say::Ping => Frame::ping(RELAY_PING),
                    Say::Close(code) => close(code),
                };
                write(&mut to, frame).await?;
                match what {
                    Say::Ping => continue,
                    Say::Close(_) => return Ok(()),
                }
            }
            head = from.head() => head,
        };
        let head = match head {
            Ok(head) => head,
            Err(e @ (Fail::Read(_) | Fail::Protocol(_))) => {
                let _ = write(&mut to, close(on_tunnel_end)).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        from.pass(&head, &mut to).await?;
        if is_control(&head.header, Control::Close) {
            return Ok(());
        }
    }
}

fn close(code: u16) -> Frame {
    Frame::close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: "".into(),
    }))
}

async fn write<W: AsyncWrite + Unpin>(to: &mut W, frame: Frame) -> Result<(), Fail> {
    let mut bytes = Vec::with_capacity(frame.len());
    frame
        .format(&mut bytes)
        .map_err(|e| Fail::Write(io::Error::other(e.to_string())))?;
    to.write_all(&bytes).await.map_err(Fail::Write)?;
    to.flush().await.map_err(Fail::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::Data;

    fn masked(op: Frame, mask: [u8; 4]) -> Vec<u8> {
        let mut f = op;
        f.header_mut().mask = Some(mask);
        let mut out = Vec::new();
        f.format(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn frames_pass_byte_for_byte_and_the_relays_pongs_stop_here() {
        let mut input = Vec::new();
        input.extend(masked(
            Frame::message("hello", OpCode::Data(Data::Text), true),
            [1, 2, 3, 4],
        ));
        input.extend(masked(Frame::pong(RELAY_PING), [9, 8, 7, 6]));
        input.extend(masked(Frame::pong(&b"agent"[..]), [5, 5, 5, 5]));
        let big = vec![7u8; 100_000];
        input.extend(masked(
            Frame::message(big, OpCode::Data(Data::Binary), true),
            [0, 1, 0, 1],
        ));
        let close_frame = masked(close(1000), [4, 4, 4, 4]);
        input.extend(close_frame.clone());
        input.extend(b"after close, never read".iter());
        let heard = AtomicBool::new(false);
        let mut out = Vec::new();
        up(Frames::heard_by(&input[..], &heard), &mut out).await.unwrap();
        assert!(heard.load(Ordering::Relaxed));
        let ours = masked(Frame::pong(RELAY_PING), [9, 8, 7, 6]);
        let mut expected = input.clone();
        let at = expected.windows(ours.len()).position(|w| w == ours).unwrap();
        expected.drain(at..at + ours.len());
        expected.truncate(expected.len() - b"after close, never read".len());
        assert_eq!(out, expected);
    }

    #[tokio::test]
    async fn a_tunnel_that_ends_between_frames_is_told_to_the_client_as_1011() {
        let mut input = Vec::new();
        Frame::message("cut", OpCode::Data(Data::Text), true)
            .format(&mut input)
            .unwrap();
        for cut in [0, 1] {
            let (_tx, rx) = mpsc::channel(1);
            let mut out = Vec::new();
            let _ = down(Frames::new(&input[..cut]), &mut out, rx, 1011).await;
            assert_eq!(out, [0x88, 0x02, 0x03, 0xf3], "cut at {cut}");
        }
        // Inside a frame nothing more can be said: the client is dropped.
        let (_tx, rx) = mpsc::channel(1);
        let mut out = Vec::new();
        let end = down(Frames::new(&input[..3]), &mut out, rx, 1011).await;
        assert!(matches!(end, Err(Fail::Read(Some(_)))), "{end:?}");
        assert_eq!(out, input[..3]);
    }

    #[tokio::test]
    async fn a_reserved_opcode_is_a_protocol_error() {
        let end = up(Frames::new(&[0x83u8, 0x80, 0, 0, 0, 0][..]), Vec::new()).await;
        assert!(matches!(end, Err(Fail::Protocol(_))), "{end:?}");
        let long_ping = masked(Frame::ping(vec![0u8; 126]), [0; 4]);
        let end = up(Frames::new(&long_ping[..]), Vec::new()).await;
        assert!(matches!(end, Err(Fail::Protocol(_))), "{end:?}");
    }
}
