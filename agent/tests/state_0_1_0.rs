//! An agent upgraded over a 0.1.0 install reads what 0.1.0 wrote: its
//! config, integration tokens and event buffer (the fixture folder is
//! those files, byte for byte), and records the state format for the
//! next upgrade.

use std::path::Path;
use std::time::Duration;

use keyway_agent::access::tokens::TokenStore;
use keyway_agent::hub::{store, HubOptions};
use keyway_agent::AgentConfig;

const TOKEN: &str = "kw_f2ccc5fad5e2a73f69e74a3e93e36fc3fde5cf9a1aa6e45d";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn files_written_by_0_1_0_are_read_and_marked_format_1() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-0.1.0"),
        dir.path(),
    );
    let state = dir.path().join("state");
    assert!(!state.join("format").exists());

    let cfg = AgentConfig::load(&dir.path().join("etc/agent.toml")).unwrap();
    assert_eq!(cfg.format, None, "0.1.0 wrote no format key");
    assert_eq!(cfg.relay, "relay.example.test:443");
    assert_eq!(cfg.state_dir().canonicalize().unwrap(), state.canonicalize().unwrap());
    assert_eq!(std::fs::read_to_string(state.join("format")).unwrap(), "1\n");

    let entry = TokenStore::new(&state).verify(TOKEN).unwrap();
    assert_eq!(entry.name, "crm");
    assert_eq!(entry.preset.as_deref(), Some("read-only"));

    let opts = HubOptions {
        buffer: 100,
        max_bytes: 64 * 1024 * 1024,
        retention: Duration::from_secs(100 * 365 * 86_400),
        queue: 10,
    };
    let (loaded, _writer) = store::load(&cfg.events_path(), &opts).unwrap();
    assert_eq!(loaded.epoch, "5e1fb6a0c2d4", "the numbering goes on in the same epoch");
    let seqs: Vec<u64> = loaded.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [11, 12]);
    assert_eq!(loaded.next_seq, 13);
}
