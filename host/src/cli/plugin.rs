//! `host plugin …`: look at, share, sign and start plugin components.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use super::plugin_new::{scaffold, Lang};
use crate::distribution::signing::{PublicKey, SecretKey, Signature};
use crate::distribution::store::BlobStore;
use crate::distribution::{oci, sha256_hex};
use crate::runtime::WORLD;

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Show a plugin's world, the imports it needs, its exports and describe().
    Inspect(InspectArgs),
    /// Push a component to an OCI registry (CNCF Wasm artifact layout).
    /// Credentials: HOST_REGISTRY_USERNAME / HOST_REGISTRY_PASSWORD.
    Push(PushArgs),
    /// Pull a component from an OCI registry into the local plugin cache.
    Pull(PullArgs),
    /// Create a signing key pair (secret key file + `ed25519:…` public key).
    Keygen(KeygenArgs),
    /// Sign a component: writes FILE.sig next to it.
    Sign(SignArgs),
    /// Check FILE.sig against one or more trusted public keys.
    Verify(VerifyArgs),
    /// Create a new plugin project that builds and runs as is.
    New(NewArgs),
}

#[derive(Args)]
pub struct PushArgs {
    /// The component file (.wasm). FILE.sig, if present, is pushed with it.
    pub file: PathBuf,
    /// Where to: `[oci://]registry/repo:tag`.
    pub reference: String,
}

#[derive(Args)]
pub struct PullArgs {
    /// `[oci://]registry/repo:tag` or `…@sha256:…`.
    pub reference: String,
    /// Also write the component (and its .sig) to this file.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Args)]
pub struct KeygenArgs {
    /// The secret key file to create (the public key goes to FILE.pub).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct SignArgs {
    /// The component file (.wasm).
    pub file: PathBuf,
    /// Secret key file from `host plugin keygen`.
    #[arg(long)]
    pub key: PathBuf,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The component file (.wasm); its signature is FILE.sig.
    pub file: PathBuf,
    /// A trusted public key `ed25519:…` (repeatable).
    #[arg(long = "key", required = true)]
    pub keys: Vec<String>,
}

#[derive(Args)]
pub struct NewArgs {
    /// Plugin name (lowercase, digits, `-`).
    pub name: String,
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: Lang,
    /// Directory to create (default: ./NAME).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Rust only: use this stage-sdk crate instead of writing the copy this
    /// host carries to vendor/stage-sdk-VERSION/.
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

#[derive(Args)]
pub struct InspectArgs {
    /// The component file (.wasm).
    pub file: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn plugin(cmd: PluginCommand, state_dir: &Path) -> Result<u8> {
    match cmd {
        PluginCommand::Inspect(a) => inspect(a, state_dir).await,
        PluginCommand::Push(a) => push(a, state_dir).await,
        PluginCommand::Pull(a) => pull(a, state_dir).await,
        PluginCommand::Keygen(a) => keygen(a),
        PluginCommand::Sign(a) => sign(a),
        PluginCommand::Verify(a) => verify(a),
        PluginCommand::New(a) => new(a),
    }
}

fn reference(text: &str) -> Result<oci_client::Reference> {
    let bare = text.strip_prefix("oci://").unwrap_or(text);
    oci::parse_reference(bare).map_err(|e| anyhow::anyhow!("{text}: {e}"))
}

fn sig_path(file: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sig", file.display()))
}

async fn push(args: PushArgs, state_dir: &Path) -> Result<u8> {
    let reference = reference(&args.reference)?;
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("reading plugin {}", args.file.display()))?;
    // Only components of our world are pushed: load and describe it first.
    let runtime = super::runtime(state_dir)?;
    let plugin = runtime.load(&args.file)?;
    let info = runtime
        .describe(&plugin)
        .await
        .with_context(|| format!("asking plugin {} to describe itself", args.file.display()))?;
    let (imports, exports) = runtime.interface(&plugin);
    let sha256 = sha256_hex(&bytes);
    let signature = match std::fs::read_to_string(sig_path(&args.file)) {
        Ok(text) => {
            let sig = Signature::from_json(&text)
                .with_context(|| format!("reading signature {}", sig_path(&args.file).display()))?;
            if sig.sha256 != sha256 {
                bail!(
                    "{} signs sha256:{}, not this file (sha256:{sha256}); sign it again",
                    sig_path(&args.file).display(),
                    sig.sha256
                );
            }
            Some(text)
        }
        Err(_) => None,
    };
    let annotations = BTreeMap::from([
        (
            "org.opencontainers.image.title".to_string(),
            info.name.clone(),
        ),
        (
            "org.opencontainers.image.version".to_string(),
            info.version.clone(),
        ),
        (
            "org.opencontainers.image.description".to_string(),
            info.description.clone(),
        ),
    ]);
    let config = oci::wasm_config(&sha256, &imports, &exports, WORLD);
    let signed = signature.is_some();
    let a = oci::push(
        &reference,
        bytes,
        config,
        annotations,
        signature,
        &oci::auth_from_env(),
    )
    .await?;
    println!(
        "pushed {} ({} {}) as oci://{}/{}@{}{}",
        args.file.display(),
        info.name,
        info.version,
        reference.registry(),
        reference.repository(),
        a.manifest_digest,
        if signed { ", signed" } else { "" }
    );
    println!("component sha256:{}", a.sha256);
    Ok(0)
}

async fn pull(args: PullArgs, state_dir: &Path) -> Result<u8> {
    let reference = reference(&args.reference)?;
    let (bytes, a) = oci::pull(&reference, &oci::auth_from_env()).await?;
    let store = BlobStore::new(state_dir);
    let (sha256, path) = store.put(&bytes)?;
    if let Some(s) = &a.signature {
        store.put_signature(&sha256, s)?;
    }
    println!(
        "pulled oci://{}/{}@{} (component sha256:{sha256}{})",
        reference.registry(),
        reference.repository(),
        a.manifest_digest,
        if a.signature.is_some() {
            ", signed"
        } else {
            ""
        }
    );
    println!("cached at {}", path.display());
    if let Some(out) = args.output {
        std::fs::write(&out, &bytes)
            .with_context(|| format!("writing plugin {}", out.display()))?;
        if let Some(s) = &a.signature {
            std::fs::write(sig_path(&out), s)?;
        }
        println!("wrote {}", out.display());
    }
    Ok(0)
}

fn keygen(args: KeygenArgs) -> Result<u8> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = SecretKey::generate()?;
    // create_new: never overwrite a key; 0600: it is a secret.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    f.write_all(key.to_file_text().as_bytes())?;
    let public = key.public().to_string();
    let pub_path = PathBuf::from(format!("{}.pub", args.out.display()));
    std::fs::write(&pub_path, format!("{public}\n"))?;
    println!(
        "secret key: {} (keep it out of the repository)",
        args.out.display()
    );
    println!("public key: {public}");
    println!("trust it in a pipeline with:\n  [trust]\n  signed-by = [\"{public}\"]");
    Ok(0)
}

fn sign(args: SignArgs) -> Result<u8> {
    let key = SecretKey::read(&args.key)?;
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("reading plugin {}", args.file.display()))?;
    let sig = key.sign(&sha256_hex(&bytes));
    let out = sig_path(&args.file);
    std::fs::write(&out, sig.to_json())
        .with_context(|| format!("writing signature {}", out.display()))?;
    println!(
        "signed {} (sha256:{}) with {}",
        args.file.display(),
        sig.sha256,
        sig.key
    );
    println!("wrote {}", out.display());
    Ok(0)
}

