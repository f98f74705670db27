//! Checks before a run that need the plugins themselves.
use std::collections::BTreeMap;

use crate::pipeline::{Diagnostic, Location, Pipeline};
use crate::runtime::{Plugin, Runtime};

/// Load every plugin of the pipeline (compiled once, or from the cache) and
/// run the checks that need them: each is a component of our world, each
/// `with` key is one its plugin declares. (`grants.http` patterns were
/// compiled when the file was validated, into the values the run uses.)
pub async fn load_plugins(
    p: &Pipeline,
    runtime: &Runtime,
) -> Result<BTreeMap<String, Plugin>, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut infos = BTreeMap::new();
    let mut plugins = BTreeMap::new();
    for (name, r) in &p.plugins {
        match runtime.load(&r.path) {
            Err(e) => diags.push(Diagnostic {
                location: r.location.clone(),
                message: format!("plugin `{name}`: {e}"),
            }),
            Ok(plugin) => match runtime.describe(&plugin).await {
                Ok(info) => {
                    tracing::info!(plugin = %name, cache = ?plugin.cache, ms = %format!("{:.2}", plugin.load_time.as_secs_f64() * 1000.0), "plugin loaded");
                    infos.insert(name.clone(), info);
                    plugins.insert(name.clone(), plugin);
                }
                Err(e) => diags.push(Diagnostic {
                    location: r.location.clone(),
                    message: format!("plugin `{name}`: describe() failed: {e:#}"),
                }),
            },
        }
    }
    for stage in &p.stages {
        let Some(info) = infos.get(&stage.plugin) else {
            continue;
        };
        diags.extend(missing_grants(stage, info));
        let with = stage.with.as_object().cloned().unwrap_or_default();
        // A plugin that declares a `*` key takes free-form settings.
        let open = info.config.iter().any(|k| k.name == "*");
        for key in with.keys().filter(|_| !open) {
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
    if diags.is_empty() {
        Ok(plugins)
    } else {
        Err(diags)
    }
}

/// `describe().capabilities` is a contract: what a plugin says it needs,
/// its stage must be granted, before anything runs.
fn missing_grants<'a>(
    stage: &'a crate::pipeline::Stage,
    info: &'a crate::wit::PluginInfo,
) -> impl Iterator<Item = Diagnostic> + 'a {
    crate::caps::missing(&stage.grants, &info.capabilities)
        .into_iter()
        .map(move |(need, hint)| {
            let head = need.split('.').next().unwrap_or(&need).to_string();
            let how = if hint.starts_with("no capability") {
                hint
            } else {
                format!("add {hint}")
            };
            at(
                &stage.location,
                format!(
                    "stage `{}`: plugin `{}` needs grant {head}{}; {how}",
                    stage.name,
                    stage.plugin,
                    if need == head {
                        String::new()
                    } else {
                        format!(" ({need})")
                    }
                ),
            )
        })
}

fn at(location: &Location, message: String) -> Diagnostic {
    Diagnostic {
        location: location.clone(),
        message,
    }
}
