//! `host check`: validate a pipeline and its plugins; run nothing.
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::caps::http::Allowlist;
use crate::cli::exit;
use crate::pipeline::{self, Diagnostic, Location, Pipeline};
use crate::runtime::Runtime;

#[derive(Args)]
pub struct CheckArgs {
    /// The pipeline file.
    pub file: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct CheckReport {
    file: String,
    ok: bool,
    pipeline: Option<String>,
    stages: Vec<String>,
    errors: Vec<JsonDiagnostic>,
}

#[derive(Serialize)]
struct JsonDiagnostic {
    file: String,
    line: usize,
    column: usize,
    message: String,
}

pub async fn check(args: CheckArgs, state_dir: &Path) -> Result<u8> {
    let (pipeline, diags) = match pipeline::load(&args.file) {
        Err(e) => (None, e.diagnostics),
        Ok(p) => {
            let runtime = super::runtime(state_dir)?;
            let diags = check_plugins(&p, &runtime).await;
            (Some(p), diags)
        }
    };
    let ok = diags.is_empty();
    if args.json {
        let report = CheckReport {
            file: args.file.display().to_string(),
            ok,
            pipeline: pipeline.as_ref().map(|p| p.name.clone()),
            stages: pipeline
                .as_ref()
                .map(|p| p.topo_order().iter().map(|s| s.name.clone()).collect())
                .unwrap_or_default(),
            errors: diags
                .iter()
                .map(|d| JsonDiagnostic {
                    file: d.location.file.display().to_string(),
                    line: d.location.line,
                    column: d.location.col,
                    message: d.message.clone(),
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if ok {
        let p = pipeline.expect("ok implies parsed");
        println!(
            "{}: ok — pipeline `{}`, {} stage(s): {}",
            args.file.display(),
            p.name,
            p.stages.len(),
            p.topo_order()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(" → ")
        );
    } else {
        for d in &diags {
            eprintln!("{d}");
        }
        eprintln!("{}: {} error(s)", args.file.display(), diags.len());
    }
    Ok(if ok { 0 } else { exit::USAGE })
}

/// Checks that need the runtime: every plugin is a component of our world,
/// every `with` key is one the plugin declares, every pattern compiles.
pub async fn check_plugins(p: &Pipeline, runtime: &Runtime) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let mut infos = std::collections::BTreeMap::new();
    for (name, r) in &p.plugins {
        match runtime.load(&r.path) {
            Err(e) => diags.push(Diagnostic {
                location: r.location.clone(),
                message: format!("plugin `{name}`: {e}"),
            }),
            Ok(plugin) => match runtime.describe(&plugin).await {
                Ok(info) => {
                    infos.insert(name.clone(), info);
                }
                Err(e) => diags.push(Diagnostic {
                    location: r.location.clone(),
                    message: format!("plugin `{name}`: describe() failed: {e:#}"),
                }),
            },
        }
    }
    for stage in &p.stages {
        if let Err(e) = Allowlist::new(&stage.grants.http) {
            diags.push(at(&stage.location, format!("stage `{}`: grants.http: {e}", stage.name)));
        }
        let Some(info) = infos.get(&stage.plugin) else {
            continue;
        };
        let with = stage.with.as_object().cloned().unwrap_or_default();
        for key in with.keys() {
            if !info.config.iter().any(|k| &k.name == key) {
                let known: Vec<&str> = info.config.iter().map(|k| k.name.as_str()).collect();
                diags.push(at(
                    &stage.location,
                    format!(
                        "stage `{}`: `with.{key}` is not a setting of plugin `{}` (expected one of: {})",
                        stage.name,
                        stage.plugin,
                        known.join(", ")
                    ),
                ));
            }
        }
        for k in info.config.iter().filter(|k| k.required) {
            if !with.contains_key(&k.name) {
                diags.push(at(
                    &stage.location,
                    format!(
                        "stage `{}`: plugin `{}` needs `with.{}` ({})",
                        stage.name, stage.plugin, k.name, k.description
                    ),
                ));
            }
        }
    }
    diags
}

fn at(location: &Location, message: String) -> Diagnostic {
    Diagnostic {
        location: location.clone(),
        message,
    }
}
