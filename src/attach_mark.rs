//! The mark configs written for cloudflare/ebpf_exporter attach a uprobe to, to fill
//! their maps once every program is attached.

/// Runs once every program is attached: configs written for cloudflare/ebpf_exporter
/// attach a uprobe here (`uprobe//proc/self/exe:post_attach_mark`) to fill their maps
/// before the first event. Exported as a dynamic symbol (build.rs), so stripped
/// binaries keep it.
#[no_mangle]
#[inline(never)]
pub extern "C" fn post_attach_mark() {
    std::hint::black_box(());
}

/// Calls [`post_attach_mark`] through an opaque pointer, so the empty call is kept.
pub fn mark_attached() {
    let mark: extern "C" fn() = std::hint::black_box(post_attach_mark);
    mark();
}
