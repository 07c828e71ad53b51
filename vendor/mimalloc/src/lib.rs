// Copyright 2019 Octavian Oncescu

#![no_std]

//! A drop-in global allocator wrapper around the [mimalloc](https://github.com/microsoft/mimalloc) allocator.
//! Mimalloc is a general purpose, performance oriented allocator built by Microsoft.
//!
//! ## Usage
//! ```rust,ignore
//! use mimalloc::MiMalloc;
//!
//! #[global_allocator]
//! static GLOBAL: MiMalloc = MiMalloc;
//! ```
//!
//! ## Usage with secure mode
//! Using secure mode adds guard pages,
//! randomized allocation, encrypted free lists, etc. The performance penalty is usually
//! around 10% according to [mimalloc's](https://github.com/microsoft/mimalloc)
//! own benchmarks.
//!
//! To enable secure mode, put in `Cargo.toml`:
//! ```toml
//! [dependencies]
//! mimalloc = { version = "*", features = ["secure"] }
//! ```

extern crate libmimalloc_sys as ffi;

#[cfg(feature = "extended")]
mod extended;

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;
use ffi::*;

/// Drop-in mimalloc global allocator.
///
/// ## Usage
/// ```rust,ignore
/// use mimalloc::MiMalloc;
///
/// #[global_allocator]
/// static GLOBAL: MiMalloc = MiMalloc;
/// ```
pub struct MiMalloc;

/// etch patch: the largest alignment a plain mimalloc block whose size is a multiple of it
/// always has (`MI_MAX_ALIGN_SIZE` on 64-bit targets), in bytes. See [`plain`].
const PLAIN_ALIGN: usize = 16;

/// etch patch: whether a plain block (`mi_malloc`, `mi_zalloc`, `mi_realloc`) of `size` bytes
/// is always aligned to `align` (a power of two). A page's first block is aligned to 16 bytes,
/// and every size class is a multiple of 8 (of 16 from 64 bytes on, and below 64 bytes each
/// class is its size rounded up to 8), so a size that is a multiple of an alignment of at most
/// 16 gets a class that is a multiple of it too. The plain entry points matter with mimalloc
/// v3: an aligned request is served from its size class's free list only while that list has
/// a block; otherwise v3 takes the plain path only for power-of-two block sizes, and any other
/// size falls to `mi_theap_malloc_zero_aligned_at_overalloc`, which allocates `size + align -
/// 1` from the next class up. The size's own class then never gets a page, and every request
/// of that size pays the slow path and a larger block (mimalloc issue 889; mimalloc_rust pull
/// request 170).
#[inline]
fn plain(size: usize, align: usize) -> bool {
    align <= PLAIN_ALIGN && size % align == 0
}

/// etch patch: `p`, checked in debug builds to be aligned to `align` unless it is null.
#[inline]
fn checked(p: *mut c_void, align: usize) -> *mut u8 {
    debug_assert!(
        p.is_null() || (p as usize) % align == 0,
        "mimalloc block misaligned"
    );
    p as *mut u8
}

unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        if plain(size, align) {
            checked(mi_malloc(size), align)
        } else {
            checked(mi_malloc_aligned(size, align), align)
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        if plain(size, align) {
            checked(mi_zalloc(size), align)
        } else {
            checked(mi_zalloc_aligned(size, align), align)
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        if plain(new_size, align) {
            checked(mi_realloc(ptr as *mut c_void, new_size), align)
        } else {
            checked(mi_realloc_aligned(ptr as *mut c_void, new_size, align), align)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_frees_allocated_memory() {
        unsafe {
            let layout = Layout::from_size_align(8, 8).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_allocated_big_memory() {
        unsafe {
            let layout = Layout::from_size_align(1 << 20, 32).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_zero_allocated_memory() {
        unsafe {
            let layout = Layout::from_size_align(8, 8).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc_zeroed(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_zero_allocated_big_memory() {
        unsafe {
            let layout = Layout::from_size_align(1 << 20, 32).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc_zeroed(layout);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_reallocated_memory() {
        unsafe {
            let layout = Layout::from_size_align(8, 8).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            let ptr = alloc.realloc(ptr, layout, 16);
            alloc.dealloc(ptr, layout);
        }
    }

    #[test]
    fn it_frees_reallocated_big_memory() {
        unsafe {
            let layout = Layout::from_size_align(1 << 20, 32).unwrap();
            let alloc = MiMalloc;

            let ptr = alloc.alloc(layout);
            let ptr = alloc.realloc(ptr, layout, 2 << 20);
            alloc.dealloc(ptr, layout);
        }
    }
}
