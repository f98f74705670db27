//! Image scanning: the host exports the image from the engine and runs
//! Trivy on the tarball (`trivy image --input`), returning its JSON report.
//! The stage needs `grants.scan = true`, and scans only images it may use:
//! ones its `grants.docker` patterns name (build, run, tag, push, base or
//! scan). It never touches the engine or the scanner itself.
use std::path::PathBuf;
use std::process::Stdio;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::caps::audit::Audit;
use crate::caps::denied;
use crate::caps::docker::engine::engine_error;
use crate::caps::docker::policy::ImageRef;
use crate::caps::docker::DockerEngine;
use crate::pipeline::DockerGrants;
use crate::runtime::bindings::ci::stage::scan::{Host, ScanRequest};
use crate::runtime::bindings::CapError;

/// Scanners Trivy offers (`--scanners`).
const SCANNERS: &[&str] = &["vuln", "secret", "misconfig", "license"];
/// Largest report handed back to a plugin.
const MAX_REPORT: usize = 32 * 1024 * 1024;

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
        let image = ImageRef::parse(&req.image).map_err(CapError::Invalid)?;
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
        let mut cmd = tokio::process::Command::new(&self.config.trivy);
        cmd.arg("image")
            .arg("--input")
            .arg(tarball)
            .args([
                "--format",
                "json",
                "--quiet",
                "--scanners",
                &scanners.join(","),
            ])
            .arg("--cache-dir")
            .arg(&self.config.cache_dir)
            // Offline: never try to download a DB (it cannot be fetched
            // here, and a scan must not depend on the network).
            .args([
                "--skip-db-update",
                "--skip-java-db-update",
                "--offline-scan",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = cmd.output().await.map_err(|e| {
            CapError::Failed(format!(
                "cannot run trivy ({}): {e}; install it or set HOST_TRIVY",
                self.config.trivy.display()
            ))
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(CapError::Failed(format!(
                "trivy exited with {}: {}",
                out.status,
                tail.join(" | ")
            )));
        }
        if out.stdout.len() > MAX_REPORT {
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
