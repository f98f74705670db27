//! Checks on plugin files (only in `load`; `parse` never touches the disk).
//! The header check catches the common mistakes early and with the plugin
//! entry's location: a wrong path, a non-Wasm file, or a core module built
//! for `wasm32-wasip1`/`wasm32-unknown-unknown` instead of a component.
//! Whether the component targets the right WIT world is the runtime's check.

use std::io::Read;

use super::{Diagnostic, PluginRef};
use crate::confined::{FileError, Origin};

const MAGIC: &[u8; 4] = b"\0asm";
/// Version 0x0d, layer 1: the component-model binary format.
const COMPONENT: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
/// Version 1, layer 0: a core module.
const CORE_MODULE: [u8; 4] = [0x01, 0x00, 0x00, 0x00];

/// The largest plugin component the host reads.
pub const MAX_PLUGIN_BYTES: u64 = 256 << 20;

pub(super) fn check_plugin_files<'a>(
    origin: &Origin,
    plugins: impl Iterator<Item = &'a PluginRef>,
) -> Vec<Diagnostic> {
    plugins
        .filter(|p| !p.path.as_os_str().is_empty()) // unresolvable; already reported
        .filter_map(|p| {
            let shown = origin.shown(&p.path);
            let checked = match origin.open_plugin(&p.path) {
                Ok(f) => header(f)
                    .map_err(|e| format!("cannot read {shown}: {e}"))
                    .and_then(|h| check_header(&shown, &h).map_err(|e| e.to_string())),
                Err(FileError::NotFound { .. }) => Err(format!(
                    "file {shown} not found (paths are relative to the pipeline file's directory); expected a .wasm component"
                )),
                Err(FileError::NotAFile { .. }) => {
                    Err(format!("{shown} is not a file; expected a .wasm component"))
                }
                Err(e) => Err(format!("cannot read the plugin: {e}")),
            };
            checked.err().map(|message| Diagnostic {
                location: p.location.clone(),
                message: format!("plugin `{}`: {message}", p.name),
            })
        })
        .collect()
}

/// The first 8 bytes (fewer when the file is shorter).
fn header(f: std::fs::File) -> std::io::Result<Vec<u8>> {
    let mut h = Vec::with_capacity(8);
    f.take(8).read_to_end(&mut h)?;
    Ok(h)
}

/// Whether `bytes` start like a component (and if not, what they are).
pub fn check_header(shown: &str, bytes: &[u8]) -> anyhow::Result<()> {
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        anyhow::bail!("{shown} is not a WebAssembly binary (expected it to start with `\\0asm`)");
    }
    let version = &bytes[4..8];
    if version == COMPONENT {
        Ok(())
    } else if version == CORE_MODULE {
        Err(anyhow::anyhow!(
            "{shown} is a core WebAssembly module, not a component; build for `wasm32-wasip2` or wrap it with `wasm-tools component new`"
        ))
    } else {
        Err(anyhow::anyhow!(
            "{shown} has an unsupported WebAssembly version/layer {version:02x?}; expected a component (0d 00 01 00)"
        ))
    }
}
