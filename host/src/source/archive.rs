//! A workspace from an uploaded source archive (`.zip`, `.tar.gz`/`.tgz`,
//! `.tar`), as a bucket-triggered pipeline gets its source.
//!
//! The archive is untrusted. Extraction refuses, naming the entry:
//! absolute paths and `..`; links that point outside the workspace, hard
//! links, devices and fifos; writing through a link; duplicate entries;
//! and archives over the size limits (compressed size, total unpacked
//! size, per-file size, entry count), so a zip bomb stops early. Nothing
//! is left behind on failure. Set-uid bits and the like are dropped: files
//! keep only their executable bit.
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

/// Limits of one archive.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_archive_bytes: u64,
    pub max_total_bytes: u64,
    pub max_file_bytes: u64,
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_archive_bytes: 512 << 20,
            max_total_bytes: 2 << 30,
            max_file_bytes: 1 << 30,
            max_entries: 100_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{archive}: {message}")]
    Refused { archive: String, message: String },
    #[error("{archive}: entry `{entry}`: {message}")]
    Entry {
        archive: String,
        entry: String,
        message: String,
    },
    #[error("{archive}: {source}")]
    Io { archive: String, source: io::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Zip,
    TarGz,
    Tar,
}

impl Format {
    /// The file name ending it is stored under.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Zip => "zip",
            Format::TarGz => "tar.gz",
            Format::Tar => "tar",
        }
    }

    /// By file name: `.zip`, `.tar.gz`/`.tgz`, `.tar`.
    pub fn of(name: &str) -> Option<Format> {
        let n = name.to_ascii_lowercase();
        if n.ends_with(".zip") {
            Some(Format::Zip)
        } else if n.ends_with(".tar.gz") || n.ends_with(".tgz") {
            Some(Format::TarGz)
        } else if n.ends_with(".tar") {
            Some(Format::Tar)
        } else {
            None
        }
    }
}

/// What was unpacked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub files: usize,
    pub bytes: u64,
    /// sha256 of the archive as received.
    pub sha256: String,
}

enum Kind {
    Dir,
    File { executable: bool },
    Symlink(String),
}

/// Where extraction is, and what it has checked so far.
struct Extract<'a> {
    archive: String,
    root: PathBuf,
    limits: &'a Limits,
    seen: HashSet<PathBuf>,
    links: HashSet<PathBuf>,
    entries: usize,
    total: u64,
    files: usize,
}

