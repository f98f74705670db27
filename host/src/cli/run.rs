//! `host run`: run a pipeline against the current checkout.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::exit;
use crate::distribution::{self, LockMode};
use crate::pipeline;
use crate::run::console::Console;
use crate::run::launch::{Launch, LaunchError, RunControl};
use crate::run::record::SourceArchive;
use crate::run::{git, RunOptions, RunStore, Status};
use crate::source::{
    self,
    archive::{ArchiveError, Limits},
};

/// How a run started from the command line reports and resolves plugins
/// (`host run`, `host rollback`).
#[derive(Args)]
pub struct RunFlags {
    /// Do not print stage log lines while running.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the run record as JSON on stdout at the end.
    #[arg(long)]
    pub json: bool,
    /// Refuse to run unless every remote plugin is already pinned in the
    /// lock file (for CI: the lock file is never changed).
    #[arg(long)]
    pub locked: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// The pipeline file.
    pub file: PathBuf,
    /// Branch being built (default: the checkout's current branch).
    #[arg(long)]
    pub branch: Option<String>,
    /// Tag being built, e.g. v1.2.3 (default: a tag pointing at HEAD).
    #[arg(long)]
    pub tag: Option<String>,
    /// Commit sha (default: the checkout's HEAD).
    #[arg(long)]
    pub sha: Option<String>,
    /// Build number (default: one more than the last recorded run).
    #[arg(long)]
    pub build_number: Option<u64>,
    /// What triggered the run: push, tag, pull_request, manual...
    /// (default: push, or upload with --source).
    #[arg(long)]
    pub event: Option<String>,
    /// Set a variable stages may be granted by name (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// Directory mounted at /workspace (default: the current directory).
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// Run on a source archive (.zip, .tar.gz, .tgz, .tar) instead of a
    /// directory: it is checked (size limits, no path traversal, no links
    /// leaving it) and unpacked into a fresh workspace, removed afterwards.
    #[arg(long, value_name = "ARCHIVE", conflicts_with = "workspace")]
    pub source: Option<PathBuf>,
    /// The environment this run deploys to (default: from `[environments]`
    /// by branch or tag).
    #[arg(long)]
    pub environment: Option<String>,
    /// Link to show in notifications.
    #[arg(long, default_value = "")]
    pub url: String,
    #[command(flatten)]
    pub output: RunFlags,
    /// Run in the git checkout itself even when a stage may write the
    /// workspace. Risky: such a stage (or a container it runs) can write
    /// `.git` (hooks, `core.fsmonitor`, `core.sshCommand`…), and the next git
    /// command anyone runs there executes what it wrote. Without it, such
    /// runs get a per-run copy of the working tree (the files git knows of,
    /// uncommitted changes included, without `.git` and ignored files),
    /// removed afterwards.
    #[arg(long, conflicts_with = "source")]
    pub in_place: bool,
    /// Run every stage, even those whose `cache` key matches an earlier
    /// run (their fresh results are kept for later runs).
    #[arg(long)]
    pub no_cache: bool,
}

pub(super) fn lock_mode(locked: bool) -> LockMode {
    if locked {
        LockMode::Locked
    } else {
        LockMode::Normal
    }
}

pub(super) use distribution::load_resolved;

pub(super) fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected K=V, got `{s}`"))?;
    if k.is_empty() {
        return Err(format!("empty variable name in `{s}`"));
    }
    Ok((k.to_string(), v.to_string()))
}

pub async fn run(args: RunArgs, state_dir: &Path) -> Result<u8> {
    let pipeline = match load_resolved(&args.file, state_dir, lock_mode(args.output.locked)).await {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("{e}");
            return Ok(exit::USAGE);
        }
    };
    let unpacked = match &args.source {
        Some(archive) => match unpack_source(archive, state_dir).await? {
            Ok(u) => Some(u),
            Err(e) => {
                eprintln!("--source {e}");
                return Ok(exit::USAGE);
            }
        },
        None => None,
    };
    let checkout_dir = match &unpacked {
        Some((dir, _)) => resolve_workspace(Some(&dir.path().join("workspace")))?,
        None => resolve_workspace(args.workspace.as_deref())?,
    };
    let checkout = git::read(&checkout_dir);
    let copy = match &unpacked {
        Some(_) => None,
        None => working_copy(&pipeline, &checkout_dir, state_dir, args.in_place).await?,
    };
    let workspace = match &copy {
        Some(holder) => holder.path().canonicalize()?,
        None => checkout_dir,
    };
    let store = RunStore::open(state_dir)?;
    let mut opts = new_options(&pipeline, workspace, &store, args.build_number)?;
    if let Some((_, archive)) = &unpacked {
        opts.trigger = Some(crate::run::record::TriggerInfo {
            archive: Some(archive.clone()),
            ..Default::default()
        });
    }
    opts.commit_sha = args.sha.or(checkout.sha).unwrap_or_default();
    opts.tag = args.tag.or(if args.branch.is_none() {
        checkout.tag
    } else {
        None
    });
    opts.branch = args.branch.or(if opts.tag.is_none() {
        checkout.branch
    } else {
        None
    });
    opts.event = args
        .event
        .unwrap_or_else(|| if unpacked.is_some() { "upload" } else { "push" }.to_string());
    opts.url = args.url;
    if let Some(env) = args.environment {
        if pipeline.environment(&env).is_none() {
            anyhow::bail!(
                "--environment {env}: not declared in [environments] of {}",
                args.file.display()
            );
        }
        opts.environment = Some(env);
    }
    opts.env.extend(args.env);
    opts.no_cache = args.no_cache;
    drop(store);
    // `unpacked` and `copy` (the workspace) live until the run has ended.
    let code = execute(
        pipeline,
        opts,
        state_dir,
        args.output.quiet,
        args.output.json,
    )
    .await;
    drop(unpacked);
    drop(copy);
    code
}

