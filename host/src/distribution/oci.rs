//! Plugins as OCI artifacts, in the CNCF "Wasm OCI artifact" layout: a
//! manifest whose config has media type `application/vnd.wasm.config.v0+json`
//! and exactly one `application/wasm` layer, the component. Tools that
//! follow that layout (wkg, oras, wasmtime's and Spin's registries) can pull
//! what `host plugin push` pushed and the other way round.
//!
//! A signature, when the plugin has one, travels as the manifest annotation
//! [`SIGNATURE_ANNOTATION`]; it signs the layer's digest, so it cannot be
//! moved to other bytes.

use std::collections::BTreeMap;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::{is_loopback, parse_sha256, sha256_hex};

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_MEDIA_TYPE: &str = "application/wasm";
pub const SIGNATURE_ANNOTATION: &str = "dev.pipeline-host.signature";
/// Components larger than this are refused before downloading.
pub const MAX_COMPONENT_BYTES: i64 = 128 << 20;

/// Registry credentials come from the environment of the `host` process,
/// never from the pipeline file.
pub const USER_ENV: &str = "HOST_REGISTRY_USERNAME";
pub const PASSWORD_ENV: &str = "HOST_REGISTRY_PASSWORD";

/// Parse `registry/repo:tag` or `registry/repo@sha256:…` (see
/// [`crate::plugin_source::parse_oci_reference`]; this is its old path).
pub use crate::plugin_source::{parse_oci_reference as parse_reference, ReferenceError};

/// Credentials from [`USER_ENV`] / [`PASSWORD_ENV`], else anonymous.
pub fn auth_from_env() -> RegistryAuth {
    match (std::env::var(USER_ENV), std::env::var(PASSWORD_ENV)) {
        (Ok(u), Ok(p)) if !u.is_empty() => RegistryAuth::Basic(u, p),
        _ => RegistryAuth::Anonymous,
    }
}

/// A client for `reference`'s registry: plain HTTP only on loopback (as
/// Docker treats 127.0.0.0/8), TLS everywhere else.
fn client(reference: &Reference) -> Client {
    let registry = reference.resolve_registry();
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    let protocol = if is_loopback(host) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        ..Default::default()
    })
}

/// What a push or pull saw.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The component bytes' sha256 (the layer digest, hex).
    pub sha256: String,
    /// The manifest's digest (`sha256:…`), to pin the reference.
    pub manifest_digest: String,
    pub signature: Option<String>,
}

/// The config blob of the CNCF layout.
pub fn wasm_config(
    sha256: &str,
    imports: &[String],
    exports: &[String],
    target: &str,
) -> serde_json::Value {
    serde_json::json!({
        "created": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [format!("sha256:{sha256}")],
        "component": { "exports": exports, "imports": imports, "target": target },
    })
}

pub async fn push(
    reference: &Reference,
    wasm: Vec<u8>,
    config: serde_json::Value,
    mut annotations: BTreeMap<String, String>,
    signature: Option<String>,
    auth: &RegistryAuth,
) -> anyhow::Result<Artifact> {
    let sha256 = sha256_hex(&wasm);
    if let Some(s) = &signature {
        annotations.insert(SIGNATURE_ANNOTATION.into(), s.clone());
    }
    let layers = [ImageLayer::new(wasm, WASM_MEDIA_TYPE.into(), None)];
    let config = Config::new(serde_json::to_vec(&config)?, CONFIG_MEDIA_TYPE.into(), None);
    let manifest = OciImageManifest::build(&layers, &config, Some(annotations));
    let c = client(reference);
    c.push(reference, &layers, config, auth, Some(manifest))
        .await
        .map_err(|e| registry_error(reference, e))?;
    let manifest_digest = c
        .fetch_manifest_digest(reference, auth)
        .await
        .map_err(|e| registry_error(reference, e))?;
    Ok(Artifact {
        sha256,
        manifest_digest,
        signature,
    })
}

/// The manifest digest `reference` (a tag) points to now.
pub async fn manifest_digest(reference: &Reference, auth: &RegistryAuth) -> anyhow::Result<String> {
    client(reference)
        .fetch_manifest_digest(reference, auth)
        .await
        .map_err(|e| registry_error(reference, e))
}

/// Pull the component of `reference`, checking the layout and that the
/// bytes match the layer digest.
pub async fn pull(
    reference: &Reference,
    auth: &RegistryAuth,
) -> anyhow::Result<(Vec<u8>, Artifact)> {
    let c = client(reference);
    let (manifest, manifest_digest) = c
        .pull_image_manifest(reference, auth)
        .await
        .map_err(|e| registry_error(reference, e))?;
    let shown = reference.whole();
    if manifest.config.media_type != CONFIG_MEDIA_TYPE {
        anyhow::bail!(
            "{shown} is not a Wasm component artifact: its config media type is {:?}, expected {CONFIG_MEDIA_TYPE:?}",
            manifest.config.media_type
        );
    }
    let [layer] = manifest.layers.as_slice() else {
        anyhow::bail!(
            "{shown} has {} layers; a Wasm component artifact has exactly one `{WASM_MEDIA_TYPE}` layer",
            manifest.layers.len()
        );
    };
    if layer.media_type != WASM_MEDIA_TYPE {
        anyhow::bail!(
            "{shown}: layer media type is {:?}, expected {WASM_MEDIA_TYPE:?}",
            layer.media_type
        );
    }
    if layer.size > MAX_COMPONENT_BYTES {
        anyhow::bail!(
            "{shown}: component is {} bytes, over the {MAX_COMPONENT_BYTES}-byte limit",
            layer.size
        );
    }
    let expected =
        parse_sha256(&layer.digest).map_err(|e| anyhow::anyhow!("{shown}: layer digest: {e}"))?;
    let mut bytes = Vec::with_capacity(layer.size.max(0) as usize);
    c.pull_blob(reference, layer, &mut bytes)
        .await
        .map_err(|e| registry_error(reference, e))?;
    let sha256 = sha256_hex(&bytes);
    if sha256 != expected {
        anyhow::bail!("{shown}: the registry sent bytes with sha256:{sha256}, but the manifest says sha256:{expected}");
    }
    let signature = manifest
        .annotations
        .as_ref()
        .and_then(|a| a.get(SIGNATURE_ANNOTATION))
        .cloned();
    Ok((
        bytes,
        Artifact {
            sha256,
            manifest_digest,
            signature,
        },
    ))
}

fn registry_error(
    reference: &Reference,
    e: oci_client::errors::OciDistributionError,
) -> anyhow::Error {
    use oci_client::errors::OciDistributionError as E;
    let hint = match &e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => {
            format!(" (set {USER_ENV} and {PASSWORD_ENV} for this registry)")
        }
        _ => String::new(),
    };
    anyhow::anyhow!(
        "registry {}: {}: {e}{hint}",
        reference.resolve_registry(),
        reference.whole()
    )
}
