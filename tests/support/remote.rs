//! Real servers the SSH and GitOps deploy targets talk to, started by the
//! tests on 127.0.0.1: `sshd` (with the fixture host key, key auth for the
//! `deploy` account that `scripts/services.sh` creates) and `git daemon`
//! (serving bare repositories, push enabled).
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::plugins::root;

/// The account the tests log in as over SSH.
pub const SSH_USER: &str = "deploy";

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_port(port: u16, within: Duration, what: &str, child: &mut Child) {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before listening on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within {within:?}");
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A fresh ed25519 key pair `dir/NAME` (no passphrase): the private key's
/// path and the public key as `TYPE BASE64` (as a pipeline pins it).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let p = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "pipeline-tests"])
        .arg("-f")
        .arg(&p)
        .status()
        .expect("ssh-keygen");
    assert!(st.success(), "ssh-keygen");
    let public = std::fs::read_to_string(p.with_extension("pub")).unwrap();
    (
        p,
        public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// `sshd -D` on 127.0.0.1:`port`; killed on drop.
pub struct Sshd {
    child: Child,
    pub port: u16,
    /// The client private key whose public half is authorized.
    pub client_key: PathBuf,
    pub log: PathBuf,
}

impl Sshd {
    /// The host key every pipeline pins for it (`tests/fixtures/sshd`).
    pub fn host_key() -> String {
        let p = root().join("tests/fixtures/sshd/host_ed25519_key.pub");
        let text = std::fs::read_to_string(p).unwrap();
        text.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn start(dir: &Path, port: u16) -> Self {
        assert!(
            Command::new("id")
                .arg(SSH_USER)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false),
            "no `{SSH_USER}` account: run `bash scripts/services.sh`"
        );
        let dir = dir.join(format!("sshd-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        // sshd reads authorized_keys as the user: the directory must be
        // reachable by `deploy`.
        chmod(&dir, 0o755);
        let host_key = dir.join("host_ed25519_key");
        std::fs::copy(
            root().join("tests/fixtures/sshd/host_ed25519_key"),
            &host_key,
        )
        .unwrap();
        chmod(&host_key, 0o600);
        let (client_key, _) = keygen(&dir, "client_key");
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        chmod(&authorized, 0o644);
        std::fs::create_dir_all("/run/sshd").ok();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin no\nAllowUsers {SSH_USER}\n\
                 AllowTcpForwarding no\nX11Forwarding no\nLogLevel VERBOSE\n",
                host_key.display(),
                authorized.display(),
                dir.join("sshd.pid").display(),
            ),
        )
        .unwrap();
        let log = dir.join("sshd.log");
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting /usr/sbin/sshd (run `bash scripts/services.sh`)");
        wait_port(port, Duration::from_secs(20), "sshd", &mut child);
        Sshd {
            child,
            port,
            client_key,
            log,
        }
    }

    /// The authorized private key, as a secret value.
    pub fn client_key_text(&self) -> String {
        std::fs::read_to_string(&self.client_key).unwrap()
    }

    /// What sshd logged (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `git daemon` serving the bare repositories under its base directory at
/// `git://127.0.0.1:PORT/NAME.git`, push enabled; killed on drop.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
    pub base: PathBuf,
    pub log: PathBuf,
}

impl GitDaemon {
    pub fn start(base: &Path, port: u16) -> Self {
        std::fs::create_dir_all(base).unwrap();
        let base = base.canonicalize().unwrap();
        let log = base.with_extension("log");
        // `git daemon` would run git-daemon as its child, which killing
        // `git` leaves behind holding the port: run it directly.
        let exec_path = Command::new("git").arg("--exec-path").output().unwrap();
        let exec_path = String::from_utf8_lossy(&exec_path.stdout)
            .trim()
            .to_string();
        let mut child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args([
                "--verbose",
                "--reuseaddr",
                "--export-all",
                "--enable=receive-pack",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(&base)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("git daemon");
        wait_port(port, Duration::from_secs(20), "git daemon", &mut child);
        GitDaemon {
            child,
            port,
            base,
            log,
        }
    }

    /// What the daemon logged (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}.git", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `deploy` account's home directory.
pub fn ssh_home() -> PathBuf {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("echo ~{SSH_USER}"))
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A deploy base directory on the "server" (`~deploy/NAME`): emptied when
/// made and on drop, with the slot processes the deploys started (they
/// detach from ssh, so nothing else would stop them) killed.
pub struct RemoteBase {
    pub name: String,
    pub path: PathBuf,
}

impl RemoteBase {
    pub fn new(name: &str) -> Self {
        let b = RemoteBase {
            name: name.to_string(),
            path: ssh_home().join(name),
        };
        b.clear();
        b
    }

    fn clear(&self) {
        for slot in ["blue", "green"] {
            let pid =
                std::fs::read_to_string(self.path.join(format!("{slot}.pid"))).unwrap_or_default();
            let pid = pid.trim();
            if pid.parse::<u32>().is_ok_and(|p| p > 1) {
                // The slot's process leads its own session: its group too.
                // `pkill -g`, never `kill -KILL -PGID`: procps-ng 4.0.2's
                // kill misreads that (and answers 0 for a group that does
                // not exist); run as root here, it took every process down.
                let _ = Command::new("pkill").args(["-KILL", "-g", pid]).output();
                let _ = Command::new("kill").args(["-s", "KILL", pid]).output();
            }
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }

    /// `live` (the slot serving), if any.
    pub fn live(&self) -> Option<String> {
        std::fs::read_to_string(self.path.join("live"))
            .ok()
            .map(|s| s.trim().to_string())
    }
}

impl Drop for RemoteBase {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A server's router (what nginx would be): the deploy-proxy binary from
/// `plugins/deploy-proxy/dist` (built by its build.sh), traffic on
/// 127.0.0.1:`port`, admin API (`PUT /pool`) on `admin`; killed on drop.
pub struct Router {
    child: Child,
    pub port: u16,
    pub admin: u16,
}

impl Router {
    pub fn start(port: u16, admin: u16) -> Self {
        let bin = root().join("plugins/deploy-proxy/dist/deploy-proxy");
        assert!(
            bin.exists(),
            "{} is missing: run plugins/deploy-proxy/build.sh",
            bin.display()
        );
        let mut child = Command::new(bin)
            .env("PROXY_PORT", port.to_string())
            .env("ADMIN_PORT", admin.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_port(admin, Duration::from_secs(10), "deploy-proxy", &mut child);
        Router { child, port, admin }
    }

    /// GET `path` through the router: (status, body), or None when
    /// nothing answered.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_string()))
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
