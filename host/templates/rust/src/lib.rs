//! `{{name}}`: a pipeline stage. Its `with` keys and their defaults are declared once, in describe().
use stage_sdk::prelude::*;

#[derive(serde::Deserialize)]
struct With {
    who: String, // describe()'s default when the pipeline leaves it out
}
struct Plugin;
impl Stage for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo::new("{{name}}", env!("CARGO_PKG_VERSION"), "Greets someone")
            .key(ConfigKey::optional("who", "Whom to greet", "\"world\""))
    }
    fn run(ctx: Context) -> Result<Report, StageError> {
        let With { who } = ctx.config_with_defaults()?;
        stage_sdk::log::info!("greeting {who}");
        Ok(Report::passed(format!("hello, {who}")).output("greeting", who))
    }
}
export_stage!(Plugin);
