fn main() -> anyhow::Result<()> {
    pipeline_bench::main()
}