impl Extract<'_> {
    fn refuse(&self, entry: &str, message: impl Into<String>) -> ArchiveError {
        ArchiveError::Entry {
            archive: self.archive.clone(),
            entry: entry.escape_debug().to_string(),
            message: message.into(),
        }
    }

    fn io(&self, source: io::Error) -> ArchiveError {
        ArchiveError::Io {
            archive: self.archive.clone(),
            source,
        }
    }

    /// A relative path with no `.`/`..`/root parts, or why not.
    fn clean_path(&self, name: &str) -> Result<PathBuf, ArchiveError> {
        if name.contains('\0') {
            return Err(self.refuse(name, "has a NUL byte in its name"));
        }
        let p = Path::new(name);
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                Component::Normal(part) => out.push(part),
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(self.refuse(name, "`..` in a path is not allowed"))
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.refuse(name, "absolute paths are not allowed"))
                }
            }
        }
        if out.as_os_str().is_empty() {
            return Err(self.refuse(name, "empty path"));
        }
        Ok(out)
    }

    /// Refuse writing through a link unpacked earlier.
    fn no_link_on_the_way(&self, name: &str, rel: &Path) -> Result<(), ArchiveError> {
        let mut prefix = PathBuf::new();
        for c in rel.components() {
            prefix.push(c);
            if self.links.contains(&prefix) {
                return Err(self.refuse(
                    name,
                    format!("goes through the link `{}`", prefix.display()),
                ));
            }
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, kind: Kind, data: &mut dyn Read) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::Refused {
                archive: self.archive.clone(),
                message: format!("more than {} entries", self.limits.max_entries),
            });
        }
        let rel = self.clean_path(name)?;
        self.no_link_on_the_way(name, rel.parent().unwrap_or(Path::new("")))?;
        if matches!(kind, Kind::Dir) {
            if self.links.contains(&rel) {
                return Err(self.refuse(name, "a directory where a link was unpacked"));
            }
            self.seen.insert(rel.clone());
            return fs::create_dir_all(self.root.join(&rel)).map_err(|e| self.io(e));
        }
        if !self.seen.insert(rel.clone()) {
            return Err(self.refuse(name, "appears twice in the archive"));
        }
        let dest = self.root.join(&rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| self.io(e))?;
        }
        match kind {
            Kind::Dir => unreachable!("handled above"),
            Kind::Symlink(target) => {
                let t = Path::new(&target);
                if t.is_absolute() {
                    return Err(self.refuse(name, format!("links to the absolute path `{target}`")));
                }
                // Resolve the target from the link's directory, by name.
                let mut resolved: Vec<Component> = rel
                    .parent()
                    .map(|p| p.components().collect())
                    .unwrap_or_default();
                for c in t.components() {
                    match c {
                        Component::Normal(_) => resolved.push(c),
                        Component::CurDir => {}
                        Component::ParentDir => {
                            if resolved.pop().is_none() {
                                return Err(self.refuse(
                                    name,
                                    format!("links outside the workspace (`{target}`)"),
                                ));
                            }
                        }
                        _ => return Err(self.refuse(name, format!("odd link target `{target}`"))),
                    }
                }
                let resolved: PathBuf = resolved.iter().collect();
                self.no_link_on_the_way(name, &resolved)?;
                std::os::unix::fs::symlink(&target, &dest).map_err(|e| self.io(e))?;
                self.links.insert(rel);
            }
            Kind::File { executable } => {
                let mut out = File::create(&dest).map_err(|e| self.io(e))?;
                let budget = self
                    .limits
                    .max_file_bytes
                    .min(self.limits.max_total_bytes - self.total);
                // One byte more than allowed tells "too big" from "exactly".
                let n = io::copy(&mut data.take(budget + 1), &mut out).map_err(|e| self.io(e))?;
                if n > budget {
                    let what = if budget == self.limits.max_file_bytes {
                        format!(
                            "larger than the {} byte file limit",
                            self.limits.max_file_bytes
                        )
                    } else {
                        format!(
                            "the archive unpacks to more than {} bytes",
                            self.limits.max_total_bytes
                        )
                    };
                    return Err(self.refuse(name, what));
                }
                out.flush().map_err(|e| self.io(e))?;
                use std::os::unix::fs::PermissionsExt;
                let mode = if executable { 0o755 } else { 0o644 };
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                    .map_err(|e| self.io(e))?;
                self.total += n;
                self.files += 1;
            }
        }
        Ok(())
    }
}

/// A fresh workspace `dir/id` unpacked from `archive`, and what to record
/// about it.
pub fn workspace(
    archive: &Path,
    original_name: &str,
    dir: &Path,
    id: &str,
    limits: &Limits,
) -> Result<(PathBuf, crate::run::record::SourceArchive), ArchiveError> {
    let dest = dir.join(id);
    let u = unpack_named(archive, original_name, &dest, limits)?;
    Ok((
        dest,
        crate::run::record::SourceArchive {
            name: original_name.to_string(),
            sha256: u.sha256,
            files: u.files,
            bytes: u.bytes,
        },
    ))
}

/// Unpack `archive` into `dest`, which must not exist (it is created, and
/// removed again when the archive is refused).
pub fn unpack(archive: &Path, dest: &Path, limits: &Limits) -> Result<Unpacked, ArchiveError> {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    unpack_named(archive, &name, dest, limits)
}

/// `unpack`, naming the archive `name` in errors (and telling its format
/// by that name): an upload is stored under a name of the host's.
pub fn unpack_named(
    archive: &Path,
    name: &str,
    dest: &Path,
    limits: &Limits,
) -> Result<Unpacked, ArchiveError> {
    let name = name.to_string();
    let refused = |message: String| ArchiveError::Refused {
        archive: name.clone(),
        message,
    };
    let format = Format::of(&name)
        .ok_or_else(|| refused("not a .zip, .tar.gz, .tgz or .tar file".into()))?;
    // One open file, hashed as it streams and then unpacked.
    let io_error = |source: io::Error| ArchiveError::Io {
        archive: name.clone(),
        source,
    };
    let mut file = File::open(archive).map_err(io_error)?;
    let over = |size: u64| {
        refused(format!(
            "{size} bytes is over the {} byte archive limit",
            limits.max_archive_bytes
        ))
    };
    let size = file.metadata().map_err(io_error)?.len();
    if size > limits.max_archive_bytes {
        return Err(over(size));
    }
    let sha256 = {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        let read = io::copy(
            &mut (&mut file).take(limits.max_archive_bytes.saturating_add(1)),
            &mut hash,
        )
        .map_err(io_error)?;
        if read > limits.max_archive_bytes {
            return Err(over(read));
        }
        file.rewind().map_err(io_error)?;
        hex::encode(hash.finalize())
    };
    if dest.exists() {
        return Err(refused(format!("{} exists already", dest.display())));
    }
    fs::create_dir_all(dest).map_err(|source| ArchiveError::Io {
        archive: name.clone(),
        source,
    })?;
    let mut x = Extract {
        archive: name.clone(),
        root: dest.to_path_buf(),
        limits,
        seen: HashSet::new(),
        links: HashSet::new(),
        entries: 0,
        total: 0,
        files: 0,
    };
    let result = match format {
        Format::Zip => unpack_zip(file, &mut x),
        Format::TarGz => unpack_tar(flate2::read::GzDecoder::new(file), &mut x),
        Format::Tar => unpack_tar(file, &mut x),
    };
    match result {
        Ok(()) => Ok(Unpacked {
            files: x.files,
            bytes: x.total,
            sha256,
        }),
        Err(e) => {
            let _ = fs::remove_dir_all(dest);
            Err(e)
        }
    }
}

