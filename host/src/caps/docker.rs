//! Docker engine access for a stage. The contract is declared in full so
//! plugins can be written against it; the engine side (bollard) lands with
//! the docker issue. Until then every call is refused: `denied` without a
//! grant, `unsupported` with one.
use crate::caps::denied;
use crate::runtime::bindings::ci::stage::docker::{
    BuildRequest, BuildResult, ContainerInfo, ContainerSpec, Host, PushResult, RunRequest,
    RunResult,
};
use crate::runtime::bindings::CapError;

pub struct DockerCap {
    stage: String,
    granted: bool,
}

impl DockerCap {
    pub fn new(stage: &str, granted: bool) -> Self {
        Self {
            stage: stage.to_string(),
            granted,
        }
    }

    fn refuse<T>(&self, op: &str, target: &str) -> wasmtime::Result<Result<T, CapError>> {
        Ok(Err(if self.granted {
            CapError::Unsupported(format!("docker.{op} is not available in this host version"))
        } else {
            denied(&self.stage, &format!("docker.{op}"), target)
        }))
    }
}

impl Host for DockerCap {
    async fn build(
        &mut self,
        req: BuildRequest,
    ) -> wasmtime::Result<Result<BuildResult, CapError>> {
        self.refuse("build", &req.image)
    }
    async fn tag(
        &mut self,
        _source: String,
        target: String,
    ) -> wasmtime::Result<Result<(), CapError>> {
        self.refuse("tag", &target)
    }
    async fn push(
        &mut self,
        image: String,
        _auth: Option<String>,
    ) -> wasmtime::Result<Result<PushResult, CapError>> {
        self.refuse("push", &image)
    }
    async fn run(&mut self, req: RunRequest) -> wasmtime::Result<Result<RunResult, CapError>> {
        self.refuse("run", &req.image)
    }
    async fn create(&mut self, spec: ContainerSpec) -> wasmtime::Result<Result<String, CapError>> {
        self.refuse("create", &spec.name)
    }
    async fn start(&mut self, name: String) -> wasmtime::Result<Result<(), CapError>> {
        self.refuse("start", &name)
    }
    async fn stop(
        &mut self,
        name: String,
        _t: Option<u32>,
    ) -> wasmtime::Result<Result<(), CapError>> {
        self.refuse("stop", &name)
    }
    async fn remove(&mut self, name: String) -> wasmtime::Result<Result<(), CapError>> {
        self.refuse("remove", &name)
    }
    async fn inspect(&mut self, name: String) -> wasmtime::Result<Result<ContainerInfo, CapError>> {
        self.refuse("inspect", &name)
    }
    async fn list_containers(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Vec<ContainerInfo>, CapError>> {
        self.refuse("list", &label)
    }
}
