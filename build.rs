//! Keeps `post_attach_mark` in the binary's dynamic symbol table, where uprobes of
//! configs written for cloudflare/ebpf_exporter find it even in a stripped binary.

fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=post_attach_mark");
}
