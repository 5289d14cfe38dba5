//! Byte-stream helpers shared by both ends.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Copies `a` ↔ `b` until one direction ends, then gives the other at most
/// `linger` to finish before dropping both. Unlike `copy_bidirectional`, a
/// peer that never closes its half cannot hold the pair (and whatever
/// connection carries it) open forever. Returns bytes copied a→b and b→a.
pub async fn splice<A, B>(a: A, b: B, linger: Duration) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let ab = async move {
        let n = tokio::io::copy(&mut ar, &mut bw).await.unwrap_or(0);
        let _ = bw.shutdown().await;
        n
    };
    let ba = async move {
        let n = tokio::io::copy(&mut br, &mut aw).await.unwrap_or(0);
        let _ = aw.shutdown().await;
        n
    };
    tokio::pin!(ab, ba);
    tokio::select! {
        n = &mut ab => (n, tokio::time::timeout(linger, ba).await.unwrap_or(0)),
        n = &mut ba => (tokio::time::timeout(linger, ab).await.unwrap_or(0), n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn copies_both_ways_and_does_not_wait_forever_on_a_silent_peer() {
        let (mut client, a) = tokio::io::duplex(64);
        let (b, mut server) = tokio::io::duplex(64);
        let task = tokio::spawn(splice(a, b, Duration::from_millis(50)));
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        // The server side ends; the client never closes: the splice still ends.
        drop(server);
        let (_, down) = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("splice ended")
            .unwrap();
        assert_eq!(down, 4);
        drop(client);
    }
}
