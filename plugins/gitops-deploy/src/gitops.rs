//! The deploy: clone, edit, commit, push — again from a fresh clone when
//! the remote moved on — against the SDK's [`Git`] port (the host's `git`
//! import in the plugin, a simulated repository in the tests).

use stage_sdk::{Annotation, CapError, Report, StageError};

use crate::config::Config;
use crate::edit::{self, Change, Target};

use stage_sdk::git::Checkout;
pub use stage_sdk::git::Git;

/// The remote moved on since the clone.
pub fn is_non_fast_forward(e: &CapError) -> bool {
    matches!(e, CapError::Remote(r) if r.code == "NON_FAST_FORWARD")
}

/// One file's edit.
struct FileResult {
    path: String,
    text: String,
    changed: bool,
    found: usize,
    changes: Vec<Change>,
    previous: Option<String>,
}

enum Attempt {
    Done(Report),
    /// Pushed too late: the remote moved on.
    Moved(CapError),
}

/// The stage, all but the export glue.
pub fn deploy(cfg: &Config, git: &mut impl Git) -> Result<Report, StageError> {
    let attempts = cfg.retries + 1;
    let mut n = 1;
    loop {
        match attempt(cfg, git)? {
            Attempt::Done(r) => return Ok(r),
            Attempt::Moved(e) if n < attempts => {
                stage_sdk::log::warn!(
                    "push to {} rejected, the remote moved on ({}): cloning again (retry {n} of {})",
                    cfg.repo_label(),
                    e.message(),
                    cfg.retries
                );
                n += 1;
            }
            Attempt::Moved(e) => {
                let msg = format!(
                    "git push to {}: {} — still rejected after {n} attempt(s) (with.retries = {})",
                    cfg.repo_label(),
                    e.message(),
                    cfg.retries
                );
                stage_sdk::log::error(&msg);
                return Ok(base(cfg, Report::failed(msg.clone()))
                    .annotate(Annotation::error("git push rejected", msg)));
            }
        }
    }
}

/// The outputs every report carries.
fn base(cfg: &Config, r: Report) -> Report {
    let r = r
        .output("image", cfg.image.as_str())
        .output("repo", cfg.repo.as_str());
    match &cfg.branch {
        Some(b) => r.output("branch", b.as_str()),
        None => r,
    }
}

/// A failed capability call as a failed report, denials spelled out.
fn cap_failed(cfg: &Config, op: &str, e: &CapError) -> Report {
    let msg = format!("{op}: {}", e.message());
    stage_sdk::log::error(&msg);
    let annotation = match e {
        CapError::Denied(_) => {
            let hint = if op.starts_with("git push") {
                format!("the branch must be one `[git.{}] push` lists", cfg.repo)
            } else {
                format!(
                    "declare `[git.{0}]` and grant it to the stage: grants = {{ git = [\"{0}\"] }}",
                    cfg.repo
                )
            };
            Annotation::error("git access denied", format!("{msg} ({hint})"))
        }
        _ => Annotation::error(format!("{op} failed"), msg.clone()),
    };
    base(cfg, Report::failed(msg)).annotate(annotation)
}

/// Comma-separated, shortened after a few.
fn join_short(items: &[String]) -> String {
    const MAX: usize = 5;
    if items.len() <= MAX {
        items.join(", ")
    } else {
        format!("{} and {} more", items[..MAX].join(", "), items.len() - MAX)
    }
}

/// Why an attempt ends before its push: a report to return, or a config
/// error (a glob matching no file).
enum Stop {
    Done(Report),
    Config(StageError),
}

/// A capability call's value, or the failed report that ends the attempt.
fn cap<T>(cfg: &Config, op: impl FnOnce() -> String, r: Result<T, CapError>) -> Result<T, Stop> {
    r.map_err(|e| Stop::Done(cap_failed(cfg, &op(), &e)))
}

fn attempt(cfg: &Config, git: &mut impl Git) -> Result<Attempt, StageError> {
    match try_attempt(cfg, git) {
        Ok(a) => Ok(a),
        Err(Stop::Done(r)) => Ok(Attempt::Done(r)),
        Err(Stop::Config(e)) => Err(e),
    }
}

/// Clone, edit every file, then commit and push what changed.
fn try_attempt(cfg: &Config, git: &mut impl Git) -> Result<Attempt, Stop> {
    let label = cfg.repo_label();
    let co = cap(
        cfg,
        || format!("git clone {label}"),
        git.clone_repo(&cfg.repo, cfg.branch.as_deref()),
    )?;
    let files = list_files(cfg, git, co, &label)?;
    let results = edit_files(cfg, git, co, &files, &label)?;
    let found: usize = results.iter().map(|r| r.found).sum();
    if found == 0 {
        let msg = format!(
            "no image reference to {} in {} ({label})",
            cfg.repository,
            join_short(&files)
        );
        stage_sdk::log::error(&msg);
        return Err(Stop::Done(
            base(cfg, Report::failed(msg.clone()))
                .annotate(Annotation::error("nothing to deploy to", msg)),
        ));
    }
    let edited: Vec<&FileResult> = results.iter().filter(|r| r.changed).collect();
    if edited.is_empty() {
        let with_refs = results.iter().filter(|r| r.found > 0).count();
        let head = cap(cfg, || format!("git head of {label}"), git.head(co))?;
        let msg = format!(
            "already at {}: {found} reference(s) in {with_refs} file(s) of {label}",
            cfg.image
        );
        stage_sdk::log::info(&msg);
        return Ok(Attempt::Done(
            base(cfg, Report::passed(msg))
                .output("commit", head)
                .output("files", ""),
        ));
    }
    commit_and_push(cfg, git, co, &label, &edited)
}

