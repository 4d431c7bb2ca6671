//! The `lattice` binary: parse the command line and hand over to the library.

fn main() -> std::process::ExitCode {
    return_freed_memory();
    lattice::cli::main()
}

/// glibc's malloc raises its mmap threshold to the size of every large block freed
/// (up to 32 MiB). After the first argon2 hash, its 19 MiB memory block (and the
/// buffers of decoded images) come from the per-thread heaps instead, each
/// blocking thread keeps its own, and the memory is never returned: 20
/// registrations left 300 MB resident. A fixed threshold keeps blocks of 1 MiB
/// and more in their own mappings, so freeing one returns it to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters, and runs before any other
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_memory() {}
