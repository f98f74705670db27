//! The build context, sent to the engine as a tar that is written while
//! the context is read: a bounded channel of 64KiB chunks, never the whole
//! context in host memory, and never more than the stage's context limit.
//!
//! The tar is made from a directory handle opened beneath the workspace
//! (cap-std): entries are listed without following links, symbolic links
//! are sent as links (the engine resolves them inside the context), a
//! directory or file swapped for something else while it is read stops the
//! build, and fifos, sockets and devices are left out. The Dockerfile is
//! sent as the host read and checked it, whatever is in the directory now.
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use cap_std::fs::{Dir, MetadataExt, OpenOptions, OpenOptionsExt};
use futures::Stream;
use tokio::sync::mpsc;

use super::policy::size_text;
use crate::wit::CapError;

/// Bytes per chunk sent to the engine.
const CHUNK: usize = 64 * 1024;
/// Chunks waiting for the engine: what the host holds at most.
const IN_FLIGHT: usize = 8;
/// Deepest directory nesting walked.
const MAX_DEPTH: usize = 256;
/// Room for an entry's header (and a long name's extra header).
const HEADER_ROOM: u64 = 3 * 512;
/// `O_NONBLOCK`: a fifo swapped in for a file cannot hang the host.
const O_NONBLOCK: i32 = 0o4000;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("the build context is larger than its limit of {} (reached at `{path}`); nothing was built. Build from a smaller context directory, or raise the limit with `grants.docker.context-limit`", size_text(*limit))]
    TooLarge { path: String, limit: u64 },
    #[error("`{path}` changed while the build context was read")]
    Changed { path: String },
    #[error("the build context nests deeper than {MAX_DEPTH} directories at `{path}`")]
    TooDeep { path: String },
    #[error("reading the build context at `{path}`: {source}")]
    Io { path: String, source: io::Error },
    /// The engine stopped reading (it answered with an error first).
    #[error("the engine stopped reading the build context")]
    Closed,
}

impl From<ContextError> for CapError {
    fn from(e: ContextError) -> Self {
        match e {
            ContextError::TooLarge { .. } | ContextError::TooDeep { .. } => {
                CapError::Limit(e.to_string())
            }
            _ => CapError::Failed(e.to_string()),
        }
    }
}

/// Writes tar bytes into the channel, a chunk at a time.
struct Sink {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
    written: u64,
    limit: u64,
    /// Set on failure: nothing more is sent, so the engine never sees a
    /// tar that ends early but looks complete.
    poisoned: bool,
    over_limit: bool,
    closed: bool,
}

impl Sink {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            self.closed = true;
            io::Error::new(io::ErrorKind::BrokenPipe, "the engine stopped reading")
        })
    }
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.poisoned {
            return Err(io::Error::other("the build context was abandoned"));
        }
        if self.written + data.len() as u64 > self.limit {
            self.over_limit = true;
            return Err(io::Error::other("the build context is over its limit"));
        }
        self.buf.extend_from_slice(data);
        self.written += data.len() as u64;
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.poisoned {
            return Ok(());
        }
        self.send()
    }
}

struct Walk<'a> {
    dockerfile: &'a Path,
    limit: u64,
    skipped: Cell<usize>,
}

fn shown(p: &Path) -> String {
    p.display().to_string().escape_debug().to_string()
}

