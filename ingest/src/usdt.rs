//! USDT probes: the sites a binary's `.note.stapsdt` notes describe, turned into the
//! file offsets uprobes attach at and the argument specs libbpf's `<bpf/usdt.bpf.h>`
//! reads (its `struct __bpf_usdt_spec`, one per site, indexed by the attach cookie, or
//! by the probe's address where the kernel has no BPF cookies).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

use object::{Object, ObjectSection, ObjectSegment};

/// Most arguments a probe may have (the header's `BPF_USDT_MAX_ARG_CNT`).
pub const MAX_ARGS: usize = 12;

/// One argument's location, as the header's `struct __bpf_usdt_arg_spec`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArgSpec {
    /// The constant, or the offset added to the register before reading memory.
    pub val_off: u64,
    /// 0 constant, 1 register, 2 memory at register + `val_off`.
    pub arg_type: u32,
    /// Offset of the register in `struct pt_regs`.
    pub reg_off: i16,
    /// Whether the argument is signed.
    pub arg_signed: bool,
    /// 64 minus the argument's size in bits.
    pub arg_bitshift: i8,
}

/// One probe site's arguments, as the header's `struct __bpf_usdt_spec`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spec {
    /// Argument locations.
    pub args: [ArgSpec; MAX_ARGS],
    /// The value `bpf_usdt_cookie()` returns.
    pub cookie: u64,
    /// Number of arguments.
    pub arg_cnt: i16,
    /// Explicit padding, so every byte written to the map is initialized.
    pub _pad: [u8; 6],
}

// SAFETY: plain `repr(C)` data without implicit padding.
unsafe impl aya::Pod for Spec {}

/// A probe site in a binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Offset in the file to attach the uprobe at.
    pub offset: u64,
    /// File offset of the probe's semaphore (0: none): a counter the application
    /// reads to decide whether to fire the probe at all.
    pub semaphore: u64,
    /// Its arguments.
    pub spec: Spec,
    /// The address the probe fires at in every process, for executables linked at a
    /// fixed address (`None` for PIE binaries and shared libraries, which move).
    pub fixed_ip: Option<u64>,
}

/// x86-64 `struct pt_regs` offsets by register name, with the names of its 32-, 16-
/// and 8-bit parts (an argument's size says how much of the register it uses).
fn reg_off(name: &str) -> Option<i16> {
    const REGS: [(&[&str], i16); 18] = [
        (&["r15", "r15d", "r15w", "r15b"], 0),
        (&["r14", "r14d", "r14w", "r14b"], 8),
        (&["r13", "r13d", "r13w", "r13b"], 16),
        (&["r12", "r12d", "r12w", "r12b"], 24),
        (&["rbp", "ebp", "bp", "bpl"], 32),
        (&["rbx", "ebx", "bx", "bl"], 40),
        (&["r11", "r11d", "r11w", "r11b"], 48),
        (&["r10", "r10d", "r10w", "r10b"], 56),
        (&["r9", "r9d", "r9w", "r9b"], 64),
        (&["r8", "r8d", "r8w", "r8b"], 72),
        (&["rax", "eax", "ax", "al"], 80),
        (&["rcx", "ecx", "cx", "cl"], 88),
        (&["rdx", "edx", "dx", "dl"], 96),
        (&["rsi", "esi", "si", "sil"], 104),
        (&["rdi", "edi", "di", "dil"], 112),
        (&["rip", "eip", "ip", "ipl"], 128),
        (&["rsp", "esp", "sp", "spl"], 152),
        (&["orig_rax"], 120),
    ];
    REGS.iter()
        .find(|(names, _)| names.contains(&name))
        .map(|&(_, off)| off)
}

/// Why a USDT argument operand cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{arg:?}: {problem}")]
pub struct ArgError {
    /// The operand as the note has it.
    pub arg: String,
    pub problem: ArgProblem,
}

