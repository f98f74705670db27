//! A workspace from an uploaded source archive (`.zip`, `.tar.gz`/`.tgz`,
//! `.tar`), as a bucket-triggered pipeline gets its source.
//!
//! The archive is untrusted. Extraction refuses, naming the entry:
//! absolute paths, `..` and NUL bytes in names; hard links, devices and
//! fifos; writing through a link; duplicate entries; links that do not
//! lead to an entry inside the workspace; and archives over the size
//! limits (compressed size, total unpacked size, per-file size, entry
//! count), so a zip bomb stops early. Nothing is left behind on failure.
//! Set-uid bits and the like are dropped: files are 0644 or 0755.
//!
//! Everything is created through a `cap_std::fs::Dir` of the fresh
//! destination (files with `create_new`, never opening what exists), so no
//! name or link makes the host write outside it, whatever the checks miss.
//!
//! Links are decided at the end, when nothing can change any more, against
//! what is on disk: each is walked one name at a time through that `Dir`,
//! following links as the kernel does, so a `..` climbs from where the walk
//! physically is (`a -> .` then `a/..` is the root's parent, whatever the
//! names say). Every step must stay beneath the root, the end must exist
//! (a dangling link could be pointed anywhere later) and at most 40 links
//! are followed (a loop is refused). A step-by-step walk rather than
//! `canonicalize`, which sees only the end: `../ws/x` comes back inside
//! but means something else wherever the workspace is mounted. cap-std
//! following the link beneath the root must agree. Links to directories
//! are kept: `current -> releases/v1` is common and harmless once checked.
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

use cap_std::fs::{Dir, OpenOptions};

/// Links followed in one walk before it counts as a loop (Linux's
/// MAXSYMLINKS).
const MAX_FOLLOWED: usize = 40;
/// Names walked to check all the links of one archive: bounds the work an
/// archive of long, tangled link targets can cause.
const MAX_LINK_STEPS: usize = 1 << 20;
/// The longest link target (PATH_MAX).
const MAX_TARGET: usize = 4096;

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

/// A link unpacked, checked once the archive is all on disk.
struct Link {
    entry: String,
    path: PathBuf,
    target: String,
}

