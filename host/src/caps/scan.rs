//! Image scanning (Trivy run by the host). Declared now; the scanner lands
//! with the Trivy issue. Until then: `denied` without a grant, `unsupported`
//! with one.
use crate::caps::denied;
use crate::runtime::bindings::ci::stage::scan::{Host, ScanRequest};
use crate::runtime::bindings::CapError;

pub struct ScanCap {
    stage: String,
    granted: bool,
}

impl ScanCap {
    pub fn new(stage: &str, granted: bool) -> Self {
        Self {
            stage: stage.to_string(),
            granted,
        }
    }
}

impl Host for ScanCap {
    async fn image(&mut self, req: ScanRequest) -> wasmtime::Result<Result<String, CapError>> {
        Ok(Err(if self.granted {
            CapError::Unsupported("scan.image is not available in this host version".into())
        } else {
            denied(&self.stage, "scan", req.image)
        }))
    }
}
