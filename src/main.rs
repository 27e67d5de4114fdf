// mimalloc: the gate allocates per request on tokio workers and frees much of it on the audit
// writer thread; glibc malloc spent ~28% of the gate's CPU there under load (issue 6).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ecl_gate::cli::run()
}