/// Where extraction is, and what it has unpacked so far.
struct Extract<'a> {
    archive: String,
    root: Dir,
    limits: &'a Limits,
    links: Vec<Link>,
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

    /// An entry that could not be written or checked.
    fn failed(&self, entry: &str, e: io::Error) -> ArchiveError {
        self.refuse(entry, format!("cannot unpack it: {e}"))
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

    /// A link target that may be written at all (where it leads is
    /// decided at the end), or why not.
    fn check_target(&self, name: &str, target: &str) -> Result<(), ArchiveError> {
        let shown = target.escape_debug();
        if target.is_empty() {
            Err(self.refuse(name, "a link with an empty target"))
        } else if target.contains('\0') {
            Err(self.refuse(name, format!("a NUL byte in its link target `{shown}`")))
        } else if target.len() > MAX_TARGET {
            Err(self.refuse(
                name,
                format!("a link target longer than {MAX_TARGET} bytes"),
            ))
        } else if target.starts_with('/') {
            Err(self.refuse(name, format!("links to the absolute path `{shown}`")))
        } else {
            Ok(())
        }
    }

    /// Make the directories `dirs` beneath the root, one name at a time,
    /// refusing to go through a link or a file already there.
    fn make_dirs(&self, name: &str, dirs: &Path) -> Result<(), ArchiveError> {
        let mut at = PathBuf::new();
        for c in dirs.components() {
            at.push(c);
            match self.root.symlink_metadata(&at) {
                Ok(m) if m.is_symlink() => {
                    return Err(
                        self.refuse(name, format!("goes through the link `{}`", at.display()))
                    )
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(self.refuse(
                        name,
                        format!("`{}` is a file, not a directory", at.display()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => self
                    .root
                    .create_dir(&at)
                    .map_err(|e| self.failed(name, e))?,
                Err(e) => return Err(self.failed(name, e)),
            }
        }
        Ok(())
    }

    /// Nothing is at `rel` yet.
    fn fresh(&self, name: &str, rel: &Path) -> Result<(), ArchiveError> {
        match self.root.symlink_metadata(rel) {
            Ok(_) => Err(self.refuse(
                name,
                "appears twice in the archive (or is the directory of an earlier entry)",
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.failed(name, e)),
        }
    }

    fn entry(&mut self, name: &str, kind: Kind, data: &mut dyn Read) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::Refused {
                archive: self.archive.clone(),
                message: format!("more than {} entries", self.limits.max_entries),
            });
        }
        // `tar czf x.tgz .` starts with `./`: the root itself, already made.
        if matches!(kind, Kind::Dir) && Path::new(name).components().all(|c| c == Component::CurDir)
        {
            return Ok(());
        }
        let rel = self.clean_path(name)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        match kind {
            Kind::Dir => {
                if let Ok(m) = self.root.symlink_metadata(&rel) {
                    if m.is_symlink() {
                        return Err(self.refuse(name, "a directory where a link was unpacked"));
                    }
                }
                self.make_dirs(name, &rel)
            }
            Kind::Symlink(target) => {
                self.check_target(name, &target)?;
                self.make_dirs(name, parent)?;
                self.fresh(name, &rel)?;
                self.root
                    .symlink(&target, &rel)
                    .map_err(|e| self.failed(name, e))?;
                self.links.push(Link {
                    entry: name.to_string(),
                    path: rel,
                    target,
                });
                Ok(())
            }
            Kind::File { executable } => {
                self.make_dirs(name, parent)?;
                self.fresh(name, &rel)?;
                let mut out = self
                    .root
                    .open_with(&rel, OpenOptions::new().write(true).create_new(true))
                    .map_err(|e| self.failed(name, e))?
                    .into_std();
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
                // On the open file: no path is looked up again.
                out.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(|e| self.failed(name, e))?;
                self.total += n;
                self.files += 1;
                Ok(())
            }
        }
    }

    /// Every link leads, physically, to an entry inside the root. Run once
    /// the archive is all on disk.
    fn check_links(&self) -> Result<(), ArchiveError> {
        let mut steps = 0;
        for link in &self.links {
            let target = link.target.escape_debug();
            let why = match resolve(&self.root, &link.path, &mut steps) {
                Ok(_) => None,
                Err(Unresolved::Outside(via)) if via == link.path => {
                    Some(format!("links outside the workspace (`{target}`)"))
                }
                Err(Unresolved::Outside(via)) => Some(format!(
                    "links outside the workspace (`{target}`, through the link `{}`)",
                    via.display()
                )),
                Err(Unresolved::Missing(p)) => Some(format!(
                    "a dangling link (`{target}`: `{}` does not exist)",
                    p.display()
                )),
                Err(Unresolved::NotDir(p)) => Some(format!(
                    "links through a file (`{target}`: `{}` is not a directory)",
                    p.display()
                )),
                Err(Unresolved::Loop) => Some(format!(
                    "a link loop, or a chain of more than {MAX_FOLLOWED} links (`{target}`)"
                )),
                Err(Unresolved::Budget) => {
                    return Err(ArchiveError::Refused {
                        archive: self.archive.clone(),
                        message: format!(
                            "its links take more than {MAX_LINK_STEPS} steps to check"
                        ),
                    })
                }
                Err(Unresolved::Io(e)) => return Err(self.failed(&link.entry, e)),
            };
            if let Some(why) = why {
                return Err(self.refuse(&link.entry, why));
            }
            // A second opinion: cap-std following the link beneath the root.
            if let Err(e) = self.root.metadata(&link.path) {
                return Err(self.refuse(
                    &link.entry,
                    format!("the link `{target}` cannot be followed beneath the workspace: {e}"),
                ));
            }
        }
        Ok(())
    }
}

/// Why a path does not lead to an entry inside the root.
enum Unresolved {
    /// A `..` above the root, or an absolute target, reached through this
    /// link.
    Outside(PathBuf),
    Missing(PathBuf),
    NotDir(PathBuf),
    Loop,
    Budget,
    Io(io::Error),
}

/// Where the clean relative path `rel` leads beneath `root`, following
/// links one name at a time as the kernel does: the walk is always at a
/// real directory (`at`, links expanded), so a `..` climbs from where the
/// walk physically is. `steps` counts names walked, across calls.
fn resolve(root: &Dir, rel: &Path, steps: &mut usize) -> Result<PathBuf, Unresolved> {
    enum Step {
        Up,
        Name(OsString),
    }
    /// Push the names of `p` so that its first name is popped first.
    fn push(todo: &mut Vec<Step>, p: &Path) -> Result<(), ()> {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => todo.push(Step::Name(n.to_owned())),
                Component::ParentDir => todo.push(Step::Up),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => return Err(()),
            }
        }
        Ok(())
    }
    let mut todo = Vec::new();
    let mut via = rel.to_path_buf();
    push(&mut todo, rel).map_err(|()| Unresolved::Outside(via.clone()))?;
    let mut at = PathBuf::new();
    let mut followed = 0;
    while let Some(step) = todo.pop() {
        *steps += 1;
        if *steps > MAX_LINK_STEPS {
            return Err(Unresolved::Budget);
        }
        let name = match step {
            Step::Up => {
                if !at.pop() {
                    return Err(Unresolved::Outside(via));
                }
                continue;
            }
            Step::Name(name) => name,
        };
        let next = at.join(name);
        let m = root.symlink_metadata(&next).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Unresolved::Missing(next.clone())
            } else {
                Unresolved::Io(e)
            }
        })?;
        if m.is_symlink() {
            followed += 1;
            if followed > MAX_FOLLOWED {
                return Err(Unresolved::Loop);
            }
            let target = root.read_link_contents(&next).map_err(Unresolved::Io)?;
            push(&mut todo, &target).map_err(|()| Unresolved::Outside(next.clone()))?;
            via = next;
        } else if todo.is_empty() || m.is_dir() {
            at = next;
        } else {
            return Err(Unresolved::NotDir(next));
        }
    }
    Ok(at)
}

