//! Compiles every `bpf/*.bpf.c` with clang into `$OUT_DIR/<name>.bpf.o` (ring buffers)
//! and `<name>.perf.bpf.o` (perf event arrays, for kernels before 5.8) for embedding,
//! without their DWARF (`llvm-strip -g`: 97% of each object; BTF, its line info and the
//! symbols the loader needs stay).

use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let (arch, triple) = match env::var("CARGO_CFG_TARGET_ARCH").unwrap().as_str() {
        "x86_64" => ("x86", "x86_64-linux-gnu"),
        "aarch64" => ("arm64", "aarch64-linux-gnu"),
        other => panic!("no BPF target arch mapping for {other}"),
    };
    println!("cargo:rerun-if-changed=include");
    // New programs change the directory itself.
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=LLVM_STRIP");
    let strip = env::var("LLVM_STRIP").unwrap_or_else(|_| "llvm-strip".into());
    let mut sources: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    for src in sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let stem = src
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".bpf.c", "");
        // Each program twice: for ring buffers, and for kernels without them (perf).
        for (suffix, defines) in [("bpf.o", &[][..]), ("perf.bpf.o", &["-DOUTPUT_PERF"][..])] {
            let status = Command::new(&clang)
                .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
                .arg(format!("-D__TARGET_ARCH_{arch}"))
                .args(defines)
                .arg("-I")
                .arg(dir.join("include"))
                .arg("-idirafter")
                .arg(format!("/usr/include/{triple}"))
                .arg("-c")
                .arg(&src)
                .arg("-o")
                .arg(out.join(format!("{stem}.{suffix}")))
                .status()
                .unwrap_or_else(|e| {
                    panic!("cannot run {clang} (install clang and libbpf-dev): {e}")
                });
            assert!(
                status.success(),
                "clang failed on {} {defines:?}",
                src.display()
            );
            strip_debug(&strip, &out.join(format!("{stem}.{suffix}")));
        }
    }
}

/// Drops an object's DWARF in place; without llvm-strip the objects stay whole (and the
/// binary larger).
fn strip_debug(strip: &str, object: &std::path::Path) {
    match Command::new(strip).arg("-g").arg(object).status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{strip} -g {} failed: {s}", object.display()),
        Err(e) => println!(
            "cargo:warning=cannot run {strip} ({e}): embedding BPF objects with their DWARF (install llvm)"
        ),
    }
}