fn verify(args: VerifyArgs) -> Result<u8> {
    let trusted = args
        .keys
        .iter()
        .map(|k| PublicKey::parse(k).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("reading plugin {}", args.file.display()))?;
    let sha256 = sha256_hex(&bytes);
    let text = std::fs::read_to_string(sig_path(&args.file))
        .with_context(|| format!("{} is not signed", args.file.display()))?;
    let sig = Signature::from_json(&text)?;
    match sig.verify(&sha256, &trusted) {
        Ok(()) => {
            println!("{}: good signature by {}", args.file.display(), sig.key);
            Ok(0)
        }
        Err(e) => {
            eprintln!("{}: {e}", args.file.display());
            Ok(super::exit::FAILED)
        }
    }
}

fn new(args: NewArgs) -> Result<u8> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    let files = scaffold(args.lang, &args.name, &dir, args.sdk.as_deref())?;
    println!(
        "created {:?} plugin `{}` in {}:",
        args.lang,
        args.name,
        dir.display()
    );
    for f in files {
        println!("  {}", f.display());
    }
    let build = match args.lang {
        Lang::Rust => "cargo build --release --target wasm32-wasip2",
        Lang::Python | Lang::Js => "./build.sh",
    };
    println!("build it: cd {} && {build}", dir.display());
    Ok(0)
}

async fn inspect(args: InspectArgs, state_dir: &Path) -> Result<u8> {
    let runtime = super::runtime(state_dir)?;
    let plugin = runtime.load(&args.file)?;
    let (imports, exports) = runtime.interface(&plugin);
    let info = runtime
        .describe(&plugin)
        .await
        .with_context(|| format!("asking plugin {} to describe itself", args.file.display()))?;
    if args.json {
        let v = json!({
            "file": args.file.display().to_string(),
            "sha256": plugin.sha256,
            "world": WORLD,
            "imports": imports,
            "exports": exports,
            "describe": {
                "name": info.name,
                "version": info.version,
                "description": info.description,
                "capabilities": info.capabilities,
                "config": info.config.iter().map(|k| json!({
                    "name": k.name, "description": k.description,
                    "required": k.required, "default": k.default_value,
                })).collect::<Vec<_>>(),
            }
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("{} ({} {})", args.file.display(), info.name, info.version);
    println!("  sha256:  {}", plugin.sha256);
    println!("  world:   {WORLD}");
    println!("  {}", info.description);
    println!("imports:");
    for i in &imports {
        println!("  {i}");
    }
    println!("exports:");
    for e in &exports {
        println!("  {e}");
    }
    println!("capabilities it needs: {}", info.capabilities.join(", "));
    println!("config (`with` keys):");
    for k in &info.config {
        println!(
            "  {:<18} {}{}{}",
            k.name,
            if k.required { "(required) " } else { "" },
            k.description,
            k.default_value
                .as_deref()
                .map(|d| format!(" [default: {d}]"))
                .unwrap_or_default()
        );
    }
    Ok(0)
}