/// A fresh workspace `dir/id` unpacked from `archive`, and what to record
/// about it.
pub fn workspace(
    archive: &Path,
    original_name: &str,
    dir: &Path,
    id: &str,
    limits: &Limits,
) -> Result<(PathBuf, SourceArchive), ArchiveError> {
    let dest = dir.join(id);
    let u = unpack_named(archive, original_name, &dest, limits)?;
    Ok((
        dest,
        SourceArchive {
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
    let io_error = |source: io::Error| ArchiveError::Io {
        archive: name.clone(),
        source,
    };
    let format = Format::of(&name)
        .ok_or_else(|| refused("not a .zip, .tar.gz, .tgz or .tar file".into()))?;
    // One open file, hashed as it streams and then unpacked.
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
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_error)?;
    }
    match fs::create_dir(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(refused(format!("{} exists already", dest.display())))
        }
        Err(e) => return Err(io_error(e)),
    }
    let result = Dir::open_ambient_dir(dest, cap_std::ambient_authority())
        .map_err(io_error)
        .and_then(|root| {
            let mut x = Extract {
                archive: name.clone(),
                root,
                limits,
                links: Vec::new(),
                entries: 0,
                total: 0,
                files: 0,
            };
            match format {
                Format::Zip => unpack_zip(file, &mut x)?,
                Format::TarGz => unpack_tar(flate2::read::GzDecoder::new(file), &mut x)?,
                Format::Tar => unpack_tar(file, &mut x)?,
            }
            x.check_links()?;
            Ok(Unpacked {
                files: x.files,
                bytes: x.total,
                sha256,
            })
        });
    if result.is_err() {
        let _ = fs::remove_dir_all(dest);
    }
    result
}

/// The largest GNU long-name/long-link or PAX header entry accepted: the
/// `tar` crate reads such entries whole into memory before anything else
/// sees them, so they are bounded here, as the stream goes by.
const MAX_TAR_METADATA: u64 = 64 << 10;

/// Extra decompressed bytes allowed beyond the unpacked-size limit (headers,
/// padding, skipped bodies): the whole stream is bounded, so neither time nor
/// memory grows with what the limits do not count.
const TAR_STREAM_SLACK: u64 = 64 << 20;

/// Passes a tar stream through unchanged while reading each header as it
/// goes by: refuses format metadata entries over [`MAX_TAR_METADATA`] and a
/// stream longer than `budget`, before the `tar` crate buffers them.
struct TarGuard<R> {
    inner: R,
    /// Stream offset of the next header block.
    next_header: u64,
    pos: u64,
    budget: u64,
    header: Vec<u8>,
}

impl<R: Read> TarGuard<R> {
    fn new(inner: R, budget: u64) -> Self {
        Self {
            inner,
            next_header: 0,
            pos: 0,
            budget,
            header: Vec::with_capacity(512),
        }
    }

    /// Looks at the bytes of the header block among `buf` (which starts at
    /// stream offset `start`).
    fn inspect(&mut self, start: u64, buf: &[u8]) -> io::Result<()> {
        let end = start + buf.len() as u64;
        let mut at = start;
        while at < end && at >= self.next_header {
            let off = (at - start) as usize;
            let need = 512 - self.header.len();
            let take = need.min(buf.len() - off);
            self.header.extend_from_slice(&buf[off..off + take]);
            at += take as u64;
            if self.header.len() < 512 {
                break;
            }
            let block = std::mem::take(&mut self.header);
            let h = tar::Header::from_byte_slice(&block);
            let size = if block.iter().all(|b| *b == 0) {
                0 // end-of-archive padding
            } else {
                h.entry_size()?
            };
            let meta = matches!(
                h.entry_type(),
                tar::EntryType::GNULongName
                    | tar::EntryType::GNULongLink
                    | tar::EntryType::XHeader
                    | tar::EntryType::XGlobalHeader
            );
            if meta && size > MAX_TAR_METADATA {
                return Err(io::Error::other(format!(
                    "a {:?} entry of {size} bytes (at most {MAX_TAR_METADATA})",
                    h.entry_type()
                )));
            }
            self.next_header = at + size.div_ceil(512) * 512;
        }
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let start = self.pos;
        self.pos += n as u64;
        if self.pos > self.budget {
            return Err(io::Error::other(format!(
                "the tar stream is longer than {} bytes",
                self.budget
            )));
        }
        self.inspect(start, &buf[..n])?;
        Ok(n)
    }
}

