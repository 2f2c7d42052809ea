//! `kprobe/` and `kretprobe/` programs attached through kprobe-multi links (5.18+ with
//! CONFIG_FPROBE), which open no perf event: they attach where Debian's and Ubuntu's
//! perf_event_paranoid (3, 4) refuses perf events without CAP_SYS_ADMIN.
//!
//! aya 0.14 can neither load a kprobe program for such a link (the kernel wants
//! expected_attach_type BPF_TRACE_KPROBE_MULTI at load) nor create one, so this loads
//! the program itself from the same prepared object, relocated as aya relocates it
//! (CO-RE against the same BTF, maps by aya's fds, calls linked), then links it by
//! symbol, as libbpf's `bpf_program__attach_kprobe_multi_opts` does.

use std::{
    collections::HashSet,
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

use aya::{maps::Map, Btf, Ebpf};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_TRACE_KPROBE_MULTI: u32 = 42;
const BPF_F_KPROBE_MULTI_RETURN: u32 = 1;
/// The verifier's log, read only when a load fails.
const LOG_SIZE: usize = 256 * 1024;

/// Why a kprobe-multi attach failed.
#[derive(Debug, thiserror::Error)]
pub enum KprobeMultiError {
    /// The object did not parse or relocate (aya loaded it, so this is unexpected).
    #[error("relocating the object again: {0}")]
    Relocate(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The object has no such program.
    #[error("no program {0} in the object")]
    NoProgram(String),
    /// The kernel refused the program (verifier log tail appended).
    #[error("program refused: {source}{log}")]
    Load {
        /// The kernel's answer.
        #[source]
        source: io::Error,
        /// `; verifier log (last lines):\n...`, or empty.
        log: String,
    },
    /// The kernel refused the link: no fprobe (EOPNOTSUPP), too old (EINVAL), or no such
    /// function (ENOENT, ESRCH).
    #[error("link refused: {0}")]
    Link(#[source] io::Error),
}

/// An attached kprobe-multi program: detached and unloaded when dropped.
#[derive(Debug)]
pub struct KprobeMultiLink {
    /// The program's function name.
    pub program: String,
    fd: OwnedFd,
    _link: OwnedFd,
}

impl KprobeMultiLink {
    /// The kernel's record of the program (id, tag, run statistics).
    ///
    /// # Errors
    /// BPF_OBJ_GET_INFO_BY_FD fails.
    pub fn info(&self) -> io::Result<aya_obj::generated::bpf_prog_info> {
        crate::prog_info::prog_info(self.fd.as_fd())
    }
}

/// The object's programs relocated for loading outside aya, against aya's maps.
pub struct Relocated {
    object: aya_obj::Object,
}

impl Relocated {
    /// Relocates `prepared` (the bytes aya loaded as `ebpf`) as aya did.
    ///
    /// # Errors
    /// Parsing or a relocation fails.
    pub fn new(prepared: &[u8], ebpf: &Ebpf, btf: &Btf) -> Result<Self, KprobeMultiError> {
        let boxed = |e: Box<dyn std::error::Error + Send + Sync>| KprobeMultiError::Relocate(e);
        let mut object = aya_obj::Object::parse(prepared).map_err(|e| boxed(e.into()))?;
        object.relocate_btf(btf).map_err(|e| boxed(e.into()))?;
        let text_sections: HashSet<usize> = object.functions.keys().map(|(s, _)| *s).collect();
        let maps: Vec<(&str, i32, &aya_obj::Map)> = object
            .maps
            .iter()
            .filter_map(|(name, map)| Some((name.as_str(), map_fd(ebpf.map(name)?), map)))
            .collect();
        // Relocating needs `object` mutably while `maps` borrows its maps: relocate a copy.
        let maps: Vec<(String, i32, aya_obj::Map)> = maps
            .into_iter()
            .map(|(n, fd, m)| (n.to_string(), fd, m.clone()))
            .collect();
        object
            .relocate_maps(
                maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
                &text_sections,
            )
            .map_err(|e| boxed(e.into()))?;
        object
            .relocate_calls(&text_sections)
            .map_err(|e| boxed(e.into()))?;
        Ok(Self { object })
    }

    /// Loads `program` and links it to `function`'s entry (or return, `ret`).
    ///
    /// # Errors
    /// The kernel refuses the program or the link.
    pub fn attach(
        &self,
        program: &str,
        function: &str,
        ret: bool,
    ) -> Result<KprobeMultiLink, KprobeMultiError> {
        let prog = self
            .object
            .programs
            .get(program)
            .ok_or_else(|| KprobeMultiError::NoProgram(program.into()))?;
        let code = &self.object.functions[&prog.function_key()].instructions;
        let program_fd = load(program, code, &prog.license)?;
        let link = link(&program_fd, function, ret).map_err(KprobeMultiError::Link)?;
        Ok(KprobeMultiLink {
            program: program.into(),
            fd: program_fd,
            _link: link,
        })
    }
}

/// A map's fd (its number goes into the instructions; aya keeps it open).
fn map_fd(map: &Map) -> i32 {
    macro_rules! fd {
        ($($variant:ident),*) => {
            match map { $(Map::$variant(data) => data.fd().as_fd().as_raw_fd(),)* }
        };
    }
    fd!(
        Array,
        ArrayOfMaps,
        BloomFilter,
        CgroupArray,
        CgroupStorage,
        CgrpStorage,
        CpuMap,
        DevMap,
        DevMapHash,
        HashMap,
        HashOfMaps,
        InodeStorage,
        LpmTrie,
        LruHashMap,
        PerCpuArray,
        PerCpuCgroupStorage,
        PerCpuHashMap,
        PerCpuLruHashMap,
        PerfEventArray,
        ProgramArray,
        Queue,
        ReusePortSockArray,
        RingBuf,
        SockHash,
        SockMap,
        SkStorage,
        Stack,
        StackTraceMap,
        Unsupported,
        XskMap
    )
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_LINK_CREATE with its `kprobe_multi` member.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    multi_flags: u32,
    cnt: u32,
    syms: u64,
    addrs: u64,
    cookies: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid bpf_attr prefix of its size; the kernel zero-extends it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a successful BPF_PROG_LOAD or BPF_LINK_CREATE returns a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn load(
    name: &str,
    code: &[aya_obj::generated::bpf_insn],
    license: &CString,
) -> Result<OwnedFd, KprobeMultiError> {
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_KPROBE,
        insn_cnt: code.len() as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_TRACE_KPROBE_MULTI,
        ..Default::default()
    };
    // The kernel's name limit, as aya truncates it.
    for (dst, src) in attr.prog_name[..15].iter_mut().zip(name.bytes()) {
        *dst = src;
    }
    if let Ok(fd) = bpf(BPF_PROG_LOAD, &mut attr) {
        return Ok(fd);
    }
    // Again with the verifier's log, to say why.
    let mut log = vec![0u8; LOG_SIZE];
    attr.log_level = 1;
    attr.log_size = LOG_SIZE as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    let source = match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let tail = crate::loader::tail(&String::from_utf8_lossy(&log[..end]), 12);
    Err(KprobeMultiError::Load {
        source,
        log: if tail.is_empty() {
            String::new()
        } else {
            format!("; verifier log (last lines):\n{tail}")
        },
    })
}

fn link(program: &OwnedFd, function: &str, ret: bool) -> io::Result<OwnedFd> {
    let symbol =
        CString::new(function).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let syms = [symbol.as_ptr()];
    let mut attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        attach_type: BPF_TRACE_KPROBE_MULTI,
        multi_flags: if ret { BPF_F_KPROBE_MULTI_RETURN } else { 0 },
        cnt: 1,
        syms: syms.as_ptr() as u64,
        ..Default::default()
    };
    bpf(BPF_LINK_CREATE, &mut attr)
}

/// The error, and what it says about the kernel.
pub fn explain(e: &KprobeMultiError) -> String {
    let why = match e {
        KprobeMultiError::Link(io) | KprobeMultiError::Load { source: io, .. } => {
            match io.raw_os_error() {
                Some(libc::EOPNOTSUPP) => " (this kernel has no fprobe: CONFIG_FPROBE)",
                Some(libc::EINVAL) => " (kprobe-multi links need kernel 5.18 or later)",
                Some(libc::ENOENT | libc::ESRCH) => " (no such traceable function)",
                _ => "",
            }
        }
        _ => "",
    };
    format!("{}{why}", crate::chain(e))
}
