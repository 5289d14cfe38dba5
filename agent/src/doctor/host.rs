//! Checks of this machine rather than of Keyway's peers: its clock, its DNS,
//! its UDP buffers and the agent's own certificate.

use std::path::Path;

use super::{Check, Verdict};

/// Beyond this, TLS and the audit log go wrong: fail.
const CLOCK_FAIL_MS: i64 = 60_000;
/// Beyond this, the clock is not being kept: warn.
const CLOCK_WARN_MS: i64 = 5_000;
/// Below this receive/send buffer ceiling, QUIC drops bursts.
pub const UDP_BUFFER_MIN: u64 = 2 * 1024 * 1024;
/// Warn this long before the agent certificate expires.
const CERT_WARN_DAYS: i64 = 30;

/// The verdict on the relay's clock being `offset_ms` ahead of ours.
pub fn clock(offset_ms: i64) -> Check {
    let off = offset_ms.unsigned_abs();
    let side = if offset_ms > 0 { "behind" } else { "ahead of" };
    let what = format!("this machine's clock is {} {side} the relay's", human_ms(off));
    let fix = "turn on time sync (timedatectl set-ntp true) and allow NTP (UDP 123) out; a Raspberry Pi has no battery clock and keeps a wrong time until NTP answers";
    match offset_ms.abs() {
        d if d > CLOCK_FAIL_MS => Check::bad(Verdict::Fail, what, fix),
        d if d > CLOCK_WARN_MS => Check::bad(Verdict::Warn, what, fix),
        _ => Check::ok(format!(
            "clock agrees with the relay's (within {})",
            human_ms(off.max(1))
        )),
    }
}

/// `ms` in its largest sensible unit, rounded to the nearest: a clock 3 h
/// off measures 3 h minus a few ms of round trip, which is "3 h", not "2 h".
fn human_ms(ms: u64) -> String {
    let near = |unit: u64| (ms + unit / 2) / unit;
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{} s", near(1_000)),
        120_000..7_200_000 => format!("{} min", near(60_000)),
        7_200_000..172_800_000 => format!("{} h", near(3_600_000)),
        _ => format!("{} days", near(86_400_000)),
    }
}

/// Resolves the relay's host name (an address needs no DNS).
pub async fn dns(relay: &str) -> Check {
    let host = relay
        .rsplit_once(':')
        .map_or(relay, |(h, _)| h)
        .trim_matches(['[', ']']);
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Check::ok(format!("relay {relay} is an IP address: no DNS needed"));
    }
    let target = if relay.contains(':') {
        relay.to_string()
    } else {
        format!("{relay}:443")
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::lookup_host(target)).await {
        Ok(Ok(mut addrs)) => match addrs.next() {
            Some(a) => Check::ok(format!("DNS: {host} is {}", a.ip())),
            None => dns_failed(host, "no address"),
        },
        Ok(Err(e)) => dns_failed(host, &e.to_string()),
        Err(_) => dns_failed(host, "no answer within 10 s"),
    }
}

fn dns_failed(host: &str, why: &str) -> Check {
    Check::bad(
        Verdict::Fail,
        format!("DNS: cannot resolve {host}: {why}"),
        "check this network's DNS server (/etc/resolv.conf, the router's DHCP settings) and the relay name in the config",
    )
}