fn unpack_tar(reader: impl Read, x: &mut Extract<'_>) -> Result<(), ArchiveError> {
    let budget = x.limits.max_total_bytes.saturating_add(TAR_STREAM_SLACK);
    let mut ar = tar::Archive::new(TarGuard::new(reader, budget));
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
    if zip.len() > x.limits.max_entries {
        return Err(ArchiveError::Refused {
            archive: x.archive.clone(),
            message: format!("more than {} entries", x.limits.max_entries),
        });
    }
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
            // One byte over the limit is enough to refuse it.
            let mut target = Vec::new();
            (&mut file)
                .take(MAX_TARGET as u64 + 1)
                .read_to_end(&mut target)
                .map_err(|e| x.io(e))?;
            Kind::Symlink(String::from_utf8_lossy(&target).to_string())
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
/// An uploaded source archive, as checked and unpacked.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct SourceArchive {
    /// File name as uploaded.
    pub name: String,
    /// sha256 of the archive's bytes.
    pub sha256: String,
    pub files: usize,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Cursor;
    use std::os::unix::fs::PermissionsExt;

    /// A tar entry with a raw name (the tar crate refuses to *write*
    /// `..` and absolute paths, which is exactly what an attacker does).
    fn tar_entry(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        link: &str,
        data: &[u8],
        mode: u32,
    ) {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        if !link.is_empty() {
            h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    /// A PAX header giving the next entry `key=value` (a name or link
    /// target of any bytes and length).
    fn pax(b: &mut tar::Builder<Vec<u8>>, key: &str, value: &[u8]) {
        let body_len = key.len() + value.len() + 3; // " ", "=", "\n"
        let mut len = body_len + 1;
        while len != body_len + len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        let mut record = format!("{len} {key}=").into_bytes();
        record.extend_from_slice(value);
        record.push(b'\n');
        tar_entry(b, "pax", tar::EntryType::XHeader, "", &record, 0o644);
    }

    fn write_tar_gz(tar: Vec<u8>, dir: &Path) -> PathBuf {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let path = dir.join("src.tar.gz");
        fs::write(&path, gz.finish().unwrap()).unwrap();
        path
    }

    fn tar_gz(entries: &[(&str, tar::EntryType, &str, &[u8])], dir: &Path) -> PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link, data) in entries {
            tar_entry(&mut b, name, *kind, link, data, 0o755);
        }
        write_tar_gz(b.into_inner().unwrap(), dir)
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

    /// A zip entry: file, directory or link (name, target).
    enum Z<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Link(&'a str, &'a str),
    }

    fn zip_of(entries: &[Z], dir: &Path) -> PathBuf {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default;
        for e in entries {
            match e {
                Z::File(name, data) => {
                    w.start_file(*name, o()).unwrap();
                    w.write_all(data).unwrap();
                }
                Z::Dir(name) => w.add_directory(*name, o()).unwrap(),
                Z::Link(name, target) => w.add_symlink(*name, *target, o()).unwrap(),
            }
        }
        let path = dir.join("src.zip");
        fs::write(&path, w.finish().unwrap().into_inner()).unwrap();
        path
    }

    const FILE: tar::EntryType = tar::EntryType::Regular;
    const DIR: tar::EntryType = tar::EntryType::Directory;
    const LINK: tar::EntryType = tar::EntryType::Symlink;
    const HARD: tar::EntryType = tar::EntryType::Link;

    fn refused(archive: &Path, dest: &Path, limits: &Limits) -> String {
        let e = unpack(archive, dest, limits).unwrap_err().to_string();
        assert!(!dest.exists(), "a refused archive leaves nothing: {e}");
        e
    }

    /// A temp dir with a sentinel sibling of the workspace `ws`: a file, a
    /// directory, and a file an escaping link would aim at.
    fn sandbox() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("sentinel/dir")).unwrap();
        fs::write(t.path().join("sentinel/keep"), "keep").unwrap();
        fs::write(t.path().join("x"), "outside").unwrap();
        t
    }

    /// Everything under `dir` but `skip`, links not followed: kind, mode,
    /// contents or target.
    fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p == skip {
                    continue;
                }
                let m = fs::symlink_metadata(&p).unwrap();
                let mode = m.permissions().mode();
                let what = if m.is_symlink() {
                    format!("link {:?}", fs::read_link(&p).unwrap())
                } else if m.is_dir() {
                    todo.push(p.clone());
                    format!("dir {mode:o}")
                } else {
                    format!("file {mode:o} {:?}", fs::read(&p).unwrap())
                };
                out.insert(p, what);
            }
        }
        out
    }

    /// `archive` is refused into `t/ws` with a message containing `want`,
    /// nothing is left of `ws` and nothing outside it changed.
    fn refused_in(t: &tempfile::TempDir, archive: &Path, want: &str) -> String {
        let dest = t.path().join("ws");
        let before = snapshot(t.path(), &dest);
        let e = refused(archive, &dest, &Limits::default());
        assert!(e.contains(want), "wanted `{want}` in: {e}");
        assert_eq!(snapshot(t.path(), &dest), before, "outside changed: {e}");
        e
    }

    #[test]
    fn unpacks_files_dirs_and_inner_links() {
        let t = tempfile::tempdir().unwrap();
        let a = tar_gz(
            &[
                // As `tar czf x.tgz .` writes it: the root comes first.
                ("./", tar::EntryType::Directory, "", b""),
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
    fn benign_links_inside_the_tree_still_unpack() {
        let t = sandbox();
        let tar_entries: &[(&str, tar::EntryType, &str, &[u8])] = &[
            ("releases/v1/app.sh", FILE, "", b"v1"),
            ("current", LINK, "releases/v1", b""),
            // Through a link to a directory, and a chain of two.
            ("app", LINK, "current/app.sh", b""),
            ("bin/app", LINK, "../app", b""),
            // `..` that stays inside, physically.
            ("releases/v2/prev", LINK, "../v1", b""),
            ("releases/v2/up", LINK, "prev/../../current/app.sh", b""),
            ("here", LINK, ".", b""),
            // A link before the file it points to.
            ("early", LINK, "late/file", b""),
            ("late/file", FILE, "", b"late"),
        ];
        let a = tar_gz(tar_entries, t.path());
        let dest = t.path().join("ws");
        let before = snapshot(t.path(), &dest);
        unpack(&a, &dest, &Limits::default()).unwrap();
        for (link, want) in [
            ("current/app.sh", "v1"),
            ("app", "v1"),
            ("bin/app", "v1"),
            ("releases/v2/up", "v1"),
            ("here/releases/v1/app.sh", "v1"),
            ("early", "late"),
        ] {
            assert_eq!(fs::read_to_string(dest.join(link)).unwrap(), want, "{link}");
        }
        assert!(fs::symlink_metadata(dest.join("current"))
            .unwrap()
            .is_symlink());
        assert_eq!(snapshot(t.path(), &dest), before);

        let z = zip_of(
            &[
                Z::Dir("releases/"),
                Z::Dir("releases/v1/"),
                Z::File("releases/v1/app.sh", b"v1"),
                Z::Link("current", "releases/v1"),
                Z::Link("app", "current/app.sh"),
            ],
            t.path(),
        );
        let dest = t.path().join("ws2");
        unpack(&z, &dest, &Limits::default()).unwrap();
        assert_eq!(fs::read_to_string(dest.join("app")).unwrap(), "v1");
    }

    #[test]
    fn refuses_traversal_absolute_paths_and_escaping_links() {
        let t = sandbox();
        let p = t.path();
        let e = refused_in(
            &t,
            &tar_gz(&[("ok", FILE, "", b"x"), ("../evil", FILE, "", b"x")], p),
            "src.tar.gz: entry `../evil`: `..` in a path is not allowed",
        );
        assert!(!p.join("evil").exists(), "{e}");
        for name in ["a/../../x", "a/..", "..", "./../sentinel/keep"] {
            refused_in(
                &t,
                &tar_gz(&[(name, FILE, "", b"x")], p),
                "`..` in a path is not allowed",
            );
            refused_in(
                &t,
                &zip(&[(name, b"x")], p),
                "`..` in a path is not allowed",
            );
        }
        for name in ["/etc/evil", "//x"] {
            refused_in(
                &t,
                &tar_gz(&[(name, FILE, "", b"x")], p),
                "absolute paths are not allowed",
            );
            refused_in(
                &t,
                &zip(&[(name, b"x")], p),
                "absolute paths are not allowed",
            );
        }
        refused_in(
            &t,
            &tar_gz(&[("a/up", LINK, "../../etc", b"")], p),
            "entry `a/up`: links outside the workspace (`../../etc`)",
        );
        refused_in(
            &t,
            &tar_gz(&[("up", LINK, "../sentinel/keep", b"")], p),
            "entry `up`: links outside the workspace",
        );
        // Out and back in: inside only while the workspace is at `ws`.
        refused_in(
            &t,
            &tar_gz(&[("f", FILE, "", b"x"), ("back", LINK, "../ws/f", b"")], p),
            "entry `back`: links outside the workspace (`../ws/f`)",
        );
        refused_in(
            &t,
            &tar_gz(&[("abs", LINK, "/etc/passwd", b"")], p),
            "links to the absolute path `/etc/passwd`",
        );
        refused_in(
            &t,
            &zip_of(&[Z::Link("abs", "/etc/passwd")], p),
            "src.zip: entry `abs`: links to the absolute path `/etc/passwd`",
        );
        refused_in(
            &t,
            &tar_gz(&[("h", HARD, "x", b"")], p),
            "hard links are not allowed",
        );
        refused_in(
            &t,
            &zip(&[("../../zip-evil", b"x")], p),
            "src.zip: entry `../../zip-evil`",
        );
    }

    #[test]
    fn refuses_nul_bytes_in_names_and_link_targets() {
        let t = sandbox();
        let p = t.path();
        let mut b = tar::Builder::new(Vec::new());
        pax(&mut b, "path", b"a\0/../../x");
        tar_entry(&mut b, "a", FILE, "", b"x", 0o644);
        let a = write_tar_gz(b.into_inner().unwrap(), p);
        refused_in(&t, &a, "has a NUL byte in its name");
        refused_in(&t, &zip(&[("a\0b", b"x")], p), "has a NUL byte in its name");
        let mut b = tar::Builder::new(Vec::new());
        pax(&mut b, "linkpath", b".\0/../..");
        tar_entry(&mut b, "l", LINK, "", b"", 0o777);
        let a = write_tar_gz(b.into_inner().unwrap(), p);
        refused_in(&t, &a, "entry `l`: a NUL byte in its link target");
        refused_in(
            &t,
            &zip_of(&[Z::Link("l", "a\0b")], p),
            "a NUL byte in its link target",
        );
        refused_in(
            &t,
            &tar_gz(&[("l", LINK, "", b"")], p),
            "a link with an empty target",
        );
        // A target too long to be a path at all.
        let long = "a/".repeat(3000);
        let mut b = tar::Builder::new(Vec::new());
        pax(&mut b, "linkpath", long.as_bytes());
        tar_entry(&mut b, "l", LINK, "", b"", 0o777);
        let a = write_tar_gz(b.into_inner().unwrap(), p);
        refused_in(&t, &a, "a link target longer than 4096 bytes");
    }

    /// The hole: a first link climbs to the root, a second one climbs out
    /// through it, though by name it stays inside.
    #[test]
    fn refuses_a_chained_escape_through_an_earlier_link() {
        let t = sandbox();
        let p = t.path();
        for target in [
            "x/y/../../a/..",
            "a/..",
            "a/../sentinel/keep",
            "x/../a/../x",
        ] {
            let e = refused_in(
                &t,
                &tar_gz(
                    &[
                        ("x/y/", DIR, "", b""),
                        ("a", LINK, ".", b""),
                        ("b", LINK, target, b""),
                    ],
                    p,
                ),
                "entry `b`: links outside the workspace",
            );
            assert!(e.contains("through the link `a`"), "{e}");
            let e = refused_in(
                &t,
                &zip_of(
                    &[
                        Z::Dir("x/"),
                        Z::Dir("x/y/"),
                        Z::Link("a", "."),
                        Z::Link("b", target),
                    ],
                    p,
                ),
                "src.zip: entry `b`: links outside the workspace",
            );
            assert!(e.contains("through the link `a`"), "{e}");
        }
    }

    #[test]
    fn refuses_entries_written_through_a_link() {
        let t = sandbox();
        let p = t.path();
        for kind in [FILE, DIR, LINK] {
            refused_in(
                &t,
                &tar_gz(&[("d", LINK, ".", b""), ("d/x", kind, "y", b"")], p),
                "entry `d/x`: goes through the link `d`",
            );
            refused_in(
                &t,
                &tar_gz(
                    &[
                        ("sub/", DIR, "", b""),
                        ("s", LINK, "sub", b""),
                        ("s/deep/x", kind, "y", b""),
                    ],
                    p,
                ),
                "entry `s/deep/x`: goes through the link `s`",
            );
        }
        refused_in(
            &t,
            &zip_of(&[Z::Link("d", "."), Z::File("d/x", b"x")], p),
            "src.zip: entry `d/x`: goes through the link `d`",
        );
        // A directory entry where a link is.
        refused_in(
            &t,
            &tar_gz(&[("d", LINK, ".", b""), ("d/", DIR, "", b"")], p),
            "entry `d/`: a directory where a link was unpacked",
        );
        // Through a file.
        refused_in(
            &t,
            &tar_gz(&[("f", FILE, "", b"x"), ("f/x", FILE, "", b"x")], p),
            "entry `f/x`: `f` is a file, not a directory",
        );
    }

    #[test]
    fn refuses_a_later_link_climbing_through_an_earlier_one() {
        let t = sandbox();
        let p = t.path();
        // `sub/l` leads to the root (fine), `m` climbs one more through it.
        let e = refused_in(
            &t,
            &tar_gz(
                &[
                    ("sub/", DIR, "", b""),
                    ("sub/l", LINK, "..", b""),
                    ("m", LINK, "sub/l/../sentinel", b""),
                ],
                p,
            ),
            "entry `m`: links outside the workspace (`sub/l/../sentinel`, through the link `sub/l`)",
        );
        assert!(!e.contains("entry `sub/l`"), "{e}");
        // Deeper: `d/e/p` leads to `d`; `q` climbs two from there.
        refused_in(
            &t,
            &tar_gz(
                &[
                    ("d/e/", DIR, "", b""),
                    ("d/e/p", LINK, "..", b""),
                    ("q", LINK, "d/e/p/../..", b""),
                ],
                p,
            ),
            "entry `q`: links outside the workspace",
        );
        refused_in(
            &t,
            &zip_of(
                &[
                    Z::Dir("sub/"),
                    Z::Link("sub/l", ".."),
                    Z::Link("m", "sub/l/.."),
                ],
                p,
            ),
            "src.zip: entry `m`: links outside the workspace",
        );
    }

    #[test]
    fn refuses_hard_links_mixed_with_symlinks() {
        let t = sandbox();
        let p = t.path();
        // A symlink to a directory, then a hard link through it.
        for (name, target) in [
            ("s/h", "../../sentinel/keep"),
            ("h", "s/../../sentinel/keep"),
            ("h2", "s/f"),
        ] {
            refused_in(
                &t,
                &tar_gz(
                    &[
                        ("sub/f", FILE, "", b"f"),
                        ("s", LINK, "sub", b""),
                        (name, HARD, target, b""),
                    ],
                    p,
                ),
                &format!("entry `{name}`: hard links are not allowed"),
            );
        }
        // A hard link to an earlier symlink (one leading out, one inside).
        for target in ["..", "sub"] {
            refused_in(
                &t,
                &tar_gz(
                    &[
                        ("sub/", DIR, "", b""),
                        ("l", LINK, target, b""),
                        ("h", HARD, "l", b""),
                    ],
                    p,
                ),
                "entry `h`: hard links are not allowed",
            );
        }
    }

    #[test]
    fn refuses_a_chain_whose_last_link_leads_out() {
        let t = sandbox();
        let p = t.path();
        // a -> b -> c, and c leads out: by name or only physically.
        for c in ["../sentinel", "dot/.."] {
            let e = refused_in(
                &t,
                &tar_gz(
                    &[
                        ("dot", LINK, ".", b""),
                        ("a", LINK, "b", b""),
                        ("b", LINK, "c", b""),
                        ("c", LINK, c, b""),
                    ],
                    p,
                ),
                "entry `a`: links outside the workspace (`b`, through the link `",
            );
            assert!(!e.contains("entry `dot`"), "{e}");
        }
        // A link whose target is a later entry: a link out.
        refused_in(
            &t,
            &tar_gz(&[("a", LINK, "b", b""), ("b", LINK, "..", b"")], p),
            "entry `a`: links outside the workspace (`b`, through the link `b`)",
        );
        refused_in(
            &t,
            &zip_of(&[Z::Link("a", "b"), Z::Link("b", "../x")], p),
            "src.zip: entry `a`: links outside the workspace",
        );
    }

    #[test]
    fn refuses_dangling_links_and_links_through_files() {
        let t = sandbox();
        let p = t.path();
        refused_in(
            &t,
            &tar_gz(&[("a", LINK, "nothing", b"")], p),
            "entry `a`: a dangling link (`nothing`: `nothing` does not exist)",
        );
        refused_in(
            &t,
            &tar_gz(
                &[("sub/", DIR, "", b""), ("a", LINK, "sub/nothing/x", b"")],
                p,
            ),
            "`sub/nothing` does not exist",
        );
        // Dangling at the end of a chain.
        refused_in(
            &t,
            &tar_gz(&[("a", LINK, "b", b""), ("b", LINK, "gone", b"")], p),
            "entry `a`: a dangling link (`b`: `gone` does not exist)",
        );
        refused_in(
            &t,
            &zip_of(&[Z::Link("a", "nothing")], p),
            "src.zip: entry `a`: a dangling link",
        );
        refused_in(
            &t,
            &tar_gz(&[("f", FILE, "", b"x"), ("l", LINK, "f/..", b"")], p),
            "entry `l`: links through a file (`f/..`: `f` is not a directory)",
        );
    }

    #[test]
    fn refuses_duplicate_names_where_the_second_is_a_link() {
        let t = sandbox();
        let p = t.path();
        for first in [
            ("x", FILE, "", &b"x"[..]),
            ("x/", DIR, "", b""),
            ("x/f", FILE, "", b"x"),
            ("x", LINK, "y", b""),
        ] {
            refused_in(
                &t,
                &tar_gz(&[("y", FILE, "", b"y"), first, ("x", LINK, "..", b"")], p),
                "entry `x`: appears twice in the archive",
            );
        }
        refused_in(
            &t,
            &tar_gz(&[("x", FILE, "", b"1"), ("x", FILE, "", b"2")], p),
            "entry `x`: appears twice",
        );
        // The zip crate will not write the same name twice: rename after.
        // Reading, it keeps only the last of the two (here, the link out).
        let z = zip_of(&[Z::File("dup1", b"x"), Z::Link("dup2", "..")], p);
        let mut bytes = fs::read(&z).unwrap();
        for i in 0..bytes.len() - 3 {
            if &bytes[i..i + 4] == b"dup2" {
                bytes[i + 3] = b'1';
            }
        }
        fs::write(&z, bytes).unwrap();
        refused_in(&t, &z, "src.zip: entry `dup1`: links outside the workspace");
    }

    #[test]
    fn refuses_link_loops_and_long_chains() {
        let t = sandbox();
        let p = t.path();
        refused_in(
            &t,
            &tar_gz(&[("a", LINK, "a", b"")], p),
            "entry `a`: a link loop",
        );
        refused_in(
            &t,
            &tar_gz(&[("a", LINK, "b", b""), ("b", LINK, "a", b"")], p),
            "entry `a`: a link loop",
        );
        // Growing on each turn.
        refused_in(
            &t,
            &tar_gz(&[("a", LINK, "a/a/a", b"")], p),
            "entry `a`: a link loop",
        );
        refused_in(
            &t,
            &zip_of(&[Z::Link("a", "./b"), Z::Link("b", "a")], p),
            "src.zip: entry `a`: a link loop",
        );
        // A chain of n links ending at a file: 40 is as far as the kernel
        // follows.
        let chain = |n: usize| {
            let names: Vec<String> = (0..=n).map(|i| format!("l{i}")).collect();
            let mut entries: Vec<(&str, tar::EntryType, &str, &[u8])> = (0..n)
                .map(|i| (names[i].as_str(), LINK, names[i + 1].as_str(), &b""[..]))
                .collect();
            entries.push((names[n].as_str(), FILE, "", b"end"));
            tar_gz(&entries, p)
        };
        refused_in(
            &t,
            &chain(41),
            "entry `l0`: a link loop, or a chain of more than 40 links",
        );
        let dest = p.join("ws");
        unpack(&chain(40), &dest, &Limits::default()).unwrap();
        assert_eq!(fs::read_to_string(dest.join("l0")).unwrap(), "end");
        fs::remove_dir_all(&dest).unwrap();
        // Long targets, each link going through all the earlier ones,
        // then many links to the last: the work of checking is bounded.
        let long = "d/../".repeat(818);
        let mut b = tar::Builder::new(Vec::new());
        tar_entry(&mut b, "d/", DIR, "", b"", 0o755);
        tar_entry(&mut b, "f", FILE, "", b"f", 0o644);
        for i in 0..40 {
            let end = if i == 0 {
                "f".to_string()
            } else {
                format!("l{}", i - 1)
            };
            pax(&mut b, "linkpath", format!("{long}{end}").as_bytes());
            tar_entry(&mut b, &format!("l{i}"), LINK, "", b"", 0o777);
        }
        for i in 0..30 {
            tar_entry(&mut b, &format!("m{i}"), LINK, "l39", b"", 0o777);
        }
        let a = write_tar_gz(b.into_inner().unwrap(), p);
        assert!(fs::metadata(&a).unwrap().len() < 20_000);
        refused_in(&t, &a, "its links take more than 1048576 steps to check");
    }

    #[test]
    fn drops_set_uid_set_gid_and_sticky_bits() {
        let t = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (name, mode) in [
            ("suid", 0o4755),
            ("sgid", 0o2644),
            ("sticky", 0o1777),
            ("w", 0o666),
        ] {
            tar_entry(&mut b, name, FILE, "", b"x", mode);
        }
        let a = write_tar_gz(b.into_inner().unwrap(), t.path());
        let dest = t.path().join("ws");
        unpack(&a, &dest, &Limits::default()).unwrap();
        for (name, want) in [
            ("suid", 0o755),
            ("sgid", 0o644),
            ("sticky", 0o755),
            ("w", 0o644),
        ] {
            let mode = fs::metadata(dest.join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, want, "{name}");
        }
    }

    #[test]
    fn an_existing_destination_is_refused_and_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("ws");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("mine"), "mine").unwrap();
        let a = tar_gz(&[("f", FILE, "", b"x")], t.path());
        let e = unpack(&a, &dest, &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("exists already"), "{e}");
        assert_eq!(fs::read_to_string(dest.join("mine")).unwrap(), "mine");
        assert!(!dest.join("f").exists());
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
        let a = tar_gz(&[("a", FILE, "", b"a"), ("b", FILE, "", b"b")], t.path());
        assert!(refused(&a, &dest, &limits).contains("more than 1 entries"));
        let not = t.path().join("x.rar");
        fs::write(&not, b"x").unwrap();
        assert!(refused(&not, &dest, &Limits::default()).contains("not a .zip, .tar.gz"));
    }
}