/// What is wrong with an operand.
#[derive(Debug, thiserror::Error)]
pub enum ArgProblem {
    #[error("no <size>@<operand>")]
    NoSize,
    #[error("bad size {0:?}")]
    BadSize(String),
    #[error("size {0} is not 1, 2, 4 or 8 bytes")]
    OddSize(i32),
    #[error("unknown register {0:?}")]
    UnknownRegister(String),
    #[error("bad constant")]
    BadConstant,
    #[error("unbalanced (")]
    Unbalanced,
    #[error("indexed memory operands are not supported")]
    Indexed,
    #[error("bad offset {0:?}")]
    BadOffset(String),
}

/// Why a binary's USDT notes give no usable site for a probe.
#[derive(Debug, thiserror::Error)]
pub enum NoteError {
    #[error(transparent)]
    Object(#[from] object::Error),
    #[error("no .note.stapsdt section: the binary has no USDT probes")]
    NoNotes,
    #[error("truncated .note.stapsdt")]
    Truncated,
    #[error("{what} address {addr:#x} is in no loaded segment")]
    Unmapped { what: &'static str, addr: u64 },
    #[error("{probe} has more than {MAX_ARGS} arguments")]
    TooManyArgs { probe: String },
    #[error("{probe}: {source}")]
    Arg {
        probe: String,
        #[source]
        source: ArgError,
    },
    #[error("no USDT probe {probe} in the binary")]
    NoProbe { probe: String },
}

/// Parses one argument of a note's argument string, x86-64 GNU assembler operands:
/// `-4@%edi` (register), `8@-16(%rbp)` (memory), `4@$42` (constant).
pub fn parse_arg(arg: &str) -> Result<ArgSpec, ArgError> {
    let bad = |problem: ArgProblem| ArgError {
        arg: arg.to_string(),
        problem,
    };
    let (size, operand) = arg.split_once('@').ok_or_else(|| bad(ArgProblem::NoSize))?;
    let size: i32 = size
        .parse()
        .map_err(|_| bad(ArgProblem::BadSize(size.to_string())))?;
    let bytes = size.unsigned_abs();
    if !matches!(bytes, 1 | 2 | 4 | 8) {
        return Err(bad(ArgProblem::OddSize(size)));
    }
    let mut spec = ArgSpec {
        arg_signed: size < 0,
        arg_bitshift: (64 - bytes * 8) as i8,
        ..ArgSpec::default()
    };
    let reg = |r: &str| {
        r.strip_prefix('%')
            .and_then(reg_off)
            .ok_or_else(|| bad(ArgProblem::UnknownRegister(r.to_string())))
    };
    if let Some(constant) = operand.strip_prefix('$') {
        spec.arg_type = 0;
        spec.val_off = parse_int(constant).ok_or_else(|| bad(ArgProblem::BadConstant))?;
    } else if let Some((off, rest)) = operand.split_once('(') {
        let register = rest
            .strip_suffix(')')
            .ok_or_else(|| bad(ArgProblem::Unbalanced))?;
        if register.contains(',') {
            return Err(bad(ArgProblem::Indexed));
        }
        spec.arg_type = 2;
        spec.reg_off = reg(register)?;
        spec.val_off = if off.is_empty() {
            0
        } else {
            parse_int(off).ok_or_else(|| bad(ArgProblem::BadOffset(off.to_string())))?
        };
    } else {
        spec.arg_type = 1;
        spec.reg_off = reg(operand)?;
    }
    Ok(spec)
}

/// A decimal or `0x` number, possibly negative (two's complement).
fn parse_int(s: &str) -> Option<u64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let v = match digits.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok()?,
        None => digits.parse().ok()?,
    };
    Some(if neg { v.wrapping_neg() } else { v })
}

/// Where the loaded address `addr` is in the file, by the segment that maps it.
fn file_offset(file: &object::File<'_>, addr: u64) -> Option<u64> {
    file.segments().find_map(|s| {
        let (start, size) = (s.address(), s.size());
        let (file_off, _) = s.file_range();
        (addr >= start && addr < start + size).then(|| addr - start + file_off)
    })
}

