//! The kernel's record of a loaded program (BPF_OBJ_GET_INFO_BY_FD), read directly:
//! aya's `ProgramInfo` has no field for the runs the kernel skipped (`recursion_misses`).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// Id, tag and run statistics of the program `fd` refers to. Fields a kernel does not
/// know stay zero (`recursion_misses` before 5.12).
///
/// # Errors
/// BPF_OBJ_GET_INFO_BY_FD fails.
pub(crate) fn prog_info(fd: BorrowedFd<'_>) -> io::Result<bpf_prog_info> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is plain integers; all zeroes is valid.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: `attr` points at `info`, which lives across the call and is `info_len`
    // bytes long; the command returns no fd.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            std::mem::size_of::<InfoAttr>() as u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}
