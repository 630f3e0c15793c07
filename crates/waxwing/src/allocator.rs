//! The global allocator (mimalloc, through its plain entry points) and
//! giving freed memory back to the operating system after a spike.
//!
//! # Entry points
//!
//! The `mimalloc` crate's `GlobalAlloc` calls `mi_malloc_aligned` for every
//! allocation. For a small size that finds a block on the page's free list
//! at once, but when the free list is empty (the page needs its local or
//! cross-thread frees collected, which on a busy server is often) it takes
//! the generic aligned path, and for anything over 1 KiB (write buffers,
//! the framer's) it always does: `mi_good_size` and a second dispatch
//! before the ordinary allocation, about 90 instructions per call. Yet
//! nearly every Rust allocation asks for an alignment that mimalloc's plain
//! `mi_malloc` gives anyway: every block of 16 bytes or more is 16-aligned
//! (`MI_MAX_ALIGN_SIZE`: size classes under 64 bytes are rounded to two
//! words, larger ones are multiples of 16 on 16-aligned page starts), and a
//! smaller block is aligned to its own size class (8). So [`Allocator`]
//! calls `mi_malloc`/`mi_zalloc`/`mi_realloc` when the alignment is at most
//! 16 and at most the size (the rule the standard library's `System`
//! allocator uses with `malloc` on the same grounds) and the aligned
//! functions otherwise; freeing is `mi_free` either way.
//!
//! # Collecting
//!
//! mimalloc frees a block into the page it came from; a block freed by
//! another thread than the one that allocated it (tokio moves tasks between
//! workers) waits on that page's cross-thread list until the owning thread
//! collects, which it does only when it allocates again. After a spike of
//! connections (thousands of half-open TLS handshakes, a login storm) the
//! workers go idle, nothing allocates, and the pages of the spike stay
//! resident: measured, 5,000 half-open s2s connections left RSS at 53 MB
//! after they closed, against 21 MB before.
//!
//! So each worker collects its own heap when it parks (runs out of work),
//! at most once per [`EVERY`]: a busy server parks thousands of times a
//! second and must not walk its heap each time, while an idle one parks
//! rarely and collects on the first park after the spike.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;
use std::time::{Duration, Instant};

use libmimalloc_sys as mi;

/// The alignment every `mi_malloc` block of at least this size has
/// (mimalloc's `MI_MAX_ALIGN_SIZE`, `sizeof(max_align_t)`); a smaller
/// block is aligned to its size class, 8.
#[cfg_attr(feature = "system-allocator", allow(dead_code))] // only the profiling build
const MI_MAX_ALIGN_SIZE: usize = 16;

/// Whether `mi_malloc(size)` is aligned enough for `align`.
#[inline]
#[cfg_attr(feature = "system-allocator", allow(dead_code))] // only the profiling build
fn plain_fits(align: usize, size: usize) -> bool {
    align <= MI_MAX_ALIGN_SIZE && align <= size
}

/// mimalloc, through its unaligned entry points where they suffice (see
/// the module documentation).
#[cfg_attr(feature = "system-allocator", allow(dead_code))] // only the profiling build
pub struct Allocator;

// SAFETY: every pointer handed out comes from mimalloc with at least the
// layout's size and alignment: the plain functions only when `plain_fits`
// holds, which mimalloc guarantees (module documentation), the aligned ones
// otherwise. `mi_free` frees blocks of either kind. A null return (out of
// memory) is passed through, as `GlobalAlloc` requires. `realloc` keeps the
// block's alignment: `mi_realloc` returns either the same block or a new
// `mi_malloc` block of `new_size`, which `plain_fits` covers.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl; mimalloc's functions have no preconditions.
        unsafe {
            if plain_fits(layout.align(), layout.size()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if plain_fits(layout.align(), layout.size()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract),
        // so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (the
        // caller's contract); the new block has `new_size` bytes and the
        // same alignment (see the impl).
        unsafe {
            if plain_fits(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// Least time between two collections on one thread.
const EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Called by tokio on a worker thread that is about to park.
pub fn collect_when_idle() {
    let now = Instant::now();
    let due = LAST.with(|last| {
        let due = last.get().is_none_or(|t| now.duration_since(t) >= EVERY);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        collect_this_thread();
    }
}

#[allow(unsafe_code)]
fn collect_this_thread() {
    // SAFETY: mi_collect has no preconditions: it may be called from any
    // thread at any time, and only frees memory that no live allocation
    // uses. `true` (force): also return the freed pages to the operating
    // system at once instead of after mimalloc's purge delay, which is the
    // point after a spike; the once-per-`EVERY` bound keeps its cost off a
    // busy server.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size up to a few pages, every alignment up to 4 KiB: the
    /// block is aligned, holds its bytes, and keeps them (and its
    /// alignment) through growing and shrinking reallocations. Across the
    /// plain and the aligned entry points and both sides of mimalloc's
    /// small-size limit (1 KiB).
    #[test]
    #[allow(unsafe_code)]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let a = Allocator;
        let sizes = (1..=200).chain([255, 256, 1000, 1024, 1025, 4095, 4096, 5000, 70_000]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a nonzero size; every block is freed with the
                // layout it was (re)allocated with, and only its own bytes
                // are touched.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    for i in 0..size {
                        p.add(i).write(i as u8);
                    }
                    // Grown, then shrunk below the original size.
                    let mut block = (p, layout);
                    for new_size in [size * 3 + 7, size.div_ceil(2)] {
                        let (old, old_layout) = block;
                        let q = a.realloc(old, old_layout, new_size);
                        assert!(!q.is_null());
                        assert_eq!(
                            q as usize % align,
                            0,
                            "realloc to {new_size}, align {align}"
                        );
                        for i in 0..size.min(new_size) {
                            assert_eq!(q.add(i).read(), i as u8);
                        }
                        block = (q, Layout::from_size_align(new_size, align).unwrap());
                    }
                    a.dealloc(block.0, block.1);
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| z.add(i).read() == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }

    /// The plain entry point's guarantee, checked on many blocks alive at
    /// once (consecutive blocks of one page, not one block reused): every
    /// size class up to 1 KiB, every alignment `plain_fits` sends there.
    #[test]
    #[allow(unsafe_code)]
    fn plain_blocks_are_aligned_throughout_a_page() {
        let a = Allocator;
        for size in 1..=1024 {
            for align in [1, 2, 4, 8, 16]
                .into_iter()
                .filter(|&al| plain_fits(al, size))
            {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: nonzero sizes, each block freed once with its layout.
                unsafe {
                    let blocks: Vec<*mut u8> = (0..64).map(|_| a.alloc(layout)).collect();
                    for &p in &blocks {
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    }
                    for p in blocks {
                        a.dealloc(p, layout);
                    }
                }
            }
        }
    }
}
