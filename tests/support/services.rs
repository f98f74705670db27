//! The real services the Docker tests use, started by `scripts/services.sh`
//! (which `.ci/run` calls): the Docker engine and a registry with htpasswd
//! authentication on 127.0.0.1:5000.
use std::path::Path;
use std::process::Command;

pub const REGISTRY: &str = "127.0.0.1:5000";
pub const REGISTRY_USER: &str = "ci";
pub const REGISTRY_PASSWORD: &str = "ci-registry-password";

/// Fail the test with a clear message when the services are not up.
pub fn require() {
    let docker = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    assert!(
        docker.is_ok_and(|o| o.status.success()),
        "the Docker engine is not running: start it with `bash scripts/services.sh`"
    );
    let registry = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{REGISTRY}/v2/"),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    assert_eq!(
        registry.as_deref().unwrap_or(""),
        "401",
        "the registry is not answering on {REGISTRY}: start it with `bash scripts/services.sh`"
    );
}

/// A build context for a `FROM scratch` image holding a static busybox,
/// with a web root for `httpd` (nothing can be pulled here).
pub fn busybox_context(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy("/bin/busybox", dir.join("busybox")).expect(
        "/bin/busybox (Debian's busybox-static) is needed: bash scripts/services.sh installs it",
    );
    std::fs::write(
        dir.join("Dockerfile"),
        r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/sh", "-c", "mkdir -p /www /tmp && echo ok > /www/index.html"]
CMD ["/bin/sh"]
"#,
    )
    .unwrap();
}

/// Run the docker CLI and return stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Remove every local image whose repository contains `name` (test cleanup).
pub fn remove_images(name: &str) {
    let list = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let refs: Vec<&str> = list.lines().filter(|l| l.contains(name)).collect();
    if !refs.is_empty() {
        let mut args = vec!["image", "rm", "-f"];
        args.extend(refs);
        docker(&args);
    }
}

/// A fresh AWS-style access key pair as a credentials file's text, and
/// the key id (what Trivy's secret scanner flags). Generated at run time
/// so no key-shaped string lives in the repository.
pub fn leaked_aws_credentials() -> (String, String) {
    use std::fmt::Write;
    let seed = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
    // Access key ids are AKIA + 16 of [A-Z2-7].
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut key_id = String::from("AKIA");
    for b in seed.bytes().take(16) {
        key_id.push(alphabet[b as usize % 32] as char);
    }
    let mut secret = String::new();
    for b in uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .chain(uuid::Uuid::new_v4().as_bytes())
        .take(20)
    {
        let _ = write!(secret, "{b:02x}");
    }
    (
        format!("aws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"),
        key_id,
    )
}

/// Build `image` (FROM scratch) with a planted, freshly generated AWS key
/// pair in /app/creds.env. Returns the access key id.
pub fn planted_secret_image(dir: &Path, image: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let (creds, key_id) = leaked_aws_credentials();
    std::fs::write(dir.join("creds.env"), creds).unwrap();
    std::fs::copy("/bin/busybox", dir.join("busybox")).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY creds.env /app/creds.env\n",
    )
    .unwrap();
    let out = std::process::Command::new("docker")
        .args(["build", "-q", "-t", image, dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    key_id
}
