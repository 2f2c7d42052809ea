//! Perf event array buffers opened and read directly, with wakeups batched by a
//! watermark: aya opens them with a wakeup per event, which costs more than the event.
//!
//! Each online CPU gets a `PERF_COUNT_SW_BPF_OUTPUT` event whose mmap ring the program's
//! `bpf_perf_event_output()` writes to; its fd goes into the map at the CPU's index. The
//! ring is a metadata page (`data_head` at 1024, `data_tail` at 1032) followed by 2^n
//! data pages. Records are `perf_event_header { u32 type; u16 misc; u16 size }`, then for
//! samples a u32 size and the raw bytes; lost records carry a count. Records may wrap.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::MapData;

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_BPF_OUTPUT: u64 = 10;
const PERF_SAMPLE_RAW: u64 = 1 << 10;
const WATERMARK: u64 = 1 << 14;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_RECORD_LOST: u32 = 2;
const PERF_RECORD_SAMPLE: u32 = 9;
const DATA_HEAD: usize = 1024;
const DATA_TAIL: usize = 1032;

/// `struct perf_event_attr` up to `config3` (the kernel accepts a larger size when the
/// bytes it does not know are zero).
#[repr(C)]
#[derive(Default)]
pub(crate) struct PerfEventAttr {
    pub(crate) kind: u32,
    pub(crate) size: u32,
    pub(crate) config: u64,
    pub(crate) sample_period: u64,
    pub(crate) sample_type: u64,
    pub(crate) read_format: u64,
    pub(crate) flags: u64,
    pub(crate) wakeup_watermark: u32,
    pub(crate) bp_type: u32,
    pub(crate) config1: u64,
    pub(crate) config2: u64,
    pub(crate) branch_sample_type: u64,
    pub(crate) sample_regs_user: u64,
    pub(crate) sample_stack_user: u32,
    pub(crate) clockid: i32,
    pub(crate) sample_regs_intr: u64,
    pub(crate) aux_watermark: u32,
    pub(crate) sample_max_stack: u16,
    pub(crate) reserved_2: u16,
    pub(crate) aux_sample_size: u32,
    pub(crate) reserved_3: u32,
    pub(crate) sig_data: u64,
    pub(crate) config3: u64,
}

