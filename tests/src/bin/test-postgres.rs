//! A PostgreSQL server for a whole test run: `scripts/test` starts it for
//! the pass that puts every relay's registry on PostgreSQL (see
//! `keyway_tests::postgres::SHARED_PORT_VAR`). Writes the server's port to
//! the file named by its argument once it accepts connections; stops and
//! deletes the server on SIGTERM or SIGINT.

use keyway_tests::postgres::TempPostgres;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let ready = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: test-postgres READY_FILE"))?;
    let pg = TempPostgres::start();
    let tmp = format!("{ready}.tmp");
    std::fs::write(&tmp, pg.port().to_string())?;
    std::fs::rename(&tmp, &ready)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(pg);
    Ok(())
}
