//! `cargo bench -p pipeline-bench`: the same as `just bench`.
fn main() -> anyhow::Result<()> {
    pipeline_bench::main()
}
