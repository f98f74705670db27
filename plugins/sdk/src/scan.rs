//! The `scan` import: the [`Scan`] port and [`HostScan`] forwarding it to
//! the host (`stage_sdk::testing::FakeScan` in tests).
use crate::bindings::ci::stage::scan as raw;
pub use crate::bindings::ci::stage::scan::*;

/// Image scanning as a trait: the host's scanner or a fake.
pub trait Scan {
    /// Scans `req.image`; returns the scanner's JSON report.
    fn image(&mut self, req: &ScanRequest) -> Result<String, CapError>;
}

/// The host's `scan` import.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostScan;

impl Scan for HostScan {
    fn image(&mut self, req: &ScanRequest) -> Result<String, CapError> {
        raw::image(req)
    }
}
