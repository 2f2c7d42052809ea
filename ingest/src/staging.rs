//! Flushes a batched ring's per-CPU staging (`OUTPUT_RINGBUF_BATCHED` in
//! `output.bpf.h`): records a CPU staged and has not yet written out wait there until a
//! batch fills, so on a timer the reader writes out each CPU that holds any by running
//! the ring's `<ring>__flush` program on that CPU (BPF_PROG_TEST_RUN with
//! BPF_F_TEST_RUN_ON_CPU, 5.10+). CPUs with nothing staged are left alone: one map read
//! finds them, so an idle CPU is never interrupted.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

use aya::maps::MapData;
use aya_obj::generated::bpf_cmd;

/// Offset of the staged byte count in a CPU's `struct output_staging` (after `busy`).
const LEN_AT: usize = 8;
/// BPF_F_TEST_RUN_ON_CPU: run the program on the CPU the attribute names.
const TEST_RUN_ON_CPU: u32 = 1 << 0;

/// A batched ring's staging map and flush program.
pub struct Staging {
    map: MapData,
    flush: OwnedFd,
    /// Bytes per CPU in a per-CPU read (the value size rounded up to 8).
    stride: usize,
    /// One read of every possible CPU's staging.
    values: Vec<u8>,
}

impl Staging {
    /// Wraps the per-CPU staging `map` and the ring's `flush` program.
    ///
    /// # Errors
    /// The map's info or the possible CPUs cannot be read, or its value is too small
    /// to be a `struct output_staging`.
    pub(crate) fn new(map: MapData, flush: OwnedFd) -> io::Result<Self> {
        let value_size = map.info().map_err(io::Error::other)?.value_size() as usize;
        if value_size < LEN_AT + 4 {
            return Err(io::Error::other(format!(
                "its value is {value_size} bytes, not an output.bpf.h staging"
            )));
        }
        let stride = value_size.next_multiple_of(8);
        let possible = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        Ok(Self {
            map,
            flush,
            stride,
            values: vec![0; stride * possible],
        })
    }

    /// Writes out what every online CPU has staged (an offline CPU's records wait for
    /// it to come back).
    ///
    /// # Errors
    /// Reading the staging map or running the flush program fails.
    pub fn flush(&mut self) -> io::Result<()> {
        let key = 0u32;
        crate::table::lookup_elem(
            self.map.fd().as_fd().as_raw_fd(),
            &key.to_ne_bytes(),
            &mut self.values,
        )?;
        for (cpu, value) in self.values.chunks_exact(self.stride).enumerate() {
            let len = u32::from_ne_bytes(value[LEN_AT..LEN_AT + 4].try_into().unwrap());
            if len == 0 {
                continue;
            }
            match run_on_cpu(&self.flush, cpu as u32) {
                Err(e) if e.raw_os_error() != Some(libc::ENXIO) => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Runs the raw_tp program `prog` once on `cpu` (no context, no data).
fn run_on_cpu(prog: &OwnedFd, cpu: u32) -> io::Result<()> {
    // The bpf_attr fields of BPF_PROG_TEST_RUN, up to `cpu`.
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
    }
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        flags: TEST_RUN_ON_CPU,
        cpu,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a zero-filled BPF_PROG_TEST_RUN prefix with no buffers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_TEST_RUN as libc::c_long,
            &raw mut attr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
