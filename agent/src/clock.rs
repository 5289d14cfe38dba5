//! Telling a wrong clock from an untrusted peer.
//!
//! A Pi has no battery-backed clock: until NTP answers it may believe it is
//! 1970, or the day it was last shut down. Every certificate then looks "not
//! yet valid" or "expired", and the honest advice is to fix the time, not
//! to distrust the relay. `keyway_transport::dial` tells that failure from
//! the others by its TLS alert or certificate error (`DialError::ClockWrong`).

/// What to do about it, for every place that reports the failure.
pub const FIX: &str =
    "a certificate is outside its validity dates at this machine's time: the clock is probably wrong (timedatectl set-ntp true)";
