// A run makes many small, short-lived allocations per stage (records,
// contexts, wasmtime's per-instance tables): mimalloc serves them with less
// work than glibc's malloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    host::cli::main()
}
