//! A cluster on this machine for tests: a nats-server of the test's own
//! (port and store directory: restartable, isolated from other tests), a
//! PostgreSQL schema of its own, `host agent` processes.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::plugins::host_bin;
use crate::services::free_port;

fn wait_port(port: u16, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A JetStream nats-server of one test.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    config: PathBuf,
}

impl Nats {
    pub fn start(dir: &Path) -> Self {
        Self::start_conf(dir, "")
    }

    /// With `extra` in its configuration (`authorization { … }`).
    pub fn start_conf(dir: &Path, extra: &str) -> Self {
        let port = free_port();
        let store = dir.join("nats-store");
        std::fs::create_dir_all(&store).unwrap();
        let config = dir.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n{extra}\n",
                store.display()
            ),
        )
        .unwrap();
        let mut n = Self {
            child: None,
            port,
            config,
        };
        n.restart();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kill -9 (what it stored on disk stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("nats-server")
            .args(["-c", self.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server (scripts/services.sh installs it)");
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(20), "nats-server");
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server's `[cluster]` table for `nats`, the database URL read from
/// `dir/database-url`.
pub fn cluster_table(dir: &Path, nats: &Nats, database_url: &str) -> String {
    let file = dir.join("database-url");
    std::fs::write(&file, database_url).unwrap();
    format!(
        "\n[cluster]\nnats = \"{}\"\ndatabase = {{ file = \"{}\" }}\n",
        nats.url(),
        file.display()
    )
}

/// A running `host agent`.
pub struct Agent {
    child: Option<Child>,
    pub name: String,
    pub lines: mpsc::Receiver<String>,
}

impl Agent {
    /// Start agent `name` with its own state under `dir/name`; `extra`
    /// goes into `[agent]`. Returns once it is ready.
    pub fn start(dir: &Path, name: &str, nats: &Nats, extra: &str) -> Self {
        Self::start_env(dir, name, nats, extra, &[])
    }

    /// [`Agent::start`] with these environment variables set.
    pub fn start_env(
        dir: &Path,
        name: &str,
        nats: &Nats,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).unwrap();
        let plugin_dirs = crate::plugins::target_dir().join("plugins");
        let config = home.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nname = \"{name}\"\nnats = \"{}\"\nstate-dir = \"state\"\nplugin-dirs = [\"{}\"]\n{extra}\n",
                nats.url(),
                plugin_dirs.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(host_bin())
            .args(["agent", "--config", config.to_str().unwrap()])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "host=info,warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting host agent");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let tag = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(": ready (") => break,
                Ok(_) => {}
                Err(_) => panic!("host agent {name} was not ready within 60 s"),
            }
        }
        Self {
            child: Some(child),
            name: name.to_string(),
            lines: rx,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kill -9: no goodbye, no acks.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A PostgreSQL cluster of one test (to stop and start it): initdb as the
/// `postgres` user (root may not), on a free port, in a directory that
/// user can reach.
pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
}

fn as_postgres(cmd: &str) -> std::process::ExitStatus {
    Command::new("su")
        .args(["postgres", "-c", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("su postgres")
}

fn pg_bin(name: &str) -> String {
    // Debian keeps them out of PATH.
    let found = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
        d.flatten()
            .map(|e| e.path().join("bin").join(name))
            .find(|p| p.exists())
    });
    found.map_or(name.to_string(), |p| p.display().to_string())
}

impl Postgres {
    pub fn start() -> Self {
        let dir = PathBuf::from(format!(
            "/tmp/pipeline-pg-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("chown")
            .args(["postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success(), "chown postgres {}", dir.display());
        let ok = as_postgres(&format!(
            "{} -D {}/data -A trust -U postgres",
            pg_bin("initdb"),
            dir.display()
        ));
        assert!(ok.success(), "initdb failed");
        let pg = Self {
            dir,
            port: free_port(),
        };
        pg.up();
        let ok = as_postgres(&format!(
            "{} -h 127.0.0.1 -p {} pipeline",
            pg_bin("createdb"),
            pg.port
        ));
        assert!(ok.success(), "createdb failed");
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/pipeline", self.port)
    }

    /// Start (waits until it accepts connections).
    pub fn up(&self) {
        let ok = as_postgres(&format!(
            "{} -D {d}/data -w -l {d}/log -o '-p {} -c listen_addresses=127.0.0.1 -k {d}' start",
            pg_bin("pg_ctl"),
            self.port,
            d = self.dir.display()
        ));
        assert!(ok.success(), "pg_ctl start failed");
        wait_port(self.port, Duration::from_secs(30), "PostgreSQL");
    }

    /// Stop (fast: connections are cut).
    pub fn down(&self) {
        as_postgres(&format!(
            "{} -D {}/data -w -m fast stop",
            pg_bin("pg_ctl"),
            self.dir.display()
        ));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
