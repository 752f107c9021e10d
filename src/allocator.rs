//! The process's allocator: mimalloc, told to keep the memory the process
//! frees for its next allocations instead of giving it back to the OS.
//!
//! By default mimalloc gives back memory left unused for a second
//! (`purge_delay`), and the kernel must then map and zero fresh pages when
//! the process needs that much again. The pipeline frees and allocates the
//! same amounts batch after batch (a batch's time-driven updates, users'
//! fact lists outgrowing their room), so those page faults took a tenth of
//! the in-process time (BENCHMARKS.md, "Freed memory kept"). The price: the
//! resident memory of a process does not shrink after a peak (a partition
//! revoked, a backlog's large batches), as a JVM's heap does not; it is
//! reused for what comes next.

/// The allocator the `tactful` binary installs (and the benches, so that
/// their figures are the product's).
pub use mimalloc::MiMalloc as Allocator;

/// mimalloc's `mi_option_purge_delay`, by its index in `mi_option_t` (the
/// same in mimalloc 2 and 3): `libmimalloc-sys` does not name it.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc keep the memory the process frees (a purge delay of -1:
/// never given back). Call it first in `main`, before any other thread
/// starts: mimalloc's options are not safe to set while others allocate.
pub fn keep_freed_memory() {
    // SAFETY: sets one process-wide option, a plain integer; the caller
    // runs it before other threads exist (see above).
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libmimalloc_sys::{mi_collect, mi_free, mi_malloc, mi_option_set};

    /// Resident bytes of this process now.
    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: usize = statm.split_whitespace().nth(1).and_then(|field| field.parse().ok()).expect("rss");
        pages * 4096
    }

    /// Resident bytes after 256 MiB were allocated through mimalloc in
    /// blocks of 64 KiB, written, freed and collected, over those before.
    /// (The tests run with the system allocator: only this one uses mimalloc.)
    fn resident_growth_after_a_freed_peak() -> isize {
        const BLOCK: usize = 64 * 1024;
        let before = resident();
        // SAFETY: each block is allocated, written within its size, and
        // freed once; mi_collect only releases what mimalloc holds free.
        unsafe {
            let blocks: Vec<*mut u8> = (0..4096).map(|_| mi_malloc(BLOCK).cast::<u8>()).collect();
            for &block in &blocks {
                assert!(!block.is_null());
                std::ptr::write_bytes(block, 1, BLOCK);
            }
            for block in blocks {
                mi_free(block.cast());
            }
            mi_collect(true);
        }
        resident() as isize - before as isize
    }

    #[test]
    fn memory_the_process_frees_stays_with_it_for_its_next_allocations() {
        // Large beside what the other tests, running meanwhile, allocate and free.
        const PEAK: isize = 256 << 20;
        // Purged at once (a delay of 0), the peak leaves nothing resident:
        // this measure sees a purge.
        // SAFETY: a plain integer option; this is the only test using mimalloc.
        unsafe { mi_option_set(PURGE_DELAY, 0) };
        let purged = resident_growth_after_a_freed_peak();
        assert!(purged < PEAK / 4, "{purged} bytes still resident after an immediate purge");
        // Kept (a wrong option index leaves the delay at its default, and
        // the collection purges), the peak stays for the next allocations.
        keep_freed_memory();
        let kept = resident_growth_after_a_freed_peak();
        assert!(kept > PEAK / 2, "only {kept} bytes of the freed peak still resident");
    }
}