/// Every file the globs match, each once, in order; a glob matching
/// nothing is a config error.
fn list_files(
    cfg: &Config,
    git: &mut impl Git,
    co: Checkout,
    label: &str,
) -> Result<Vec<String>, Stop> {
    let mut files: Vec<String> = Vec::new();
    for glob in &cfg.paths {
        let listed = cap(
            cfg,
            || format!("git list-files {glob:?} in {label}"),
            git.list_files(co, glob),
        )?;
        if listed.is_empty() {
            return Err(Stop::Config(StageError::config(format!(
                "with.paths: {glob:?} matches no file in {label}"
            ))));
        }
        for f in listed {
            if !files.contains(&f) {
                files.push(f);
            }
        }
    }
    Ok(files)
}

/// Each file edited in memory; any file refused ends the attempt with
/// nothing written.
fn edit_files(
    cfg: &Config,
    git: &mut impl Git,
    co: Checkout,
    files: &[String],
    label: &str,
) -> Result<Vec<FileResult>, Stop> {
    let target = Target {
        repository: &cfg.repository,
        image: &cfg.image,
        parsed: &cfg.image_ref,
    };
    let mut results = Vec::new();
    let mut refused: Vec<Annotation> = Vec::new();
    for path in files {
        let bytes = cap(
            cfg,
            || format!("git read-file {path}"),
            git.read_file(co, path),
        )?;
        let Ok(text) = String::from_utf8(bytes) else {
            let msg = format!("{path} is not UTF-8 text");
            refused.push(Annotation::error("not edited", msg).file(path.as_str()));
            continue;
        };
        match edit::edit(&text, &target) {
            Ok(e) => results.push(FileResult {
                path: path.clone(),
                changed: e.changed(),
                text: e.text,
                found: e.found.len(),
                changes: e.changes,
                previous: e.previous,
            }),
            Err(problems) => {
                for p in problems {
                    refused.push(
                        Annotation::error(
                            "not edited",
                            format!("{path}:{}: {}", p.line, p.message),
                        )
                        .file(path.as_str())
                        .line(p.line),
                    );
                }
            }
        }
    }
    if !refused.is_empty() {
        return Err(Stop::Done(refused_report(cfg, label, refused)));
    }
    Ok(results)
}

/// Writes the edited files, commits and pushes; `Moved` when the remote
/// moved on since the clone.
fn commit_and_push(
    cfg: &Config,
    git: &mut impl Git,
    co: Checkout,
    label: &str,
    edited: &[&FileResult],
) -> Result<Attempt, Stop> {
    for f in edited {
        for c in &f.changes {
            stage_sdk::log::info!("{}:{}: {}", f.path, c.line, c.what);
        }
        cap(
            cfg,
            || format!("git write-file {}", f.path),
            git.write_file(co, &f.path, f.text.as_bytes()),
        )?;
    }
    let paths: Vec<String> = edited.iter().map(|f| f.path.clone()).collect();
    let previous = edited.iter().find_map(|f| f.previous.clone());
    let sha = cap(
        cfg,
        || format!("git commit in {label}"),
        git.commit(co, &cfg.message),
    )?;
    let Some(sha) = sha else {
        let msg = format!(
            "git commit in {label}: the host found nothing to commit after editing {}",
            paths.join(", ")
        );
        stage_sdk::log::error(&msg);
        return Err(Stop::Done(base(cfg, Report::failed(msg))));
    };
    match git.push(co) {
        Ok(()) => {}
        Err(e) if is_non_fast_forward(&e) => return Ok(Attempt::Moved(e)),
        Err(e) => return cap(cfg, || format!("git push to {label}"), Err(e)),
    }
    Ok(Attempt::Done(deployed_report(
        cfg, label, &sha, edited, &paths, previous,
    )))
}

/// Nothing is written when any file cannot be edited safely.
fn refused_report(cfg: &Config, label: &str, refused: Vec<Annotation>) -> Report {
    let first = refused[0].message.clone();
    let more = match refused.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    let msg = format!("refusing to edit {label}: {first}{more}");
    stage_sdk::log::error(&msg);
    let mut r = base(cfg, Report::failed(msg));
    for a in refused {
        stage_sdk::log::error(&a.message);
        r = r.annotate(a);
    }
    r
}

/// The pushed commit `sha`, with one annotation per edited line.
fn deployed_report(
    cfg: &Config,
    label: &str,
    sha: &str,
    edited: &[&FileResult],
    paths: &[String],
    previous: Option<String>,
) -> Report {
    let changes: usize = edited.iter().map(|f| f.changes.len()).sum();
    let short = &sha[..sha.len().min(12)];
    let was = previous
        .as_deref()
        .map(|p| format!(", was {p}"))
        .unwrap_or_default();
    let msg = format!(
        "deployed {} to {label}: {changes} line(s) in {} (commit {short}{was})",
        cfg.image,
        join_short(paths)
    );
    stage_sdk::log::info(&msg);
    let mut r = base(cfg, Report::passed(msg))
        .output("commit", sha)
        .output("files", paths.join(","));
    if let Some(p) = previous {
        r = r.output("previous-image", p);
    }
    for f in edited {
        for c in &f.changes {
            r = r.annotate(
                Annotation::info("edited", format!("{}:{}: {}", f.path, c.line, c.what))
                    .file(f.path.as_str())
                    .line(c.line),
            );
        }
    }
    r
}

#[cfg(test)]
mod tests;