/// The sites of probe `provider:name` in the ELF file `bytes`.
pub fn sites(bytes: &[u8], provider: &str, name: &str) -> Result<Vec<Site>, NoteError> {
    let file = object::File::parse(bytes)?;
    let notes = file
        .section_by_name(".note.stapsdt")
        .ok_or(NoteError::NoNotes)?;
    let data = notes.data()?;
    // Prelinked binaries moved .stapsdt.base; notes hold its link-time address.
    let base = file.section_by_name(".stapsdt.base").map(|s| s.address());
    let mut out = Vec::new();
    let mut at = 0usize;
    let u32_at = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(data.get(i..i + 4)?.try_into().ok()?))
    };
    while at + 12 <= data.len() {
        let (Some(namesz), Some(descsz), Some(kind)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8))
        else {
            break;
        };
        let name_at = at + 12;
        let desc_at = name_at + (namesz as usize).next_multiple_of(4);
        let end = desc_at + (descsz as usize).next_multiple_of(4);
        let desc = data
            .get(desc_at..desc_at + descsz as usize)
            .ok_or(NoteError::Truncated)?;
        at = end;
        if kind != 3 || data.get(name_at..name_at + 8) != Some(b"stapsdt\0") || desc.len() < 24 {
            continue;
        }
        let word = |i: usize| u64::from_le_bytes(desc[i * 8..i * 8 + 8].try_into().unwrap());
        let (mut pc, note_base, semaphore) = (word(0), word(1), word(2));
        let mut strings = desc[24..].split(|&b| b == 0).map(String::from_utf8_lossy);
        let (Some(p), Some(n)) = (strings.next(), strings.next()) else {
            continue;
        };
        if p != provider || n != name {
            continue;
        }
        let args = strings.next().unwrap_or_default();
        if let Some(actual) = base {
            if note_base != 0 {
                pc = pc.wrapping_add(actual).wrapping_sub(note_base);
            }
        }
        let unmapped = |what, addr| NoteError::Unmapped { what, addr };
        let offset = file_offset(&file, pc).ok_or_else(|| unmapped("probe", pc))?;
        let semaphore = match semaphore {
            0 => 0,
            addr => file_offset(&file, addr).ok_or_else(|| unmapped("semaphore", addr))?,
        };
        let mut spec = Spec::default();
        for (i, a) in args.split_whitespace().enumerate() {
            if i >= MAX_ARGS {
                return Err(NoteError::TooManyArgs {
                    probe: format!("{provider}:{name}"),
                });
            }
            spec.args[i] = parse_arg(a).map_err(|source| NoteError::Arg {
                probe: format!("{provider}:{name}"),
                source,
            })?;
            spec.arg_cnt = i as i16 + 1;
        }
        out.push(Site {
            offset,
            semaphore,
            spec,
            fixed_ip: (file.kind() == object::ObjectKind::Executable).then_some(pc),
        });
    }
    if out.is_empty() {
        return Err(NoteError::NoProbe {
            probe: format!("{provider}:{name}"),
        });
    }
    Ok(out)
}

