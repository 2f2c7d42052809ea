//! The exporter's built-in kernel programs, compiled from `bpf/*.bpf.c` and embedded.
//!
//! Objects are plain ELF bytes with BTF, ready for `ingest::Loader`; the binary needs
//! no files beside it. User programs are compiled with the same headers (`bpf/include`).

/// An embedded BPF object.
#[derive(Debug, Clone, Copy)]
pub struct Object {
    /// Name the config refers to (`object: <name>`).
    pub name: &'static str,
    /// ELF bytes.
    pub bytes: &'static [u8],
    /// The same program built with `-DOUTPUT_PERF`: perf event arrays instead of ring
    /// buffers, for kernels before 5.8.
    pub perf_bytes: &'static [u8],
}

/// ELF parsing reads headers in place, so the bytes must be 8-byte aligned.
#[repr(C)]
struct Aligned<B: ?Sized> {
    _align: [u64; 0],
    bytes: B,
}

macro_rules! aligned {
    ($file:expr) => {{
        const A: &Aligned<[u8]> = &Aligned {
            _align: [],
            bytes: *include_bytes!(concat!(env!("OUT_DIR"), "/", $file)),
        };
        &A.bytes
    }};
}

macro_rules! object {
    ($name:literal) => {
        Object {
            name: $name,
            bytes: aligned!(concat!($name, ".bpf.o")),
            perf_bytes: aligned!(concat!($name, ".perf.bpf.o")),
        }
    };
}

/// Every embedded object.
pub const OBJECTS: &[Object] = &[
    object!("tcp_connect_latency"),
    object!("process_lifecycle"),
    object!("oom_kills"),
    object!("tcp_retransmits"),
    object!("tcp_resets"),
    object!("udp_drops"),
    object!("packet_drops"),
    object!("runqueue_latency"),
    object!("block_io"),
    object!("direct_reclaim"),
    object!("syscall_errors"),
    object!("cgroup_events"),
];

/// Looks up an embedded object by name.
pub fn find(name: &str) -> Option<&'static Object> {
    OBJECTS.iter().find(|o| o.name == name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_objects_are_bpf_elf_with_btf() {
        for o in super::OBJECTS {
            assert_eq!(o.bytes.as_ptr() as usize % 8, 0, "{} misaligned", o.name);
            assert_eq!(&o.bytes[..4], b"\x7fELF", "{}", o.name);
            assert_eq!(o.bytes[18], 247, "{} is not EM_BPF", o.name); // e_machine
            assert!(
                o.bytes.windows(4).any(|w| w == b".BTF"),
                "{} lacks BTF",
                o.name
            );
        }
    }

    /// Section names of an ELF64 little-endian object.
    fn section_names(elf: &[u8]) -> Vec<String> {
        let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
        let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
        let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
        let (shoff, shentsize, shnum, shstrndx) =
            (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
        let header = |i: usize| shoff + i * shentsize;
        let strtab = u64_at(header(shstrndx) + 0x18);
        (0..shnum)
            .map(|i| {
                let start = strtab + u32_at(header(i));
                let len = elf[start..].iter().position(|&b| b == 0).unwrap();
                String::from_utf8_lossy(&elf[start..start + len]).into_owned()
            })
            .collect()
    }

    /// Debian's and Ubuntu's kernels (perf_event_paranoid 3 and 4) refuse perf events
    /// without CAP_SYS_ADMIN, which the DaemonSet does not hold: no built-in may use a
    /// hook that attaches through one.
    #[test]
    fn no_built_in_attaches_through_a_perf_event() {
        for o in super::OBJECTS {
            let names = section_names(o.bytes);
            assert!(names.iter().any(|n| n == ".BTF"), "{}: {names:?}", o.name);
            for name in names {
                let kind = name.split('/').next().unwrap_or_default();
                assert!(
                    !matches!(
                        kind,
                        "tracepoint" | "tp" | "kprobe" | "kretprobe" | "uprobe" | "uretprobe" | "usdt" | "perf_event"
                    ),
                    "{}: section {name} attaches through perf_event_open (use raw_tp/, tp_btf/ or fentry/)",
                    o.name
                );
            }
        }
    }

    /// The objects are embedded without DWARF (bpf/build.rs, with llvm-strip), BTF kept.
    #[test]
    fn built_ins_are_embedded_without_dwarf() {
        for o in super::OBJECTS {
            let names = section_names(o.bytes);
            assert!(
                names.iter().any(|n| n == ".BTF.ext"),
                "{}: {names:?}",
                o.name
            );
            assert!(
                !names.iter().any(|n| n.starts_with(".debug_")),
                "{}: {names:?} (is llvm-strip installed?)",
                o.name
            );
        }
    }
}
