//! Telling a wrong clock from an untrusted peer.
//!
//! A Pi has no battery-backed clock: until NTP answers it may believe it is
//! 1970, or the day it was last shut down. Every certificate then looks "not
//! yet valid" or "expired", and the honest advice is to fix the time, not
//! to distrust the relay.

/// What to do about it, for every place that reports the failure.
pub const FIX: &str =
    "a certificate is outside its validity dates at this machine's time: the clock is probably wrong (timedatectl set-ntp true)";

/// Whether a TLS failure's text is one that a wrong clock explains.
pub fn explains(err: &str) -> bool {
    ["NotValidYet", "Expired", "not valid yet", "expired"]
        .iter()
        .any(|w| err.contains(w))
}

/// `reason`, with [`FIX`] added when a wrong clock explains it: what the
/// running agent logs and `keyway-agent status` shows while it retries.
pub fn annotate(reason: String) -> String {
    if explains(&reason) {
        format!("{reason} ({FIX})")
    } else {
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::{annotate, explains, FIX};

    #[test]
    fn dates_are_the_clocks_fault_and_issuers_are_not() {
        assert!(explains("invalid peer certificate: NotValidYet"));
        assert!(explains("invalid peer certificate: Expired"));
        assert!(!explains("invalid peer certificate: UnknownIssuer"));
        assert!(!explains("connection refused"));
    }

    #[test]
    fn a_retry_reason_carries_the_fix_only_when_the_clock_explains_it() {
        let r = annotate("invalid peer certificate: Expired".into());
        assert!(
            r.starts_with("invalid peer certificate: Expired (") && r.contains(FIX),
            "{r}"
        );
        assert_eq!(annotate("timed out".into()), "timed out");
    }
}