/// Attaches the loaded uprobe program `prog` at `offset` in `path` with `cookie`, the
/// kernel raising the semaphore at file offset `semaphore` in every process mapping the
/// file while attached (what libbpf does; aya 0.14 cannot pass the reference counter).
/// Without a cookie (kernels before 5.15) the program is set on the perf event itself.
/// Returns the perf event and link, which detach when dropped.
pub fn attach_with_semaphore(
    prog: BorrowedFd<'_>,
    path: &Path,
    offset: u64,
    semaphore: u64,
    cookie: Option<u64>,
) -> io::Result<(OwnedFd, Option<OwnedFd>)> {
    use std::os::unix::ffi::OsStrExt;
    let pmu: u32 = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")?
        .trim()
        .parse()
        .map_err(|_| io::Error::other("bad uprobe PMU type"))?;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("path contains NUL"))?;
    // The reference counter's offset goes in config bits 32-63
    // (/sys/bus/event_source/devices/uprobe/format/ref_ctr_offset).
    let attr = crate::perf::PerfEventAttr {
        kind: pmu,
        size: std::mem::size_of::<crate::perf::PerfEventAttr>() as u32,
        config: semaphore << 32,
        config1: path.as_ptr() as u64,
        config2: offset,
        ..Default::default()
    };
    // Every process (pid -1) needs a CPU: 0 stands for all for uprobes.
    let event = crate::perf::perf_event_open(&attr, -1, 0)?;
    let Some(cookie) = cookie else {
        const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
        // SAFETY: both descriptors are valid; the argument is the program's fd.
        if unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok((event, None));
    };
    // union bpf_attr for BPF_LINK_CREATE: prog_fd, target_fd, attach_type
    // (BPF_PERF_EVENT = 41), flags, then perf_event.bpf_cookie.
    let mut link_attr = [0u8; 64];
    link_attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    link_attr[4..8].copy_from_slice(&(event.as_raw_fd() as u32).to_ne_bytes());
    link_attr[8..12].copy_from_slice(&41u32.to_ne_bytes());
    link_attr[16..24].copy_from_slice(&cookie.to_ne_bytes());
    const BPF_LINK_CREATE: i32 = 28;
    // SAFETY: link_attr is a valid bpf_attr prefix of the size passed.
    let link = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            link_attr.as_ptr(),
            link_attr.len() as u32,
        )
    };
    if link < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok((event, Some(unsafe { OwnedFd::from_raw_fd(link as i32) })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_layout_matches_the_header() {
        // struct __bpf_usdt_arg_spec: u64, enum (4), short, bool, char = 16 bytes;
        // struct __bpf_usdt_spec: 12 of them, u64 cookie, short arg_cnt (+ padding).
        assert_eq!(std::mem::size_of::<ArgSpec>(), 16);
        assert_eq!(std::mem::size_of::<Spec>(), 12 * 16 + 8 + 8);
        assert_eq!(std::mem::offset_of!(Spec, cookie), 192);
        assert_eq!(std::mem::offset_of!(ArgSpec, reg_off), 12);
    }

    #[test]
    fn parses_gas_operands() {
        let a = parse_arg("-4@%edi").unwrap();
        assert_eq!(
            (a.arg_type, a.reg_off, a.arg_signed, a.arg_bitshift),
            (1, 112, true, 32)
        );
        let a = parse_arg("8@-16(%rbp)").unwrap();
        assert_eq!((a.arg_type, a.reg_off, a.val_off as i64), (2, 32, -16));
        let a = parse_arg("8@(%rax)").unwrap();
        assert_eq!((a.arg_type, a.reg_off, a.val_off), (2, 80, 0));
        let a = parse_arg("4@$42").unwrap();
        assert_eq!((a.arg_type, a.val_off, a.arg_bitshift), (0, 42, 32));
        let a = parse_arg("-8@$-1").unwrap();
        assert_eq!(a.val_off, u64::MAX);
        let a = parse_arg("1@%r12b").unwrap();
        assert_eq!((a.reg_off, a.arg_bitshift), (24, 56));
        let a = parse_arg("8@0x10(%rsp)").unwrap();
        assert_eq!((a.reg_off, a.val_off), (152, 16));
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        for (bad, why) in [
            ("%edi", "no <size>@"),
            ("3@%edi", "not 1, 2, 4 or 8"),
            ("x@%edi", "bad size"),
            ("4@%xmm0", "unknown register"),
            ("8@8(%rax,%rbx,2)", "indexed"),
            ("8@8(%rax", "unbalanced"),
            ("4@$zz", "bad constant"),
        ] {
            let e = parse_arg(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn notes_of_a_non_elf_or_probe_less_binary_are_errors() {
        assert!(sites(b"not an elf", "p", "n").is_err());
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let e = sites(&me, "p", "n").unwrap_err();
        assert!(
            matches!(e, NoteError::NoNotes | NoteError::NoProbe { .. }),
            "{e}"
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(arg in "[-0-9@%$()a-z,x]{0,24}") {
            let _ = parse_arg(&arg);
        }
    }
}
