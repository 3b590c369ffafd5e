//! The C allocator's settings for training.
//!
//! A training step allocates and frees activations and gradients of tens to hundreds of MB. With
//! glibc's defaults each one above 32 MB is a fresh `mmap`, and the heap is trimmed back to the
//! OS as soon as the step frees it, so the next step takes every page again: a page fault and a
//! page of zeroes from the kernel for each 4 KB, and TLB shootdowns on both cores when it goes.
//! Keeping freed memory in the process made a step take 0.85x the time and the evaluations 0.59x
//! on the EPYC, at the same peak (bench-results/trainer-allocator.json). The cost is that the peak
//! stays resident until the process ends: the trainer is a Job and `autotuner tune` a
//! command, both short-lived.

/// Serves large blocks from the heap and never returns freed heap memory to the OS. Call once,
/// before the process starts its threads, and only in a process that ends when its work does.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    // SAFETY: mallopt only changes glibc's allocation thresholds; it is called before any other
    // thread runs, and both values are documented settings (man 3 mallopt): M_MMAP_MAX 0 turns
    // mmap off for large requests (other threads' arenas still fall back to it when they must),
    // M_TRIM_THRESHOLD -1 turns trimming off.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

/// Other C libraries keep their own policy.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}
