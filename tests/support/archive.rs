//! Source archives for the upload tests, built with raw entry names: the
//! tar crate refuses to *write* `../x`, which is exactly what an attacker
//! sends.
use std::io::Write;
use std::path::{Path, PathBuf};

/// `dir/name`, a .tar.gz of `files` (path, content).
pub fn tar_gz(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body) in files {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().expect("a GNU header").name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        h.set_cksum();
        b.append(&h, body.as_bytes())
            .expect("appending to a tar in memory");
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&b.into_inner().expect("a tar in memory"))
        .expect("compressing in memory");
    let p = dir.join(name);
    std::fs::write(&p, gz.finish().expect("compressing in memory")).expect("writing the archive");
    p
}

/// sha256 of a file, hex.
pub fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).expect("reading")))
}
