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
//!
//! A restore writes hundreds of megabytes at once, at a start all of it
//! into memory the process has not touched before, and does so in small
//! pages ([`in_small_pages`]).

/// The allocator the `tactful` binary installs (and the benches, so that
/// their figures are the product's).
pub use mimalloc::MiMalloc as Allocator;

use std::sync::{Mutex, MutexGuard, PoisonError};

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

/// Runs `work` with the kernel's transparent huge pages off for the
/// process: what it touches first is mapped in 4 KiB pages.
///
/// mimalloc asks for huge pages, which make the state of a running
/// pipeline span few TLB entries. But a huge page's first touch maps and
/// zeroes 2 MiB at once, and on a VM that backs guest memory only when it
/// is first touched (or takes freed memory back, as free page reporting
/// does) that took 6–30 ms per page here, against about 1 ms for the same
/// memory in small pages: a restore from a cold start was more than twice
/// as slow with them (BENCHMARKS.md, "A restore in small pages"). Memory
/// mapped small stays small until the kernel's `khugepaged` merges it in
/// the background; what is allocated after `work` gets huge pages again.
/// An operator's `MIMALLOC_ALLOW_THP=0` (huge pages off for the whole
/// process) is kept: the setting found before the first of overlapping
/// calls is put back after the last.
pub fn in_small_pages<T>(work: impl FnOnce() -> T) -> T {
    /// Calls under way, and whether huge pages were off before the first.
    static SECTIONS: Mutex<(usize, bool)> = Mutex::new((0, false));
    fn sections() -> MutexGuard<'static, (usize, bool)> {
        SECTIONS.lock().unwrap_or_else(PoisonError::into_inner)
    }
    /// Leaves the section even if `work` unwinds.
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            let mut sections = sections();
            sections.0 -= 1;
            if sections.0 == 0 {
                set_thp_disabled(sections.1);
            }
        }
    }
    let mut entered = sections();
    if entered.0 == 0 {
        entered.1 = thp_disabled();
        set_thp_disabled(true);
    }
    entered.0 += 1;
    drop(entered);
    let _leave = Leave;
    work()
}

/// prctl's unused arguments: the kernel reads each as an unsigned long and
/// refuses the call unless it is zero.
const NO_ARGUMENT: libc::c_ulong = 0;

/// Whether transparent huge pages are off for this process.
fn thp_disabled() -> bool {
    // SAFETY: PR_GET_THP_DISABLE takes no pointer and only reads a flag.
    unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, NO_ARGUMENT, NO_ARGUMENT, NO_ARGUMENT, NO_ARGUMENT) > 0 }
}

/// Turns transparent huge pages off (or on again) for this process. A
/// kernel without the call leaves them as they are: only speed differs.
fn set_thp_disabled(disabled: bool) {
    // SAFETY: PR_SET_THP_DISABLE takes no pointer and only sets a flag.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, libc::c_ulong::from(disabled), NO_ARGUMENT, NO_ARGUMENT, NO_ARGUMENT)
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use libmimalloc_sys::{mi_collect, mi_free, mi_malloc, mi_option_set};

    /// Held by each test here: they set or measure the whole process (its
    /// huge pages, its resident memory), and would see each other's work.
    static PROCESS_WIDE: Mutex<()> = Mutex::new(());

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

    /// Maps 8 MiB asking for huge pages, as mimalloc does, writes every
    /// byte, and returns the kilobytes of it the kernel mapped in huge pages.
    fn huge_kilobytes_of_a_written_mapping() -> u64 {
        const SIZE: usize = 8 << 20;
        const HUGE_PAGE: usize = 2 << 20;
        const RESERVED: usize = SIZE + 2 * HUGE_PAGE;
        // SAFETY: a fresh anonymous private reservation; only its middle
        // is made writable and written, within its size; it is unmapped
        // once, and no pointer into it outlives this call.
        unsafe {
            let reserved = libc::mmap(
                std::ptr::null_mut(),
                RESERVED,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            );
            assert_ne!(reserved, libc::MAP_FAILED);
            // Aligned to a huge page, with inaccessible memory on both
            // sides: a mapping of its own in smaps, merged with no other.
            let start = (reserved as usize + 1).next_multiple_of(HUGE_PAGE);
            let mapping = reserved.cast::<u8>().add(start - reserved as usize).cast::<libc::c_void>();
            assert_eq!(libc::mprotect(mapping, SIZE, libc::PROT_READ | libc::PROT_WRITE), 0);
            assert_eq!(libc::madvise(mapping, SIZE, libc::MADV_HUGEPAGE), 0);
            std::ptr::write_bytes(mapping.cast::<u8>(), 1, SIZE);
            let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
            let huge = smaps
                .split_once(&format!("{start:x}-{:x} ", start + SIZE))
                .and_then(|(_, entry)| entry.lines().find(|line| line.starts_with("AnonHugePages:")))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
                .expect("the mapping's AnonHugePages");
            libc::munmap(reserved, RESERVED);
            huge
        }
    }

    #[test]
    fn memory_first_touched_in_small_page_sections_is_mapped_small_and_the_setting_found_is_put_back() {
        let _alone = PROCESS_WIDE.lock().unwrap_or_else(PoisonError::into_inner);
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        let kernel_gives_huge_pages = thp.contains("[always]") || thp.contains("[madvise]");
        // Huge pages on for the process whatever it inherited (the flag
        // passes to children), and put back as found at the end.
        let inherited = thp_disabled();
        set_thp_disabled(false);
        // The control: outside a section this kernel maps such memory huge.
        if kernel_gives_huge_pages {
            assert!(huge_kilobytes_of_a_written_mapping() > 0, "no huge pages outside a section");
        }
        // Inside one, and inside one within it, the same memory is small.
        let (inner, outer_after_inner) = in_small_pages(|| {
            let inner = in_small_pages(|| (thp_disabled(), huge_kilobytes_of_a_written_mapping()));
            (inner, (thp_disabled(), huge_kilobytes_of_a_written_mapping()))
        });
        assert_eq!(inner, (true, 0));
        assert_eq!(outer_after_inner, (true, 0), "the inner section's end turned huge pages back on");
        assert!(!thp_disabled(), "huge pages not back after the section");
        // An operator's `MIMALLOC_ALLOW_THP=0` (huge pages off for the
        // process) stays in force after a section.
        set_thp_disabled(true);
        in_small_pages(|| ());
        assert!(thp_disabled(), "a section turned on huge pages the process had off");
        set_thp_disabled(false);
        // A section left by a panic ends as well.
        let unwound = std::panic::catch_unwind(|| in_small_pages(|| panic!("work failed")));
        assert!(unwound.is_err());
        assert!(!thp_disabled(), "huge pages not back after a section that panicked");
        set_thp_disabled(inherited);
    }

    #[test]
    fn memory_the_process_frees_stays_with_it_for_its_next_allocations() {
        let _alone = PROCESS_WIDE.lock().unwrap_or_else(PoisonError::into_inner);
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
