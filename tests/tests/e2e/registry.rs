//! The registry's behaviour, the same cases on both stores: SQLite (one
//! relay) and PostgreSQL (several relays; a throwaway server per test,
//! see `keyway_tests::postgres`). Each case opens the store again for
//! every "other relay" or "admin CLI" it plays.

use keyway_relay::registry::conformance::{self, Open};
use keyway_relay::registry::postgres::PgStore;
use keyway_relay::registry::sqlite::SqliteStore;
use keyway_relay::registry::SiteStore;
use keyway_tests::postgres::TempPostgres;

fn on_sqlite(case: fn(Open)) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let open = || Box::new(SqliteStore::open(&path).unwrap()) as Box<dyn SiteStore>;
    case(&open);
}

fn on_postgres(case: fn(Open)) {
    let pg = TempPostgres::start();
    let url = pg.database();
    let open = || Box::new(PgStore::connect(&url).unwrap()) as Box<dyn SiteStore>;
    case(&open);
}

macro_rules! on_both {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn sqlite() {
                super::on_sqlite(super::conformance::$case);
            }

            #[test]
            fn postgres() {
                super::on_postgres(super::conformance::$case);
            }
        }
    )*};
}

on_both!(
    a_code_pairs_once_then_is_used,
    codes_expire_burn_and_die_when_replaced,
    tries_through_every_connection_are_one_counter,
    concurrent_completions_have_exactly_one_winner,
    revoke_refuses_the_certificate_and_survives_reopen,
    agent_reports_read_back,
    operators_lock_after_failures_and_unlock,
    site_limits_read_back_and_clear,
);

/// Every case of the suite is run above (a case added there and not here
/// fails this).
#[test]
fn every_case_runs_on_both_stores() {
    let here = include_str!("registry.rs");
    for (name, _) in conformance::CASES {
        assert!(
            here.contains(&format!("    {name},\n")),
            "{name} is not run on both stores"
        );
    }
}

/// Migrations run once however many relays start together, and a store
/// opened again finds the schema in place.
#[test]
fn nodes_starting_together_migrate_once() {
    let pg = TempPostgres::start();
    let url = pg.database();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| PgStore::connect(&url).unwrap());
        }
    });
    let store = PgStore::connect(&url).unwrap();
    store.add_site("hq", 0).unwrap();
    assert_eq!(store.list_sites().unwrap().len(), 1);
}

/// The tests' server starts on another port when the one it chose was
/// taken before it could bind it (stop 37's CI lost a run to that race).
#[test]
fn a_test_server_whose_port_was_taken_starts_on_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let mut picks = 0;
    let pg = TempPostgres::start_on(|| {
        picks += 1;
        if picks == 1 {
            taken_port
        } else {
            keyway_tests::stack::free_port([127, 0, 0, 1].into()).unwrap()
        }
    });
    assert_ne!(pg.port(), taken_port);
    let store = PgStore::connect(&pg.database()).unwrap();
    store.add_site("hq", 0).unwrap();
    assert_eq!(store.list_sites().unwrap().len(), 1);
}

/// A database that cannot be reached is a clear error, fast, that names
/// the database without its password.
#[test]
fn an_unreachable_database_is_a_clear_error_without_the_password() {
    let port = keyway_tests::stack::free_port([127, 0, 0, 1].into()).unwrap();
    let url = format!("postgres://keyway:s3cret@127.0.0.1:{port}/keyway");
    let started = std::time::Instant::now();
    let Err(e) = PgStore::connect(&url) else {
        panic!("connected to nothing")
    };
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let shown = e.to_string();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("unavailable") || shown.contains("database"), "{shown}");
}

/// The whole path on a PostgreSQL registry: pairing, a call through the
/// tunnel, `site list` and `site revoke` from the admin side (another
/// connection to the database), which the running relay enforces.
#[tokio::test]
async fn a_relay_on_postgres_pairs_serves_lists_and_revokes() {
    let pg = TempPostgres::start();
    let url = pg.database();
    let stack = keyway_tests::stack::Stack::builder()
        .registry_url(&url)
        .start()
        .await
        .unwrap();
    let r = stack.api().get("/api/v1/developer/doors").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    let cfg = keyway_relay::RelayConfig::load(&stack.relay_config).unwrap();
    let admin = |f: fn(&keyway_relay::RelayConfig) -> anyhow::Result<String>| {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || f(&cfg))
    };
    let listed = admin(|c| {
        let sites = keyway_relay::admin::list(c)?;
        Ok(format!(
            "{} {} {:?}",
            sites[0].name, sites[0].online, sites[0].transport
        ))
    })
    .await
    .unwrap()
    .unwrap();
    assert!(listed.starts_with("hq true Some("), "{listed}");

    admin(|c| {
        Ok(format!(
            "{:?}",
            keyway_relay::admin::revoke(c, keyway_tests::stack::SITE)?
        ))
    })
    .await
    .unwrap()
    .unwrap();
    // The relay reads the change from the database and cuts the tunnel.
    stack.until_offline(std::time::Duration::from_secs(5)).await;
    stack.shutdown().await.unwrap();
}