/// Whether any stage may write the workspace.
fn writes_workspace(p: &pipeline::Pipeline) -> bool {
    p.stages
        .iter()
        .any(|s| s.grants.workspace == Some(pipeline::WorkspaceAccess::ReadWrite))
}

/// A per-run copy of a git checkout a stage may write (see `--in-place`):
/// the stages never get the user's `.git`. `None`: run in `dir` itself.
async fn working_copy(
    p: &pipeline::Pipeline,
    dir: &Path,
    state_dir: &Path,
    in_place: bool,
) -> Result<Option<tempfile::TempDir>> {
    let is_checkout = std::fs::symlink_metadata(dir.join(".git")).is_ok();
    if !is_checkout || !writes_workspace(p) {
        return Ok(None);
    }
    if in_place {
        eprintln!(
            "workspace: {} in place (--in-place): stages may write it, .git included",
            dir.display()
        );
        return Ok(None);
    }
    let files = crate::exec::git::ls_files(dir).await.map_err(|e| {
        anyhow::anyhow!(
            "listing the files of the checkout {} with git: {e}",
            dir.display()
        )
    })?;
    let parent = state_dir.join("workspaces");
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let holder = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a workspace in {}", parent.display()))?;
    let (from, to) = (dir.to_path_buf(), holder.path().to_path_buf());
    let copied =
        tokio::task::spawn_blocking(move || source::copy::copy_tree(&from, &files, &to)).await??;
    eprintln!(
        "workspace: a copy of {} for this run ({} files, without .git, since a stage may write it; --in-place runs in the checkout itself)",
        dir.display(),
        copied.files + copied.links
    );
    Ok(Some(holder))
}

/// A source archive unpacked into a fresh directory that is removed when
/// dropped (the outer error: the machine; the inner one: the archive).
async fn unpack_source(
    archive: &Path,
    state_dir: &Path,
) -> Result<Result<(tempfile::TempDir, SourceArchive), ArchiveError>> {
    let parent = state_dir.join("sources");
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let holder = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a workspace in {}", parent.display()))?;
    let archive = archive.to_path_buf();
    let root = holder.path().to_path_buf();
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let result = tokio::task::spawn_blocking(move || {
        source::archive::workspace(&archive, &name, &root, "workspace", &Limits::default())
    })
    .await?;
    Ok(result.map(|(_, info)| (holder, info)))
}

/// The workspace directory, canonical (default: the current directory).
pub(super) fn resolve_workspace(dir: Option<&Path>) -> Result<PathBuf> {
    let workspace = match dir {
        Some(w) => w.to_path_buf(),
        None => std::env::current_dir()?,
    };
    workspace
        .canonicalize()
        .with_context(|| format!("workspace {}", workspace.display()))
}

/// Options of a new run: a fresh id and the next build number.
pub(super) fn new_options(
    pipeline: &pipeline::Pipeline,
    workspace: PathBuf,
    store: &RunStore,
    build_number: Option<u64>,
) -> Result<RunOptions> {
    let mut opts = RunOptions::new(crate::run::record::new_run_id(), workspace);
    opts.build_number = match build_number {
        Some(n) => n,
        None => store.next_build_number(&pipeline.name)?,
    };
    Ok(opts)
}

/// Check, load plugins, run with a console and Ctrl-C handling, record.
pub(super) async fn execute(
    pipeline: Arc<pipeline::Pipeline>,
    opts: RunOptions,
    state_dir: &Path,
    quiet: bool,
    json: bool,
) -> Result<u8> {
    let runtime = Arc::new(super::runtime(state_dir)?);
    let names: Vec<String> = pipeline.stages.iter().map(|s| s.name.clone()).collect();
    let console = Arc::new(Console::new(!quiet, &names));
    eprintln!(
        "run {} of `{}` #{} — {} @ {}{}",
        opts.id,
        pipeline.name,
        opts.build_number,
        opts.tag
            .as_deref()
            .map(|t| format!("tag {t}"))
            .or(opts.branch.as_deref().map(|b| format!("branch {b}")))
            .unwrap_or_else(|| "no branch".into()),
        if opts.commit_sha.is_empty() {
            "no commit"
        } else {
            &opts.commit_sha[..opts.commit_sha.len().min(12)]
        },
        opts.environment
            .as_deref()
            .map(|e| format!(" → {e}"))
            .unwrap_or_default()
    );

    let control = RunControl::new();
    {
        let control = control.clone();
        // Registered here, before any stage starts: `ctrl_c()` would only
        // register when the spawned task is first polled, and a Ctrl-C
        // before that would kill the process without a run record.
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("installing the Ctrl-C handler")?;
        tokio::spawn(async move {
            if interrupt.recv().await.is_some() {
                eprintln!("\ncancelling: stopping running stages…");
                control.cancel("cancelled with Ctrl-C");
            }
        });
    }
    let stores = crate::run::stores::RunStores::open(state_dir)?;
    let launch = Launch {
        runtime,
        stores: &stores,
        observer: console.clone(),
        control,
    };
    let record = match launch.run(pipeline, opts).await {
        Ok(r) => r,
        Err(LaunchError::Plugins(diags)) => {
            for d in &diags {
                eprintln!("{d}");
            }
            return Ok(exit::USAGE);
        }
        Err(LaunchError::Host(e)) => return Err(e),
    };
    console.summary(&record);
    if json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    }
    Ok(match record.status {
        Status::Success => 0,
        Status::Cancelled => exit::CANCELLED,
        _ => exit::FAILED,
    })
}
