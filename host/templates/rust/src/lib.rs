//! `{{name}}`: a pipeline stage. `describe()` declares the `with` keys the
//! host validates before any stage runs; `run()` does the work.
use stage_sdk::{ConfigKey, Context, PluginInfo, Report, Stage, StageError};

struct Plugin;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct With {
    #[serde(default)]
    who: Option<String>,
}

impl Stage for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo::new("{{name}}", env!("CARGO_PKG_VERSION"), "Greets someone")
            .key(ConfigKey::optional("who", "Whom to greet", "\"world\""))
    }

    fn run(ctx: Context) -> Result<Report, StageError> {
        let with: With = ctx.config()?;
        let who = with.who.unwrap_or_else(|| "world".into());
        stage_sdk::log::info!("greeting {who}");
        Ok(Report::passed(format!("hello, {who}")).output("greeting", who))
    }
}

stage_sdk::export_stage!(Plugin);
