//! Image scanning: the host exports the image from the engine and runs
//! Trivy on the tarball (`trivy image --input`), returning its JSON report.
//! The stage needs `grants.scan = true`, and scans only images it may use:
//! ones its `grants.docker` patterns name (build, run, tag, push, base or
//! scan). It never touches the engine or the scanner itself.
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::caps::audit::Audit;
use crate::caps::capability::{Cap, Capability, GrantCx, StageEnv};
use crate::caps::denied;
use crate::caps::docker::engine::engine_error;
use crate::caps::docker::grant::DockerGrants;
use crate::caps::docker::policy::ImageRef;
use crate::caps::docker::DockerEngine;
use crate::exec::{self, Input};
use crate::wit::ci::stage::scan::{Host, ScanRequest};
use crate::wit::CapError;

/// Scanners Trivy offers (`--scanners`).
const SCANNERS: &[&str] = &["vuln", "secret", "misconfig", "license"];
/// Largest report handed back to a plugin (a larger one is refused, not cut).
const MAX_REPORT: usize = 64 * 1024 * 1024;
/// Longest a scan may run (the stage's own timeout usually ends it first:
/// dropping the call kills Trivy).
const SCAN_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// How the host runs Trivy.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// The trivy binary (`HOST_TRIVY`, else `trivy` on PATH).
    pub trivy: PathBuf,
    /// Trivy's cache (vulnerability DB, if one was ever downloaded).
    pub cache_dir: PathBuf,
    /// Where image tarballs are written while scanned.
    pub work_dir: PathBuf,
}

impl ScanConfig {
    pub fn from_env(state_dir: &std::path::Path) -> Self {
        Self {
            trivy: std::env::var_os("HOST_TRIVY")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("trivy")),
            cache_dir: state_dir.join("trivy-cache"),
            work_dir: state_dir.join("scan-tmp"),
        }
    }
}

pub struct ScanCap {
    stage: String,
    granted: bool,
    /// The images it may scan: those its docker grants name (none unless
    /// [`ScanCap::with_images`] says).
    images: DockerGrants,
    config: ScanConfig,
    engine: DockerEngine,
    audit: Audit,
}

impl Capability for ScanCap {
    const NAME: &'static str = "scan";
    type Raw = bool;
    type Grant = bool;
    type Decls = ();

    fn compile(raw: &bool, _: &(), _: &mut GrantCx<'_>) -> bool {
        *raw
    }

    fn covers(g: &bool, _: Option<&str>) -> bool {
        *g
    }

    /// A scan reads a local image and reports.
    fn reaches_outside(_: &bool) -> bool {
        false
    }

    fn hint(_: Option<&str>) -> String {
        "grants.scan = true".into()
    }

    fn link<T: Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        crate::wit::ci::stage::scan::add_to_linker::<_, Cap<Self>>(linker, get)
    }

    fn for_stage(env: &StageEnv<'_>) -> anyhow::Result<Self> {
        Ok(ScanCap::new(
            env.stage,
            env.grants.scan,
            env.shared.scan.clone(),
            env.shared.docker.clone(),
        )
        .with_images(env.grants.docker.clone())
        .with_audit(env.audit.clone()))
    }
}

impl ScanCap {
    pub fn new(stage: &str, granted: bool, config: ScanConfig, engine: DockerEngine) -> Self {
        Self {
            stage: stage.to_string(),
            granted,
            images: DockerGrants::default(),
            config,
            engine,
            audit: Audit::default(),
        }
    }

    /// Record every call in this trail.
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    /// The stage's docker grants: it may scan the images they name.
    pub fn with_images(mut self, grants: DockerGrants) -> Self {
        self.images = grants;
        self
    }

