// mimalloc: the gate allocates per request on tokio workers and frees much of it on the audit
// writer thread; glibc malloc spent ~28% of the gate's CPU there under load (issue 6).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keep_heap_in_small_pages();
    ecl_gate::cli::run()
}

/// Turns transparent huge pages off for the whole process.
///
/// With huge pages every 2 MiB region the heap touches is resident in full: the gate's peak
/// RSS at 256 clients was 45-55 MB (55-61 MB with checkpoints on, whose few extra buffers
/// and tree thread touched three or four more regions) for a live heap of 10-20 MB; without,
/// 30-42 MB at the same CPU per decision (BENCHMARKS.md, "Memory with checkpoints on").
/// mimalloc is built without its `madvise(MADV_HUGEPAGE)` (feature `no_thp`), which is enough
/// where THP is `madvise`; this also covers hosts where it is `always`.
fn keep_heap_in_small_pages() {
    #[cfg(target_os = "linux")]
    {
        // Only memory use depends on it, and nothing is logging yet: a kernel that refuses
        // (one built without THP) has nothing to turn off.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}
