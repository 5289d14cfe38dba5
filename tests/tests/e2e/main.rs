//! The end-to-end suite, as one test binary: each module is one area
//! (linking eleven binaries against the whole stack cost minutes and
//! gigabytes of disk per build).

mod access;
mod api;
mod apt;
mod certs;
mod cluster;
mod cluster_acme;
mod cluster_faults;
mod conformance;
mod doctor;
mod doors;
mod duplicate;
mod edge;
mod errors;
mod events;
mod fallback;
mod faults;
mod full_disk;
mod hub;
mod impaired;
mod keepalive;
mod memory;
mod metrics;
mod operator;
mod operator_browser;
mod pair_exits;
mod pairing;
mod paths;
mod refused;
mod registry;
mod repin;
mod sealed;
mod secrets;
mod silent;
mod status;
mod systemd;
mod tunnel;
mod webhooks;
mod workflows;