    async fn scan(&self, req: ScanRequest) -> Result<String, CapError> {
        if !self.granted {
            return Err(denied(&self.stage, "scan", req.image));
        }
        let image = ImageRef::parse(&req.image).map_err(|e| CapError::Invalid(e.to_string()))?;
        // A scan reads the image (a secret scan reports what it found):
        // only images the stage may use.
        if !self.images.may_use(&image) {
            return Err(denied(&self.stage, "docker.scan", req.image));
        }
        let scanners = if req.scanners.is_empty() {
            vec!["vuln".to_string(), "secret".to_string()]
        } else {
            req.scanners
        };
        if let Some(s) = scanners.iter().find(|s| !SCANNERS.contains(&s.as_str())) {
            return Err(CapError::Invalid(format!(
                "unknown scanner `{s}` (expected one of: {})",
                SCANNERS.join(", ")
            )));
        }
        let tarball = self.export(&image).await?;
        let result = self.run_trivy(&tarball.0, &scanners).await;
        drop(tarball);
        result
    }

    /// `docker save` of the image into a temporary file (removed on drop).
    async fn export(&self, image: &ImageRef) -> Result<TempFile, CapError> {
        let docker = self.engine.client().await?;
        tokio::fs::create_dir_all(&self.config.work_dir)
            .await
            .map_err(|e| CapError::Failed(format!("scan work dir: {e}")))?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let file = TempFile(self.config.work_dir.join(format!("{id}.tar")));
        let mut out = tokio::fs::File::create(&file.0)
            .await
            .map_err(|e| CapError::Failed(format!("scan work file: {e}")))?;
        let mut stream = docker.export_image(&image.to_string());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(engine_error)?;
            out.write_all(&chunk)
                .await
                .map_err(|e| CapError::Failed(format!("writing the image tarball: {e}")))?;
        }
        out.flush()
            .await
            .map_err(|e| CapError::Failed(format!("writing the image tarball: {e}")))?;
        Ok(file)
    }

    async fn run_trivy(
        &self,
        tarball: &std::path::Path,
        scanners: &[String],
    ) -> Result<String, CapError> {
        // Trivy reads trivy.yaml and .trivyignore from its working
        // directory, which would otherwise be the host's (possibly a
        // checkout whose files could silence findings): it runs in a fresh
        // private directory of the scan directory instead, which is also
        // its HOME and TMPDIR and is removed afterwards. Relative state
        // paths are made absolute before the directory changes.
        let absolute = |p: &std::path::Path| {
            std::path::absolute(p).map_err(|e| CapError::Failed(format!("{}: {e}", p.display())))
        };
        let work_dir = absolute(&self.config.work_dir)?;
        let cache_dir = absolute(&self.config.cache_dir)?;
        let tarball = absolute(tarball)?;
        let private = tempfile::Builder::new()
            .prefix("trivy-")
            .tempdir_in(&work_dir)
            .map_err(|e| CapError::Failed(format!("scan work dir: {e}")))?;
        let run_dir = private.path();
        // A clean environment: no TRIVY_* settings of the host's, no
        // credentials.
        let mut cmd = exec::command(&self.config.trivy, run_dir);
        cmd.current_dir(run_dir)
            .env("TMPDIR", run_dir)
            .arg("image")
            .arg("--input")
            .arg(&tarball)
            .args([
                "--format",
                "json",
                "--quiet",
                "--scanners",
                &scanners.join(","),
            ])
            .arg("--cache-dir")
            .arg(&cache_dir)
            // Offline: never try to download a DB (it cannot be fetched
            // here, and a scan must not depend on the network).
            .args([
                "--skip-db-update",
                "--skip-java-db-update",
                "--offline-scan",
            ]);
        let out = exec::run(cmd, Input::None, SCAN_TIMEOUT, MAX_REPORT)
            .await
            .map_err(|e| {
                CapError::Failed(format!(
                    "cannot run trivy ({}): {e}; install it or set HOST_TRIVY",
                    self.config.trivy.display()
                ))
            })?;
        if out.timed_out {
            return Err(CapError::Limit(format!(
                "trivy took longer than {SCAN_TIMEOUT:?}"
            )));
        }
        if !out.success() {
            let status = match out.code {
                Some(c) => format!("exit status: {c}"),
                None => "a signal".to_string(),
            };
            return Err(CapError::Failed(format!(
                "trivy exited with {status}: {}",
                out.stderr_tail(8)
            )));
        }
        if out.stdout_truncated {
            return Err(CapError::Limit(format!(
                "the scan report exceeds {MAX_REPORT} bytes"
            )));
        }
        String::from_utf8(out.stdout)
            .map_err(|_| CapError::Failed("trivy wrote a report that is not UTF-8".into()))
    }
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Host for ScanCap {
    async fn image(&mut self, req: ScanRequest) -> wasmtime::Result<Result<String, CapError>> {
        let target = format!("{} ({})", req.image, req.scanners.join(","));
        let result = self.scan(req).await;
        self.audit.record("scan", &target, &result, |r| {
            format!("report of {} bytes", r.len())
        });
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for trivy that records where and how it ran (in
    /// `dir/seen`), then prints `report_cmd`'s output as its report.
    fn fake_trivy(dir: &std::path::Path, report_cmd: &str) -> ScanCap {
        use std::os::unix::fs::PermissionsExt;
        let trivy = dir.join("trivy");
        std::fs::write(
            &trivy,
            format!(
                "#!/bin/sh\n{{ pwd; env; echo \"ARGS $*\"; }} > '{}'\n{report_cmd}\n",
                dir.join("seen").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&trivy, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = ScanConfig {
            trivy,
            cache_dir: dir.join("cache"),
            work_dir: dir.join("work"),
        };
        std::fs::create_dir_all(&config.work_dir).unwrap();
        ScanCap::new("s", true, config, DockerEngine::default())
    }

    #[tokio::test]
    async fn trivy_runs_in_a_private_directory_with_a_clean_environment() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        // Settings of the host's that must not reach the scanner (a
        // `.trivyignore` path would silence findings).
        std::env::set_var("TRIVY_IGNOREFILE", "/somewhere/.trivyignore");
        std::env::set_var("HOST_TEST_SCAN_SECRET", "hunter2");
        let cap = fake_trivy(&dir, "echo '{\"SchemaVersion\": 2}'");
        let tarball = dir.join("work").join("image.tar");
        let report = cap.run_trivy(&tarball, &["secret".into()]).await.unwrap();
        assert_eq!(report.trim(), "{\"SchemaVersion\": 2}");
        let seen = std::fs::read_to_string(dir.join("seen")).unwrap();
        // Its working directory (where it looks for trivy.yaml and
        // .trivyignore), HOME and TMPDIR: a fresh private directory of
        // the scan directory, gone afterwards.
        let run_dir = seen.lines().next().unwrap();
        assert!(
            run_dir.starts_with(&format!("{}/trivy-", dir.join("work").display())),
            "{seen}"
        );
        assert!(!std::path::Path::new(run_dir).exists());
        assert!(seen.contains(&format!("\nHOME={run_dir}\n")), "{seen}");
        assert!(seen.contains(&format!("\nTMPDIR={run_dir}\n")), "{seen}");
        assert!(!seen.contains("TRIVY_"), "{seen}");
        assert!(!seen.contains("hunter2"), "{seen}");
        assert!(
            seen.contains(&format!(
                "ARGS image --input {} --format json --quiet --scanners secret --cache-dir {}",
                tarball.display(),
                dir.join("cache").display()
            )),
            "{seen}"
        );
    }

    #[tokio::test]
    async fn a_report_over_the_bound_is_refused_and_failures_name_the_exit() {
        let dir = tempfile::tempdir().unwrap();
        let cap = fake_trivy(
            dir.path(),
            &format!("head -c {} /dev/zero | tr '\\0' x", MAX_REPORT + 1),
        );
        let e = cap
            .run_trivy(&dir.path().join("work/x.tar"), &["secret".into()])
            .await
            .unwrap_err();
        assert!(
            matches!(&e, CapError::Limit(m) if m.contains("exceeds")),
            "{e:?}"
        );
        let cap = fake_trivy(dir.path(), "echo 'FATAL no such image' >&2; exit 2");
        let e = cap
            .run_trivy(&dir.path().join("work/x.tar"), &["secret".into()])
            .await
            .unwrap_err();
        assert!(
            matches!(&e, CapError::Failed(m) if m == "trivy exited with exit status: 2: FATAL no such image"),
            "{e:?}"
        );
    }
}
