//! What a node tells its peer before a forwarded request: the site, the
//! client's address (for `X-Forwarded-For`) and the request id. A `u16`
//! length, then that many bytes of JSON; the request follows as HTTP/1.1.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest head accepted (a site name, an address and an id fit many times).
const MAX_HEAD: usize = 1024;

/// The head of one forwarded request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardHead {
    /// The site routed to by the node the client reached.
    pub site: String,
    /// The integration's address.
    pub client: SocketAddr,
    /// The request id that node gave it.
    pub request_id: String,
}

impl ForwardHead {
    /// Writes the head.
    pub async fn write(&self, io: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let len = u16::try_from(json.len())
            .ok()
            .filter(|&n| usize::from(n) <= MAX_HEAD)
            .ok_or_else(|| std::io::Error::other("forward head too large"))?;
        let mut buf = Vec::with_capacity(2 + json.len());
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&json);
        io.write_all(&buf).await
    }

    /// Reads a head; a malformed or oversized one is an error.
    pub async fn read(io: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Self> {
        let len = usize::from(io.read_u16().await?);
        if len > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("forward head of {len} bytes"),
            ));
        }
        let mut buf = vec![0; len];
        io.read_exact(&mut buf).await?;
        serde_json::from_slice(&buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_head_reads_back_and_garbage_is_refused() {
        let head = ForwardHead {
            site: "hq".into(),
            client: "[2001:db8::1]:4431".parse().unwrap(),
            request_id: "r-1".into(),
        };
        let mut buf = Vec::new();
        head.write(&mut buf).await.unwrap();
        assert_eq!(ForwardHead::read(&mut &buf[..]).await.unwrap(), head);
        let mut long = vec![0xff, 0xff];
        long.extend(vec![b'x'; 10]);
        assert!(ForwardHead::read(&mut &long[..]).await.is_err());
        assert!(ForwardHead::read(&mut &b"\x00\x03abc"[..]).await.is_err());
        assert!(ForwardHead::read(&mut &b"\x00"[..]).await.is_err());
    }
}
