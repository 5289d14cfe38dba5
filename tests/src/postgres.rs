//! A throwaway PostgreSQL server for tests: `initdb` into a temporary
//! directory and `pg_ctl start` on a free loopback port, as the `postgres`
//! user when the tests run as root (CI does; PostgreSQL refuses root).
//! Stopped and deleted on drop. `scripts/test` installs Debian's
//! `postgresql` package when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A running server. Databases are made per test with [`TempPostgres::database`].
pub struct TempPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
}

/// The environment variable naming a server shared by a whole test run
/// (`scripts/test`'s PostgreSQL pass; its port).
pub const SHARED_PORT_VAR: &str = "KEYWAY_TEST_POSTGRES_PORT";

/// A new database on the run's shared server, when there is one
/// ([`SHARED_PORT_VAR`]): `StackBuilder` then puts every relay's registry
/// on PostgreSQL.
pub fn shared_database() -> Option<String> {
    let port: u16 = std::env::var(SHARED_PORT_VAR).ok()?.parse().ok()?;
    Some(create_database(&bin_dir(), port))
}

/// `CREATE DATABASE` with a name unique across test processes; its URL.
fn create_database(bin: &Path, port: u16) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!("keyway_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let psql = bin.join("psql");
    let psql = if psql.exists() { psql } else { PathBuf::from("psql") };
    let out = Command::new(psql)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "keyway",
            "-d",
            "postgres",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "CREATE DATABASE: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("postgres://keyway@127.0.0.1:{port}/{name}")
}

/// The directory of `initdb` and `pg_ctl`: the newest
/// `/usr/lib/postgresql/*/bin`, or wherever `initdb` is on the PATH.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort_by_key(|p| {
        let v = p
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .unwrap_or("0");
        v.parse::<u32>().unwrap_or(0)
    });
    if let Some(newest) = versions.pop() {
        return newest;
    }
    let found = Command::new("sh").args(["-c", "command -v initdb"]).output();
    match found {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        _ => panic!("PostgreSQL is not installed (scripts/test installs Debian's postgresql package)"),
    }
}

impl TempPostgres {
    /// Starts a server; panics with the server's log if it does not start.
    pub fn start() -> Self {
        Self::start_on(|| crate::stack::free_port([127, 0, 0, 1].into()).expect("a free port"))
    }

    /// Starts a server on a port from `pick`, asking it again (a few times)
    /// when the port was taken between the choice and the server's bind.
    pub fn start_on(mut pick: impl FnMut() -> u16) -> Self {
        let root = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("keyway-pg")
            .tempdir()
            .expect("temp dir");
        let run_as = root.then(|| "postgres".to_string());
        if let Some(user) = &run_as {
            chown(dir.path(), user);
        }
        let mut pg = Self {
            bin: bin_dir(),
            port: pick(),
            run_as,
            dir,
        };
        let data = pg.dir.path().join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-U",
                "keyway",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        // The port was free when chosen, but another test may bind it
        // before the server does: a few fresh ports, then the log.
        for _ in 0..5 {
            match pg.try_resume() {
                Ok(()) => return pg,
                Err(why) if why.contains("Address already in use") => {
                    let _ = std::fs::remove_file(pg.dir.path().join("log"));
                    pg.port = pick();
                }
                Err(why) => panic!("{why}"),
            }
        }
        pg.resume();
        pg
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`); its
    /// data stays for [`TempPostgres::resume`].
    pub fn halt(&self) {
        let data = self.dir.path().join("data");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts the server (again) on its port with its data.
    pub fn resume(&self) {
        if let Err(why) = self.try_resume() {
            panic!("{why}");
        }
    }

    fn try_resume(&self) -> Result<(), String> {
        let data = self.dir.path().join("data");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        self.try_run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-l",
                log.to_str().expect("utf-8 path"),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        )
    }

    /// Turns TLS on and refuses plain TCP connections from then on (a
    /// restart); returns the PEM of the CA that issued the server's
    /// certificate (for 127.0.0.1 and localhost).
    pub fn require_tls(&self) -> PathBuf {
        let ca = keyway_certs::PrivateCa::generate("keyway test postgres ca").expect("a CA");
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = ca
            .issue_server(
                &["127.0.0.1".to_string(), "localhost".to_string()],
                &key,
                std::time::Duration::from_secs(86400),
            )
            .expect("a server certificate");
        let data = self.dir.path().join("data");
        let write = |name: &str, text: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let path = data.join(name);
            std::fs::write(&path, text).expect("write into the data directory");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            if let Some(user) = &self.run_as {
                chown(&path, user);
            }
        };
        write("server.crt", &cert.pem, 0o644);
        // PostgreSQL refuses a key others may read.
        write("server.key", &key.serialize_pem(), 0o600);
        let conf = std::fs::read_to_string(data.join("postgresql.conf")).expect("postgresql.conf");
        write(
            "postgresql.conf",
            &format!("{conf}\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"),
            0o600,
        );
        write(
            "pg_hba.conf",
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
            0o600,
        );
        self.halt();
        self.resume();
        let path = self.dir.path().join("postgres-ca.pem");
        std::fs::write(&path, ca.cert_pem()).expect("write the CA");
        path
    }

    /// A new, empty database on this server: its URL.
    pub fn database(&self) -> String {
        create_database(&self.bin, self.port)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://keyway@127.0.0.1:{}/{name}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn run(&self, tool: &str, args: &[&str]) {
        if let Err(why) = self.try_run(tool, args) {
            panic!("{why}");
        }
    }

    /// Runs a PostgreSQL tool; on failure, its output and the server's log.
    fn try_run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("PostgreSQL tool runs");
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        Err(format!(
            "{tool} failed: {}{}\n{log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let exe = self.bin.join("pg_ctl");
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let _ = cmd
            .args(["-D", &data.to_string_lossy(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// Whether this process runs as root (PostgreSQL will not).
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Gives `path` to `user`, so the server may write there.
fn chown(path: &Path, user: &str) {
    let out = Command::new("chown").arg(user).arg(path).output().expect("chown runs");
    assert!(
        out.status.success(),
        "chown {user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