impl Walk<'_> {
    /// Refuse an entry of `size` bytes that would take the tar over the limit.
    fn reserve(&self, b: &tar::Builder<Sink>, size: u64, path: &Path) -> Result<(), ContextError> {
        let need = HEADER_ROOM + size.div_ceil(512) * 512;
        if b.get_ref().written.saturating_add(need) > self.limit {
            return Err(ContextError::TooLarge {
                path: shown(path),
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// The error for an io failure while writing or reading `path`.
    fn error(&self, b: &tar::Builder<Sink>, path: &Path, e: io::Error) -> ContextError {
        let sink = b.get_ref();
        if sink.over_limit {
            ContextError::TooLarge {
                path: shown(path),
                limit: self.limit,
            }
        } else if sink.closed {
            ContextError::Closed
        } else {
            ContextError::Io {
                path: shown(path),
                source: e,
            }
        }
    }

    fn walk(
        &self,
        dir: &Dir,
        rel: &Path,
        b: &mut tar::Builder<Sink>,
        depth: usize,
    ) -> Result<(), ContextError> {
        if depth > MAX_DEPTH {
            return Err(ContextError::TooDeep { path: shown(rel) });
        }
        let io_err = |path: &Path, e: io::Error| ContextError::Io {
            path: shown(path),
            source: e,
        };
        let mut entries = Vec::new();
        for e in dir.entries().map_err(|e| io_err(rel, e))? {
            let e = e.map_err(|e| io_err(rel, e))?;
            let name = e.file_name();
            // lstat: the entry itself, never what a link points at.
            let meta = e.metadata().map_err(|e| io_err(&rel.join(&name), e))?;
            entries.push((name, meta));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, meta) in entries {
            let path = rel.join(&name);
            if path == self.dockerfile {
                continue;
            }
            let ft = meta.file_type();
            let mtime = meta.mtime().max(0) as u64;
            if ft.is_dir() {
                self.reserve(b, 0, &path)?;
                let sub = dir.open_dir(&name).map_err(|e| io_err(&path, e))?;
                let now = sub.dir_metadata().map_err(|e| io_err(&path, e))?;
                if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
                    return Err(ContextError::Changed { path: shown(&path) });
                }
                let mut h = header(tar::EntryType::Directory, meta.mode(), 0, mtime);
                b.append_data(&mut h, &path, io::empty())
                    .map_err(|e| self.error(b, &path, e))?;
                self.walk(&sub, &path, b, depth + 1)?;
            } else if ft.is_symlink() {
                self.reserve(b, 0, &path)?;
                let target = dir
                    .read_link_contents(&name)
                    .map_err(|e| io_err(&path, e))?;
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, mtime);
                b.append_link(&mut h, &path, &target)
                    .map_err(|e| self.error(b, &path, e))?;
            } else if ft.is_file() {
                let size = meta.len();
                // Before a byte of it is read: a huge file fails at once.
                self.reserve(b, size, &path)?;
                let mut opts = OpenOptions::new();
                opts.read(true).custom_flags(O_NONBLOCK);
                let f = dir.open_with(&name, &opts).map_err(|e| io_err(&path, e))?;
                let now = f.metadata().map_err(|e| io_err(&path, e))?;
                if !now.is_file() || (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
                    return Err(ContextError::Changed { path: shown(&path) });
                }
                let mut h = header(tar::EntryType::Regular, meta.mode(), size, mtime);
                // Exactly `size` bytes, whether the file grew or shrank.
                let data = f.take(size).chain(io::repeat(0)).take(size);
                b.append_data(&mut h, &path, data)
                    .map_err(|e| self.error(b, &path, e))?;
            } else {
                self.skipped.set(self.skipped.get() + 1);
            }
        }
        Ok(())
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// What was sent.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub bytes: u64,
    /// Fifos, sockets and devices left out.
    pub skipped: usize,
}

fn write_tar(
    dir: &Dir,
    dockerfile: &Path,
    text: &[u8],
    limit: u64,
    tx: mpsc::Sender<io::Result<Bytes>>,
) -> Result<Sent, ContextError> {
    let mut b = tar::Builder::new(Sink {
        tx,
        buf: BytesMut::with_capacity(CHUNK * 2),
        written: 0,
        limit,
        poisoned: false,
        over_limit: false,
        closed: false,
    });
    let walk = Walk {
        dockerfile,
        limit,
        skipped: Cell::new(0),
    };
    let mut body = || -> Result<(), ContextError> {
        walk.walk(dir, Path::new(""), &mut b, 0)?;
        walk.reserve(&b, text.len() as u64, dockerfile)?;
        let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64, 0);
        b.append_data(&mut h, dockerfile, text)
            .map_err(|e| walk.error(&b, dockerfile, e))?;
        b.finish().map_err(|e| walk.error(&b, dockerfile, e))?;
        b.get_mut()
            .flush()
            .map_err(|e| walk.error(&b, dockerfile, e))
    };
    match body() {
        Ok(()) => {
            let bytes = b.get_ref().written;
            Ok(Sent {
                bytes,
                skipped: walk.skipped.get(),
            })
        }
        Err(e) => {
            // Dropping the builder would write the end of the archive.
            b.get_mut().poisoned = true;
            Err(e)
        }
    }
}

/// Start writing the context of `dir` as a tar. The stream is the request
/// body for the engine; it ends in an error (aborting the request) if the
/// context cannot be sent whole. The handle says what was sent, or why not.
pub fn stream(
    dir: Dir,
    dockerfile: String,
    text: String,
    limit: u64,
) -> (
    impl Stream<Item = io::Result<Bytes>> + Send + 'static,
    tokio::task::JoinHandle<Result<Sent, ContextError>>,
) {
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let handle = tokio::task::spawn_blocking(move || {
        let abort = tx.clone();
        let r = write_tar(&dir, &PathBuf::from(dockerfile), text.as_bytes(), limit, tx);
        if let Err(e) = &r {
            let _ = abort.blocking_send(Err(io::Error::other(e.to_string())));
        }
        r
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (body, handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    async fn collect(
        dir: &Path,
        dockerfile: &str,
        text: &str,
        limit: u64,
    ) -> (Vec<u8>, Option<String>, Result<Sent, ContextError>) {
        let d = Dir::open_ambient_dir(dir, cap_std::ambient_authority()).unwrap();
        let (body, handle) = stream(d, dockerfile.into(), text.into(), limit);
        let mut body = Box::pin(body);
        let mut out = Vec::new();
        let mut err = None;
        while let Some(item) = body.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => err = Some(e.to_string()),
            }
        }
        (out, err, handle.await.unwrap())
    }

    #[tokio::test]
    async fn links_are_kept_and_the_checked_dockerfile_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path();
        std::fs::create_dir_all(ctx.join("src/deep")).unwrap();
        std::fs::write(ctx.join("src/deep/a.txt"), "hello").unwrap();
        std::fs::write(ctx.join("Dockerfile"), "FROM evil/swapped").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ctx.join("passwd")).unwrap();
        std::os::unix::fs::symlink("/etc", ctx.join("etc")).unwrap();
        let (tar_bytes, err, sent) = collect(ctx, "Dockerfile", "FROM scratch\n", 1 << 20).await;
        assert!(err.is_none(), "{err:?}");
        let sent = sent.unwrap();
        assert_eq!(sent.bytes as usize, tar_bytes.len());
        let mut seen = Vec::new();
        let mut a = tar::Archive::new(&tar_bytes[..]);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let kind = e.header().entry_type();
            let mut body = String::new();
            if kind.is_file() {
                e.read_to_string(&mut body).unwrap();
            }
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.display().to_string())
                .unwrap_or_default();
            seen.push(format!("{path} {kind:?} {link}{body}"));
        }
        assert_eq!(
            seen,
            [
                "etc Symlink /etc",
                "passwd Symlink /etc/passwd",
                "src Directory ",
                "src/deep Directory ",
                "src/deep/a.txt Regular hello",
                "Dockerfile Regular FROM scratch\n",
            ]
        );
    }

    #[tokio::test]
    async fn a_context_over_the_limit_fails_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path();
        std::fs::write(ctx.join("Dockerfile"), "FROM scratch").unwrap();
        // A 3GiB sparse file: reading it would take a while.
        let f = std::fs::File::create(ctx.join("big.bin")).unwrap();
        f.set_len(3 << 30).unwrap();
        let started = std::time::Instant::now();
        let (tar_bytes, err, sent) = collect(ctx, "Dockerfile", "FROM scratch", 1 << 20).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(tar_bytes.len() < 1 << 20);
        assert!(err.is_some(), "the body must end in an error");
        let e = sent.unwrap_err();
        assert!(matches!(e, ContextError::TooLarge { .. }), "{e}");
        let msg = CapError::from(e);
        match msg {
            CapError::Limit(m) => {
                assert!(m.contains("1MiB") && m.contains("big.bin"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
}
