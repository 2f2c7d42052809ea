//! Cache prefetch hints: ask for memory a later step will read, so that many misses are
//! in flight at once instead of one after another.

/// Asks for the cache lines of the value at `p` (its first and last byte: values of up
/// to two lines) without waiting for them. A hint: it changes no result and never
/// faults, whatever `p` points at.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and never faults.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let first = p.cast::<i8>();
        _mm_prefetch(first, _MM_HINT_T0);
        if size_of::<T>() > 1 {
            _mm_prefetch(first.wrapping_add(size_of::<T>() - 1), _MM_HINT_T0);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
