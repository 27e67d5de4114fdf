//! A real PostgreSQL for the tests: never a mock.
//!
//! [`database`] gives each test its own fresh database on the server named by
//! `ECLGATE_TEST_POSTGRES_URL` (else the role and database `.ci/run` creates on the local cluster:
//! `postgres://ecl_test:ecl_test@127.0.0.1:5432/ecl_test`), falling back to a throwaway
//! cluster. [`Cluster`] is that throwaway cluster: `initdb` in a temporary directory, on its
//! own port, so a test may stop and start it without disturbing any other test.
//!
//! When no PostgreSQL can be found, a test says so loudly and passes as skipped; with
//! `CI=true` it fails instead.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const DEFAULT_URL: &str = "postgres://ecl_test:ecl_test@127.0.0.1:5432/ecl_test?sslmode=disable";

/// Reports a missing PostgreSQL: a failure in CI, a loud skip elsewhere.
pub fn unavailable(test: &str, why: &str) {
    let message = format!(
        "no PostgreSQL for `{test}`: {why}. Install and start one (Debian: `apt-get install -y \
         postgresql && pg_ctlcluster 15 main start`, then `.ci/run`'s role and database), or \
         set ECLGATE_TEST_POSTGRES_URL=postgres://user:pw@host/db to a role with CREATEDB"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("\n!!!!!!!! SKIPPED !!!!!!!! {message}\n");
}

/// A database of its own for one test; dropped when the guard is.
pub struct Database {
    pub url: String,
    admin_url: String,
    name: String,
    _cluster: Option<Cluster>,
}

impl Drop for Database {
    fn drop(&mut self) {
        if self._cluster.is_some() {
            return; // the whole cluster goes
        }
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside any runtime guarantee: a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(client) = connect(&admin).await {
                    let _ = client
                        .simple_query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A fresh, empty database, or `None` (reported by [`unavailable`]) when there is none.
pub async fn database(test: &str) -> Option<Database> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let admin_url =
        std::env::var("ECLGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    let name = format!(
        "ecl_t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    match connect(&admin_url).await {
        Ok(client) => match client
            .simple_query(&format!("CREATE DATABASE {name}"))
            .await
        {
            Ok(_) => Some(Database {
                url: with_database(&admin_url, &name),
                admin_url,
                name,
                _cluster: None,
            }),
            Err(err) => {
                unavailable(test, &format!("cannot create a database: {err}"));
                None
            }
        },
        Err(shared) => match Cluster::create() {
            Ok(cluster) => Some(Database {
                url: cluster.url(),
                admin_url: cluster.url(),
                name: "postgres".into(),
                _cluster: Some(cluster),
            }),
            Err(err) => {
                unavailable(
                    test,
                    &format!("`{DEFAULT_URL}`: {shared}; no throwaway cluster either: {err}"),
                );
                None
            }
        },
    }
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    if query.is_empty() {
        format!("{base}/{name}")
    } else {
        format!("{base}/{name}?{query}")
    }
}

/// A PostgreSQL cluster of its own in a temporary directory, trusting local connections.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// Run the server as `postgres` (it refuses to run as root).
    as_postgres: bool,
}

impl Cluster {
    pub fn create() -> Result<Cluster, String> {
        let bin = bin_dir().ok_or("no `initdb` found (pg_config --bindir, /usr/lib/postgresql)")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let as_postgres = is_root();
        if as_postgres {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .map_err(|e| e.to_string())?;
        }
        let port = free_port();
        let cluster = Cluster {
            dir,
            bin,
            port,
            as_postgres,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        cluster.start()?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// Starts the server and waits until it takes connections.
    pub fn start(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-o",
                &options,
                "-l",
                self.dir.path().join("server.log").to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err("the throwaway cluster did not open its port".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Turns TLS on with a certificate for 127.0.0.1 from a throwaway CA and refuses every
    /// connection without TLS (`hostssl` only); restarts the server. Returns the CA's PEM file.
    pub fn require_tls(&self) -> Result<PathBuf, String> {
        let (ca_pem, cert_pem, key_pem) = throwaway_ca_and_leaf();
        let data = self.data();
        let ca = self.dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem).map_err(|e| e.to_string())?;
        std::fs::write(data.join("server.crt"), cert_pem).map_err(|e| e.to_string())?;
        std::fs::write(data.join("server.key"), key_pem).map_err(|e| e.to_string())?;
        let mut conf =
            std::fs::read_to_string(data.join("postgresql.conf")).map_err(|e| e.to_string())?;
        conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(data.join("postgresql.conf"), conf).map_err(|e| e.to_string())?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .map_err(|e| e.to_string())?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .map_err(|e| e.to_string())?;
        }
        if self.as_postgres {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data)
                .status()
                .map_err(|e| e.to_string())?;
        }
        self.stop()?;
        self.start()?;
        Ok(ca)
    }

    /// Stops the server at once (`immediate`: like a crash, connections cut).
    pub fn stop(&self) -> Result<(), String> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let binary = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&binary);
            command
        } else {
            Command::new(&binary)
        };
        let out = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn bin_dir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn with_database_replaces_only_the_database() {
    assert_eq!(
        with_database("postgres://u:p@h:5432/ecl_test?sslmode=disable", "x"),
        "postgres://u:p@h:5432/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
}

/// A CA (PEM) and a server certificate and key (PEM) for 127.0.0.1 signed by it.
pub fn throwaway_ca_and_leaf() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        DnType::CommonName,
        "ecl-gate PostgreSQL test CA (throwaway)",
    );
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    (ca_cert.pem(), leaf.pem(), leaf_key.serialize_pem())
}