/// The kernel's UDP buffer ceilings, from `/proc/sys/net/core`.
pub fn udp_buffers() -> Check {
    let read = |name: &str| {
        std::fs::read_to_string(Path::new("/proc/sys/net/core").join(name))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    match (read("rmem_max"), read("wmem_max")) {
        (Some(r), Some(w)) => udp_buffer_verdict(r, w),
        _ => Check::bad(
            Verdict::Warn,
            "UDP buffer sizes unreadable (/proc/sys/net/core)".into(),
            "nothing to do unless QUIC transfers are slow",
        ),
    }
}

/// The verdict on `rmem_max` and `wmem_max`.
pub fn udp_buffer_verdict(rmem: u64, wmem: u64) -> Check {
    if rmem >= UDP_BUFFER_MIN && wmem >= UDP_BUFFER_MIN {
        return Check::ok(format!(
            "UDP buffers: rmem_max {} KiB, wmem_max {} KiB",
            rmem / 1024,
            wmem / 1024
        ));
    }
    Check::bad(
        Verdict::Warn,
        format!(
            "UDP buffers are small (rmem_max {} KiB, wmem_max {} KiB; QUIC wants {} KiB): large transfers drop packets",
            rmem / 1024,
            wmem / 1024,
            UDP_BUFFER_MIN / 1024
        ),
        "sudo sysctl -p /usr/lib/sysctl.d/60-keyway-quic.conf (the package installs it; it applies at boot)",
    )
}

/// The agent certificate's expiry.
pub fn agent_cert(path: &Path) -> Check {
    let der = match keyway_certs::files::load_certs(path) {
        Ok(mut c) => c.remove(0),
        Err(e) => {
            return Check::bad(
                Verdict::Fail,
                format!("agent certificate: {e}"),
                "pair again: keyway-agent pair --force CODE …",
            )
        }
    };
    match keyway_certs::public::summarize(&der) {
        Ok(s) => cert_verdict(s.not_after, crate::access::tokens::now() as i64),
        Err(e) => Check::bad(
            Verdict::Fail,
            format!("agent certificate {}: {e}", path.display()),
            "pair again: keyway-agent pair --force CODE …",
        ),
    }
}

/// The verdict on a certificate valid until `not_after` (Unix seconds).
pub fn cert_verdict(not_after: i64, now: i64) -> Check {
    let days = (not_after - now) / 86400;
    let fix =
        "ask the relay operator for a new code (keyway-relay site code SITE) and run keyway-agent pair --force CODE …";
    if not_after <= now {
        Check::bad(
            Verdict::Fail,
            "the agent certificate has expired: the relay refuses this agent".into(),
            fix,
        )
    } else if days < CERT_WARN_DAYS {
        Check::bad(
            Verdict::Warn,
            format!("the agent certificate expires in {days} days"),
            fix,
        )
    } else {
        Check::ok(format!("agent certificate valid for {days} more days"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_verdicts_name_the_direction_and_size() {
        assert_eq!(clock(300).verdict, Verdict::Ok);
        let c = clock(-7_200_000);
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.what.contains("2 h ahead of"), "{}", c.what);
        assert!(c.fix.unwrap().contains("timedatectl"));
        let c = clock(10_000);
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.what.contains("10 s behind"), "{}", c.what);
        // A measured offset a few ms short of the truth names the truth.
        let c = clock(-(3 * 3_600_000 - 4));
        assert!(c.what.contains("3 h ahead of"), "{}", c.what);
        assert!(clock(9_999).what.contains("10 s behind"));
    }

    #[test]
    fn small_udp_buffers_warn_with_the_sysctl_fix() {
        assert_eq!(udp_buffer_verdict(7 << 20, 7 << 20).verdict, Verdict::Ok);
        let c = udp_buffer_verdict(212_992, 212_992);
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.what.contains("208 KiB"), "{}", c.what);
        assert!(c.fix.unwrap().contains("60-keyway-quic.conf"));
    }

    #[test]
    fn certificate_expiry_warns_a_month_ahead_and_fails_after() {
        let day = 86400;
        assert_eq!(cert_verdict(1000 * day, 0).verdict, Verdict::Ok);
        assert_eq!(cert_verdict(10 * day, 0).verdict, Verdict::Warn);
        assert_eq!(cert_verdict(10 * day, 11 * day).verdict, Verdict::Fail);
    }

    #[tokio::test]
    async fn an_address_needs_no_dns_and_localhost_resolves() {
        assert_eq!(dns("127.0.0.1:4433").await.verdict, Verdict::Ok);
        assert_eq!(dns("[::1]:4433").await.verdict, Verdict::Ok);
        let c = dns("localhost:4433").await;
        assert_eq!(c.verdict, Verdict::Ok, "{}", c.what);
    }
}
