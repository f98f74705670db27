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