fn unpack_tar(reader: impl Read, x: &mut Extract<'_>) -> Result<(), ArchiveError> {
    let mut ar = tar::Archive::new(reader);
    let entries = ar.entries().map_err(|e| x.io(e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| x.io(e))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).to_string();
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File {
                executable: entry
                    .header()
                    .mode()
                    .map(|m| m & 0o111 != 0)
                    .unwrap_or(false),
            },
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).to_string())
                    .unwrap_or_default();
                Kind::Symlink(target)
            }
            tar::EntryType::Link => return Err(x.refuse(&name, "hard links are not allowed")),
            // Metadata entries of the format itself.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            tar::EntryType::GNULongName | tar::EntryType::GNULongLink => continue,
            other => {
                return Err(x.refuse(&name, format!("entries of type {other:?} are not allowed")))
            }
        };
        x.entry(&name, kind, &mut entry)?;
    }
    Ok(())
}

fn unpack_zip(archive: File, x: &mut Extract<'_>) -> Result<(), ArchiveError> {
    let mut zip = zip::ZipArchive::new(archive).map_err(|e| ArchiveError::Refused {
        archive: x.archive.clone(),
        message: format!("not a readable zip file: {e}"),
    })?;
    for i in 0..zip.len() {
        let mut file = zip.by_index(i).map_err(|e| ArchiveError::Refused {
            archive: x.archive.clone(),
            message: format!("entry {i}: {e}"),
        })?;
        let name = String::from_utf8_lossy(file.name_raw()).to_string();
        let mode = file.unix_mode().unwrap_or(0);
        let kind = if file.is_dir() {
            Kind::Dir
        } else if mode & 0o170000 == 0o120000 {
            let mut target = String::new();
            (&mut file)
                .take(4096)
                .read_to_string(&mut target)
                .map_err(|e| x.io(e))?;
            Kind::Symlink(target)
        } else if mode & 0o170000 == 0 || mode & 0o170000 == 0o100000 {
            Kind::File {
                executable: mode & 0o111 != 0,
            }
        } else {
            return Err(x.refuse(
                &name,
                "entries other than files, directories and links are not allowed",
            ));
        };
        x.entry(&name, kind, &mut file)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A tar entry with a raw name (the tar crate refuses to *write*
    /// `..` and absolute paths, which is exactly what an attacker does).
    fn tar_entry(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        link: &str,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        if !link.is_empty() {
            h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn tar_gz(entries: &[(&str, tar::EntryType, &str, &[u8])], dir: &Path) -> PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link, data) in entries {
            tar_entry(&mut b, name, *kind, link, data);
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let path = dir.join("src.tar.gz");
        fs::write(&path, gz.finish().unwrap()).unwrap();
        path
    }

    fn zip(entries: &[(&str, &[u8])], dir: &Path) -> PathBuf {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(data).unwrap();
        }
        let path = dir.join("src.zip");
        fs::write(&path, w.finish().unwrap().into_inner()).unwrap();
        path
    }

    const FILE: tar::EntryType = tar::EntryType::Regular;
    const LINK: tar::EntryType = tar::EntryType::Symlink;

    fn refused(archive: &Path, dest: &Path, limits: &Limits) -> String {
        let e = unpack(archive, dest, limits).unwrap_err().to_string();
        assert!(!dest.exists(), "a refused archive leaves nothing: {e}");
        e
    }

    #[test]
    fn unpacks_files_dirs_and_inner_links() {
        let t = tempfile::tempdir().unwrap();
        let a = tar_gz(
            &[
                ("app/", tar::EntryType::Directory, "", b""),
                ("app/run.sh", FILE, "", b"#!/bin/sh\necho hi\n"),
                ("app/current", LINK, "run.sh", b""),
                ("README", FILE, "", b"readme"),
            ],
            t.path(),
        );
        let dest = t.path().join("ws");
        let u = unpack(&a, &dest, &Limits::default()).unwrap();
        assert_eq!((u.files, u.bytes), (2, 24));
        use sha2::Digest;
        assert_eq!(
            u.sha256,
            hex::encode(sha2::Sha256::digest(fs::read(&a).unwrap()))
        );
        assert_eq!(
            fs::read_to_string(dest.join("app/current")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dest.join("app/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);

        let z = zip(
            &[
                ("src/main.rs", b"fn main() {}"),
                ("Cargo.toml", b"[package]"),
            ],
            t.path(),
        );
        let u = unpack(&z, &t.path().join("ws2"), &Limits::default()).unwrap();
        assert_eq!(u.files, 2);
        assert_eq!(
            fs::read_to_string(t.path().join("ws2/src/main.rs")).unwrap(),
            "fn main() {}"
        );
    }

    #[test]
    fn refuses_traversal_absolute_paths_and_escaping_links() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("ws");
        let l = Limits::default();
        let e = refused(
            &tar_gz(
                &[("ok", FILE, "", b"x"), ("../evil", FILE, "", b"x")],
                t.path(),
            ),
            &dest,
            &l,
        );
        assert!(
            e.contains("src.tar.gz: entry `../evil`: `..` in a path is not allowed"),
            "{e}"
        );
        assert!(!t.path().join("evil").exists());
        let e = refused(
            &tar_gz(&[("/etc/evil", FILE, "", b"x")], t.path()),
            &dest,
            &l,
        );
        assert!(e.contains("absolute paths are not allowed"), "{e}");
        let e = refused(
            &tar_gz(&[("a/up", LINK, "../../etc", b"")], t.path()),
            &dest,
            &l,
        );
        assert!(
            e.contains("entry `a/up`: links outside the workspace (`../../etc`)"),
            "{e}"
        );
        let e = refused(
            &tar_gz(&[("abs", LINK, "/etc/passwd", b"")], t.path()),
            &dest,
            &l,
        );
        assert!(
            e.contains("links to the absolute path `/etc/passwd`"),
            "{e}"
        );
        // A link inside the workspace, then a file written through it.
        let e = refused(
            &tar_gz(&[("d", LINK, ".", b""), ("d/x", FILE, "", b"x")], t.path()),
            &dest,
            &l,
        );
        assert!(e.contains("entry `d/x`: goes through the link `d`"), "{e}");
        let e = refused(
            &tar_gz(&[("h", tar::EntryType::Link, "x", b"")], t.path()),
            &dest,
            &l,
        );
        assert!(e.contains("hard links are not allowed"), "{e}");
        let e = refused(
            &tar_gz(&[("x", FILE, "", b"1"), ("x", FILE, "", b"2")], t.path()),
            &dest,
            &l,
        );
        assert!(e.contains("appears twice"), "{e}");
        let e = refused(&zip(&[("../../zip-evil", b"x")], t.path()), &dest, &l);
        assert!(e.contains("src.zip: entry `../../zip-evil`"), "{e}");
    }

    #[test]
    fn size_limits_stop_a_bomb_early() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("ws");
        // 8 MiB of zeros compress to a few KiB.
        let zeros = vec![0u8; 8 << 20];
        let a = zip(&[("a", &zeros), ("b", &zeros)], t.path());
        assert!(fs::metadata(&a).unwrap().len() < 100_000);
        let limits = Limits {
            max_total_bytes: 12 << 20,
            ..Limits::default()
        };
        let e = refused(&a, &dest, &limits);
        assert!(
            e.contains("entry `b`: the archive unpacks to more than 12582912 bytes"),
            "{e}"
        );
        let limits = Limits {
            max_file_bytes: 1 << 20,
            ..Limits::default()
        };
        let e = refused(&a, &dest, &limits);
        assert!(
            e.contains("entry `a`: larger than the 1048576 byte file limit"),
            "{e}"
        );
        let limits = Limits {
            max_archive_bytes: 100,
            ..Limits::default()
        };
        let e = refused(&a, &dest, &limits);
        assert!(e.contains("over the 100 byte archive limit"), "{e}");
        let limits = Limits {
            max_entries: 1,
            ..Limits::default()
        };
        assert!(refused(&a, &dest, &limits).contains("more than 1 entries"));
        let not = t.path().join("x.rar");
        fs::write(&not, b"x").unwrap();
        assert!(refused(&not, &dest, &Limits::default()).contains("not a .zip, .tar.gz"));
    }
}
