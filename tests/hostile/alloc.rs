//! Memory accounting for the hostile-input checks: a global allocator that counts the bytes live on a thread
//! while that thread measures (and only then), so a parse that "allocates without bound" is a failed assertion
//! instead of an OOM kill. Past [`HARD_CAP`] live bytes a measured allocation is refused (the process aborts
//! with Rust's "memory allocation failed" message) after the input is written where the fuzzer asked.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The most bytes one measured call may hold at once before its allocations are refused.
pub const HARD_CAP: usize = 1 << 30;

pub struct Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    /// (pointer, length) of the input being measured and of a NUL-terminated crash file path: written with raw
    /// syscalls when an allocation is refused, because the allocator cannot allocate.
    static INPUT: Cell<(*const u8, usize)> = const { Cell::new((std::ptr::null(), 0)) };
    static CRASH_PATH: Cell<*const u8> = const { Cell::new(std::ptr::null()) };
}

#[global_allocator]
static GLOBAL: Counting = Counting;

impl Counting {
    fn grow(size: usize) -> bool {
        if !MEASURING.with(Cell::get) {
            return true;
        }
        let live = LIVE.with(|l| l.get()).saturating_add(size as isize);
        if live > HARD_CAP as isize {
            write_crash_input();
            return false;
        }
        LIVE.with(|l| l.set(live));
        PEAK.with(|p| p.set(p.get().max(live)));
        true
    }

    fn shrink(size: usize) {
        if MEASURING.with(Cell::get) {
            LIVE.with(|l| l.set(l.get().saturating_sub(size as isize)));
        }
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the counters are thread-locals without destructors.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Counting::grow(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Counting::grow(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        Counting::shrink(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            if !Counting::grow(new_size - layout.size()) {
                return std::ptr::null_mut();
            }
        } else {
            Counting::shrink(layout.size() - new_size);
        }
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Writes the measured input to the crash path (if one is set) and a note to stderr, without allocating.
fn write_crash_input() {
    let (ptr, len) = INPUT.with(Cell::get);
    let path = CRASH_PATH.with(Cell::get);
    let note = b"\nhostile-input: an allocation passed the hard cap of 1 GiB live bytes; input saved (if fuzzing)\n";
    // SAFETY: plain syscalls on buffers that outlive this call (the measuring scope holds them).
    unsafe {
        libc::write(2, note.as_ptr().cast(), note.len());
        if !path.is_null() && !ptr.is_null() {
            let fd = libc::open(path.cast(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644);
            if fd >= 0 {
                libc::write(fd, ptr.cast(), len);
                libc::close(fd);
            }
        }
    }
}

/// Runs `f` on this thread and returns its result with the peak of bytes it held live at once.
/// `input` and `crash_path` (NUL-terminated) are where the input goes if an allocation is refused.
pub fn measure<T>(input: &[u8], crash_path: Option<&[u8]>, f: impl FnOnce() -> T) -> (T, usize) {
    INPUT.with(|i| i.set((input.as_ptr(), input.len())));
    CRASH_PATH.with(|p| p.set(crash_path.filter(|p| p.ends_with(b"\0")).map_or(std::ptr::null(), <[u8]>::as_ptr)));
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    MEASURING.with(|m| m.set(true));
    let guard = StopMeasuring;
    let out = f();
    drop(guard);
    (out, PEAK.with(Cell::get).max(0) as usize)
}

/// Ends a measurement also when the measured call panics.
struct StopMeasuring;

impl Drop for StopMeasuring {
    fn drop(&mut self) {
        MEASURING.with(|m| m.set(false));
        INPUT.with(|i| i.set((std::ptr::null(), 0)));
        CRASH_PATH.with(|p| p.set(std::ptr::null()));
    }
}