/// PostgreSQL going away under a running relay: the connected site keeps
/// answering, a pairing is refused with a clear message (and works once
/// the database is back), and a change made after its return reaches the
/// relay within 5 s.
#[tokio::test]
async fn a_database_outage_keeps_connected_sites_serving() {
    use keyway_agent::pair::{pair, ConsolePin, PairError, PairOptions};
    let pg = TempPostgres::start();
    let url = pg.database();
    let stack = keyway_tests::stack::Stack::builder()
        .registry_url(&url)
        .start()
        .await
        .unwrap();
    let cfg = keyway_relay::RelayConfig::load(&stack.relay_config).unwrap();
    let code = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || keyway_relay::admin::new_code(&cfg, keyway_tests::stack::SITE))
            .await
            .unwrap()
            .unwrap()
            .code
    };
    pg.halt();
    for _ in 0..20 {
        let r = stack.api().get("/api/v1/developer/doors").await.unwrap();
        assert_eq!(r.status, 200, "the connected site serves from memory: {r:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let again = |dir: &std::path::Path| PairOptions {
        code: code.clone(),
        relay: stack.relay_addr.to_string(),
        relay_ca: Some(stack.https_ca.clone()),
        console_url: stack.console.url.clone(),
        console: ConsolePin::Expect(stack.console.fingerprint()),
        config: dir.join("agent.toml"),
        state_dir: dir.to_path_buf(),
        force: true,
    };
    match pair(&again(dir.path())).await {
        Err(PairError::Refused { message, .. }) => {
            assert!(message.contains("registry database is unavailable"), "{message}")
        }
        other => panic!("a pairing without the registry: {other:?}"),
    }

    pg.resume();
    let back = std::time::Instant::now();
    // The code survived the outage: the pairing works now.
    pair(&again(dir.path())).await.unwrap();
    // The new pairing superseded the stack's agent's certificate: the relay
    // closes its tunnel, read from the database it is back on.
    stack.until_offline(std::time::Duration::from_secs(5)).await;
    let arrived = back.elapsed();
    assert!(
        arrived < std::time::Duration::from_secs(5),
        "the change arrived {arrived:?} after the database's return"
    );
    stack.shutdown().await.unwrap();
}

/// `[registry] tls_ca_file`: the relay reaches PostgreSQL over TLS that it
/// verifies, never falls back to plain text, and names a wrong CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_over_tls_verifies_the_database_and_never_goes_plain() {
    use keyway_relay::registry::postgres::PgStore;
    use keyway_relay::registry::SiteStore;
    let pg = TempPostgres::start();
    let ca = pg.require_tls();
    let url = pg.database();

    // A whole stack with its registry over verified TLS: paired, serving.
    let stack = keyway_tests::stack::Stack::builder()
        .registry_url(&url)
        .registry_tls_ca(&ca)
        .start()
        .await
        .unwrap();
    let r = stack.api().get("/api/v1/developer/doors").await.unwrap();
    assert_eq!(r.status, 200);

    let (plain_url, tls_url) = (url.clone(), url.clone());
    let outcome = keyway_tests::stack::off_runtime(move || {
        // The server refuses plain connections: what worked was TLS.
        let plain = PgStore::connect(&plain_url).err().map(|e| e.to_string());
        // Another CA: refused, naming the certificate.
        let other = keyway_certs::PrivateCa::generate("not the database's ca").unwrap();
        let wrong = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(wrong.path(), other.cert_pem()).unwrap();
        let mistrusted = PgStore::connect_with(&tls_url, Some(wrong.path()))
            .err()
            .map(|e| e.to_string());
        let sites = PgStore::connect_with(&tls_url, Some(&ca))
            .unwrap()
            .list_sites()
            .unwrap();
        (plain, mistrusted, sites.len())
    });
    let (plain, mistrusted, sites) = outcome;
    let plain = plain.expect("a plain connection is refused");
    assert!(plain.contains("no encryption") || plain.contains("pg_hba"), "{plain}");
    let mistrusted = mistrusted.expect("a certificate from another CA is refused");
    assert!(mistrusted.to_lowercase().contains("certificate"), "{mistrusted}");
    assert_eq!(sites, 1);
    eprintln!("plain: {plain}\nanother CA: {mistrusted}");
    stack.shutdown().await.unwrap();
}
