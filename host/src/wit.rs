//! Host-side bindings for the `ci:stage` world (generated from `wit/`).
//!
//! Imports are async (they may wait on the network or Docker) and trappable
//! (a host function can kill the stage, e.g. when it exceeds its log budget),
//! except `log.write`: it never waits, and a stage may call it thousands of
//! times, so it is a plain call (no future, no fiber switch).
wasmtime::component::bindgen!({
    path: "../wit",
    world: "stage",
    imports: {
        "ci:stage/log.write": trappable,
        default: async | trappable,
    },
    exports: { default: async },
});

pub use ci::stage::types::{
    Annotation, CapError, Denial, Level, ReportStatus, RunContext, StageStatus, StageSummary,
    Upstream,
};

impl<T: Send + 'static> StagePre<T> {
    /// [`StagePre::instantiate_async`] without type-checking the exports
    /// again for every instance: [`StagePre::new`] checked their types
    /// against the component once, when the plugin was loaded, and every
    /// instance of that component has the same exports. (The generated
    /// `load` checks them per instance, which took about a seventh of a
    /// stage's instantiation: `stage-context` is a deep record.)
    pub async fn instantiate_checked(
        &self,
        mut store: impl wasmtime::AsContextMut<Data = T>,
    ) -> wasmtime::Result<Stage> {
        let mut store = store.as_context_mut();
        let instance = self.instance_pre.instantiate_async(&mut store).await?;
        let export = |store: &mut wasmtime::StoreContextMut<'_, T>, index, name: &str| {
            instance
                .get_func(store, index)
                .ok_or_else(|| wasmtime::format_err!("the component has no export `{name}`"))
        };
        Ok(Stage {
            describe: export(&mut store, self.indices.describe, "describe")?,
            run: export(&mut store, self.indices.run, "run")?,
        })
    }
}
