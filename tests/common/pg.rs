//! A throwaway PostgreSQL cluster for the tests that need one: `initdb` in a
//! temporary directory (as the unprivileged `postgres` or `nobody` user when
//! the tests run as root), listening on a socket in that directory only, stopped
//! and removed when dropped. Skipped with a note where PostgreSQL is not
//! installed (`.ci/run` installs it). `AVALA_MIRROR_TEST_PG` (a libpq
//! `key=value` string without `dbname`, for a role that may create databases)
//! names a running server to use instead: each test makes a database of its
//! own there, and the tests that stop the server or need TLS make their own.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::PathBuf;
use std::process::{Command, Output};

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The user the server runs as, when the tests run as root.
    user: Option<String>,
    /// With [`Cluster::start_tls`]: TLS on 127.0.0.1 too, with a certificate
    /// for `localhost` signed by the CA in `ca.crt` in the cluster's directory.
    tls: bool,
    /// `AVALA_MIRROR_TEST_PG`: a server of someone else's, never stopped.
    external: Option<String>,
}

/// `name` on PATH, else in Debian's versioned directory.
fn program(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name));
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name));
    on_path.chain(debian).find(|p| p.is_file())
}

impl Cluster {
    pub fn start() -> Option<Cluster> {
        if let Some(base) = std::env::var("AVALA_MIRROR_TEST_PG")
            .ok()
            .filter(|v| !v.is_empty())
        {
            return Some(Cluster {
                dir: tempfile::tempdir().unwrap(),
                bin: PathBuf::new(),
                port: 0,
                user: None,
                tls: false,
                external: Some(base),
            });
        }
        Cluster::start_with(false)
    }

    /// A throwaway cluster of this test's own (it may be stopped, restarted).
    pub fn throwaway(&self) -> bool {
        self.external.is_none()
    }

    /// A cluster that also listens on 127.0.0.1 with TLS (see [`Cluster::ca`]).
    pub fn start_tls() -> Option<Cluster> {
        Cluster::start_with(true)
    }

    /// The CA certificate the server's certificate is signed by.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn start_with(tls: bool) -> Option<Cluster> {
        let Some(initdb) = program("initdb") else {
            eprintln!("SKIPPED: PostgreSQL (initdb) is not installed");
            return None;
        };
        let bin = initdb.parent().expect("a directory").to_path_buf();
        let dir = tempfile::tempdir().unwrap();
        let root =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
        let user = root.then(|| {
            let postgres = Command::new("id").arg("postgres").output();
            match postgres {
                Ok(o) if o.status.success() => "postgres".to_string(),
                _ => "nobody".to_string(),
            }
        });
        if let Some(u) = &user {
            let ids = |flag: &str| -> u32 {
                let o = Command::new("id").args([flag, u]).output().unwrap();
                String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
            };
            chown(dir.path(), Some(ids("-u")), Some(ids("-g"))).unwrap();
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let port = 20_000 + (std::process::id() % 20_000) as u16;
        let c = Cluster {
            dir,
            bin,
            port,
            user,
            tls,
            external: None,
        };
        let data = c.data();
        let out = c.as_server(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "avala",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            c.certificates();
        }
        c.restart();
        Some(c)
    }

    /// A CA, and a certificate for `localhost` it signs, for the server.
    fn certificates(&self) {
        let d = self.dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=avala-mirror test CA",
            "-days",
            "2",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            d.join("ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext",
        ]);
        for f in ["server.key", "server.crt"] {
            let path = d.join(f);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            if let Some(u) = &self.user {
                let o = Command::new("id").args(["-u", u]).output().unwrap();
                let uid: u32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
                chown(&path, Some(uid), None).unwrap();
            }
        }
    }

    /// The TCP address with TLS (with [`Cluster::start_tls`]), as libpq's URL.
    pub fn tls_url(&self, db: &str, options: &str) -> String {
        format!("postgresql://avala@localhost:{}/{db}?{options}", self.port)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn as_server(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        cmd.args(args).output().unwrap()
    }

    /// The socket directory and port, as libpq's `host` and `port`.
    pub fn conninfo(&self, db: &str) -> String {
        if let Some(base) = &self.external {
            return format!("{base} dbname={db}");
        }
        format!(
            "host={} port={} user=avala dbname={db}",
            self.dir.path().display(),
            self.port
        )
    }

    /// The rows of `sql` in database `db` (search path: the mirror's schema),
    /// as JSON objects keyed by column.
    pub fn rows(&self, db: &str, sql: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let out = self.psql_in(
            db,
            &[
                "-c",
                &format!("SELECT COALESCE(json_agg(t), '[]') FROM ({sql}) t"),
            ],
            Some("-c search_path=avala_mirror"),
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{sql}: {e}: {out}"))
    }

    /// Stops the server (as a restart or a crash would take it away).
    pub fn stop(&self) {
        assert!(
            self.throwaway(),
            "stopping a server the tests did not start"
        );
        let data = self.data();
        let out = self.as_server("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server (again, after [`Cluster::stop`]).
    pub fn restart(&self) {
        let data = self.data();
        let d = self.dir.path().display();
        let mut options = format!(
            "-k {d} -c listen_addresses='' -p {} -c fsync=off",
            self.port
        );
        if self.tls {
            options = format!(
                "-k {d} -c listen_addresses=127.0.0.1 -p {} -c fsync=off -c ssl=on \
                 -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key",
                self.port
            );
        }
        let log = format!("{}/log", self.dir.path().display());
        let out = self.as_server(
            "pg_ctl",
            &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// A psql session in `db` that runs `sql` and then stays (`pg_sleep`),
    /// as a person's open transaction does; killed with the returned child.
    pub fn session(&self, db: &str, sql: &str) -> std::process::Child {
        Command::new(program("psql").expect("psql beside initdb"))
            .arg(self.conninfo(db))
            .args([
                "-X",
                "-q",
                "-c",
                &format!("BEGIN; {sql}; SELECT pg_sleep(120)"),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Runs `sql` (statements, or a file with `-f`) through psql; its unaligned output.
    pub fn psql(&self, args: &[&str], options: Option<&str>) -> String {
        self.psql_in("postgres", args, options)
    }

    pub fn psql_in(&self, db: &str, args: &[&str], options: Option<&str>) -> String {
        let mut cmd = Command::new(program("psql").expect("psql beside initdb"));
        cmd.arg(self.conninfo(db))
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-At"])
            .args(args);
        if let Some(o) = options {
            cmd.env("PGOPTIONS", o);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "psql {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.throwaway() {
            return;
        }
        let data = self.data();
        let _ = self.as_server("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
    }
}
