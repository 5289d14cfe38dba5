//! A userspace UDP impairment proxy between agent and relay: delay, random
//! loss and blackholing, without root and without `tc netem` (which this
//! kernel lacks). Loopback only; it stops with the test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// What the path does to packets, both directions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impairment {
    /// Probability of dropping each packet (0.0 to 1.0).
    pub loss: f64,
    /// Delay added to each packet, one way.
    pub delay: Duration,
    /// Drop everything, silently.
    pub blackhole: bool,
}

/// A running proxy.
pub struct UdpProxy {
    /// Where the agent should send.
    pub addr: SocketAddr,
    settings: Arc<Mutex<Impairment>>,
    counts: Arc<Counts>,
    stop: CancellationToken,
}

/// Datagrams the proxy forwarded and dropped, both directions.
#[derive(Debug, Default)]
struct Counts {
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl UdpProxy {
    /// Forwards datagrams between whoever talks to it and `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("constant"), upstream).await
    }

    /// The same, listening on `listen`.
    pub async fn start_on(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind(listen).await?);
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        back.connect(upstream).await?;
        let addr = front.local_addr()?;
        let settings = Arc::new(Mutex::new(Impairment::default()));
        let counts = Arc::new(Counts::default());
        let stop = CancellationToken::new();
        tokio::spawn(run(front, back, settings.clone(), counts.clone(), stop.clone()));
        Ok(Self {
            addr,
            settings,
            counts,
            stop,
        })
    }

    /// Datagrams forwarded and dropped so far: a test reads these to prove
    /// its traffic really went through the proxy and really lost packets.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counts.forwarded.load(Ordering::Relaxed),
            self.counts.dropped.load(Ordering::Relaxed),
        )
    }

    /// Changes the impairment from now on.
    pub fn set(&self, imp: Impairment) {
        *self.settings.lock().expect("impairment lock poisoned") = imp;
    }
}

async fn run(
    front: Arc<UdpSocket>,
    back: Arc<UdpSocket>,
    settings: Arc<Mutex<Impairment>>,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    let mut client: Option<SocketAddr> = None;
    let mut rng = Lcg(0x9e37_79b9_7f4a_7c15);
    let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = front.recv_from(&mut up) => {
                let Ok((n, from)) = r else { continue };
                client = Some(from);
                let imp = *settings.lock().expect("impairment lock poisoned");
                if pass(&imp, &mut rng, &counts) {
                    let (sock, data) = (back.clone(), up[..n].to_vec());
                    later(imp.delay, async move { let _ = sock.send(&data).await; });
                }
            }
            r = back.recv(&mut down) => {
                let (Ok(n), Some(to)) = (r, client) else { continue };
                let imp = *settings.lock().expect("impairment lock poisoned");
                if pass(&imp, &mut rng, &counts) {
                    let (sock, data) = (front.clone(), down[..n].to_vec());
                    later(imp.delay, async move { let _ = sock.send_to(&data, to).await; });
                }
            }
        }
    }
}

fn pass(imp: &Impairment, rng: &mut Lcg, counts: &Counts) -> bool {
    let pass = !imp.blackhole && rng.unit() >= imp.loss;
    let counter = if pass { &counts.forwarded } else { &counts.dropped };
    counter.fetch_add(1, Ordering::Relaxed);
    pass
}

fn later(delay: Duration, f: impl std::future::Future<Output = ()> + Send + 'static) {
    if delay.is_zero() {
        tokio::spawn(f);
    } else {
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            f.await
        });
    }
}

/// A small deterministic generator: loss patterns repeat run to run.
struct Lcg(u64);

impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}
