//! The daemon's memory allocator: jemalloc (set as the global allocator in
//! `main.rs`) with background threads that return freed pages to the system
//! (dirty pages decay within about 10 s). A daemon that mounts and unmounts
//! layers of very different sizes for weeks must give memory back: glibc's
//! allocator keeps a freed heap resident, which is how a removed image's
//! index stayed resident before (issue: memory amplification).

/// Turns on jemalloc's background purging. Harmless (a logged warning)
/// when jemalloc is not the global allocator (tests, benchmarks).
pub fn return_freed_memory() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "cannot start jemalloc's background purging; freed memory may stay resident");
    }
}
