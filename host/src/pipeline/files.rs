//! Checks on plugin files (only in `load`; `parse` never touches the disk).
//! The header check catches the common mistakes early and with the plugin
//! entry's location: a wrong path, a non-Wasm file, or a core module built
//! for `wasm32-wasip1`/`wasm32-unknown-unknown` instead of a component.
//! Whether the component targets the right WIT world is the runtime's check.

use std::io::Read;

use super::{Diagnostic, PluginRef};

const MAGIC: &[u8; 4] = b"\0asm";
/// Version 0x0d, layer 1: the component-model binary format.
const COMPONENT: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
/// Version 1, layer 0: a core module.
const CORE_MODULE: [u8; 4] = [0x01, 0x00, 0x00, 0x00];

pub(super) fn check_plugin_files<'a>(
    plugins: impl Iterator<Item = &'a PluginRef>,
) -> Vec<Diagnostic> {
    plugins
        .filter(|p| !p.path.as_os_str().is_empty()) // unresolvable; already reported
        .filter_map(|p| {
            check_one(p).err().map(|message| Diagnostic {
                location: p.location.clone(),
                message: format!("plugin `{}`: {message}", p.name),
            })
        })
        .collect()
}

fn check_one(p: &PluginRef) -> Result<(), String> {
    let shown = p.path.display();
    let meta = std::fs::metadata(&p.path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "file {shown} not found (paths are relative to the pipeline file's directory); expected a .wasm component"
        ),
        _ => format!("cannot read {shown}: {e}"),
    })?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a file; expected a .wasm component"));
    }
    let mut header = [0u8; 8];
    let mut f = std::fs::File::open(&p.path).map_err(|e| format!("cannot open {shown}: {e}"))?;
    let mut n = 0;
    while n < header.len() {
        match f.read(&mut header[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read {shown}: {e}")),
        }
    }
    if n < 8 || &header[..4] != MAGIC {
        return Err(format!(
            "{shown} is not a WebAssembly binary (expected it to start with `\\0asm`)"
        ));
    }
    let version = &header[4..8];
    if version == COMPONENT {
        Ok(())
    } else if version == CORE_MODULE {
        Err(format!(
            "{shown} is a core WebAssembly module, not a component; build for `wasm32-wasip2` or wrap it with `wasm-tools component new`"
        ))
    } else {
        Err(format!(
            "{shown} has an unsupported WebAssembly version/layer {version:02x?}; expected a component (0d 00 01 00)"
        ))
    }
}