/// perf_event_open(2) of `attr` for process `pid` (-1: all) on `cpu` (-1: any).
pub(crate) fn perf_event_open(attr: &PerfEventAttr, pid: i32, cpu: i32) -> io::Result<OwnedFd> {
    // SAFETY: a valid attr of the size it states.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *const PerfEventAttr,
            pid,
            cpu,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One CPU's buffer.
struct CpuBuffer {
    _fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
    page: usize,
    size: usize,
}

// SAFETY: the mapping is shared memory accessed with atomics for the positions.
unsafe impl Send for CpuBuffer {}

impl Drop for CpuBuffer {
    fn drop(&mut self) {
        // SAFETY: base/len came from a successful mmap.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl CpuBuffer {
    fn open(map_fd: i32, cpu: u32, pages: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let pages = pages.max(1).next_power_of_two();
        let size = pages * page;
        let attr = PerfEventAttr {
            kind: PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: PERF_COUNT_SW_BPF_OUTPUT,
            sample_period: 1,
            sample_type: PERF_SAMPLE_RAW,
            flags: WATERMARK,
            // Wake a poller only when half the buffer waits; the reader's timer does the rest.
            wakeup_watermark: (size / 2) as u32,
            ..Default::default()
        };
        let fd = perf_event_open(&attr, -1, cpu as i32)?;
        let len = page + size;
        // SAFETY: mapping the event's ring as perf_event_open(2) documents.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let buffer = Self {
            base: NonNull::new(base.cast()).unwrap(),
            len,
            page,
            size,
            _fd: fd,
        };
        // SAFETY: enabling our own event.
        if unsafe { libc::ioctl(buffer._fd.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        crate::table::update_elem(
            map_fd,
            &cpu.to_ne_bytes(),
            &(buffer._fd.as_raw_fd() as u32).to_ne_bytes(),
        )?;
        Ok(buffer)
    }

    fn position(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: data_head and data_tail are u64s in the metadata page.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// The `len` bytes at ring position `at`, as up to two slices (the ring may wrap).
    fn bytes(&self, at: u64, len: usize) -> (&[u8], &[u8]) {
        let start = (at % self.size as u64) as usize;
        let first = len.min(self.size - start);
        // SAFETY: both ranges lie in the data area after the metadata page.
        unsafe {
            let data = self.base.as_ptr().add(self.page);
            (
                std::slice::from_raw_parts(data.add(start), first),
                std::slice::from_raw_parts(data, len - first),
            )
        }
    }

    fn read_u64(&self, at: u64) -> u64 {
        let (a, b) = self.bytes(at, 8);
        let mut v = [0u8; 8];
        v[..a.len()].copy_from_slice(a);
        v[a.len()..].copy_from_slice(b);
        u64::from_ne_bytes(v)
    }

    /// How full the buffer is (0..=1).
    fn fill(&self) -> f64 {
        let head = self.position(DATA_HEAD).load(Ordering::Acquire);
        let tail = self.position(DATA_TAIL).load(Ordering::Relaxed);
        head.saturating_sub(tail) as f64 / self.size as f64
    }

    /// Hands each sample to `sample` (as two parts) and each loss count to `lost`,
    /// then releases the space.
    fn drain(&mut self, sample: &mut impl FnMut(&[u8], &[u8]), lost: &mut impl FnMut(u64)) -> u64 {
        let head = self.position(DATA_HEAD).load(Ordering::Acquire);
        let mut tail = self.position(DATA_TAIL).load(Ordering::Relaxed);
        let mut samples = 0;
        while tail < head {
            let header = self.read_u64(tail);
            let (kind, size) = (header as u32, (header >> 48) as u16 as u64);
            if size < 8 {
                break; // corrupt: leave it rather than loop
            }
            match kind {
                PERF_RECORD_SAMPLE => {
                    let raw = self.read_u64(tail + 8) as u32 as usize;
                    let (a, b) = self.bytes(tail + 12, raw.min(size as usize - 12));
                    sample(a, b);
                    samples += 1;
                }
                PERF_RECORD_LOST => lost(self.read_u64(tail + 16)),
                _ => {}
            }
            tail += size;
        }
        self.position(DATA_TAIL).store(tail, Ordering::Release);
        samples
    }
}

/// A perf event array's buffers on every online CPU.
pub struct PerfBuffers {
    _map: MapData,
    cpus: Vec<CpuBuffer>,
    /// An epoll set of every CPU's event (edge-triggered): readable once some buffer
    /// reached its watermark, so one fd tells the reader when to drain them all.
    epoll: OwnedFd,
}

impl PerfBuffers {
    /// Opens a `pages`-page buffer per online CPU and installs it in `map`.
    ///
    /// # Errors
    /// The CPU list cannot be read, or perf_event_open/mmap fail (limits, permissions).
    pub fn open(map: MapData, pages: usize) -> io::Result<Self> {
        let cpus = aya::util::online_cpus()
            .map_err(|(what, e)| io::Error::other(format!("{what}: {e}")))?;
        let fd = map.fd().as_fd().as_raw_fd();
        let cpus: Vec<CpuBuffer> = cpus
            .into_iter()
            .map(|cpu| CpuBuffer::open(fd, cpu, pages))
            .collect::<io::Result<_>>()?;
        // SAFETY: epoll_create1 has no preconditions; the fd is owned below.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned it.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        for c in &cpus {
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                u64: 0,
            };
            // SAFETY: valid fds and event.
            if unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    c._fd.as_raw_fd(),
                    &mut ev,
                )
            } < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self {
            _map: map,
            cpus,
            epoll,
        })
    }

    /// Consumes pending readiness events (before a drain), so the set's fd is quiet
    /// until a buffer reaches its watermark again.
    pub fn clear_ready(&self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        // SAFETY: a valid epoll fd and buffer; a zero timeout never blocks.
        while unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 64, 0) } == 64
        {
        }
    }

    /// How full the fullest CPU's buffer is (0..=1).
    pub fn fill(&self) -> f64 {
        self.cpus.iter().map(CpuBuffer::fill).fold(0.0, f64::max)
    }

    /// Drains every CPU's buffer; returns the samples read.
    pub fn drain(
        &mut self,
        mut sample: impl FnMut(&[u8], &[u8]),
        mut lost: impl FnMut(u64),
    ) -> u64 {
        self.cpus
            .iter_mut()
            .map(|c| c.drain(&mut sample, &mut lost))
            .sum()
    }
}

impl AsRawFd for PerfBuffers {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.epoll.as_raw_fd()
    }
}
