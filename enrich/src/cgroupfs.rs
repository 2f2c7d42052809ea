//! cgroup v2 ids to paths: the id is the directory's inode and a valid file handle.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use crate::EnrichError;

/// The cgroup2 hierarchy, open for id → path resolution.
#[derive(Debug)]
pub struct CgroupFs {
    mount: PathBuf,
    dir: File,
}

/// `struct file_handle` with room for the 8-byte cgroup id.
#[repr(C)]
struct CgroupHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: [u8; 8],
}

/// `FILEID_KERNFS`: the handle type of kernfs (cgroupfs) file handles.
const FILEID_KERNFS: i32 = 0xfe;

/// Finds the cgroup2 mount point in mountinfo text (field 5 is the mount point,
/// the filesystem type follows the ` - ` separator).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let point = left.split_whitespace().nth(4)?;
        // mountinfo escapes space, tab, newline and backslash as octal.
        Some(PathBuf::from(
            point
                .replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\"),
        ))
    })
}

impl CgroupFs {
    /// Opens the cgroup2 hierarchy mounted at `mount`.
    ///
    /// # Errors
    /// The directory cannot be opened.
    pub fn open(mount: &Path) -> Result<Self, EnrichError> {
        let dir = File::open(mount).map_err(|source| EnrichError::Io {
            path: mount.display().to_string(),
            source,
        })?;
        Ok(Self {
            mount: mount.to_path_buf(),
            dir,
        })
    }

    /// Opens the hierarchy this process sees, found in /proc/self/mountinfo
    /// (`/sys/fs/cgroup` on pure v2 nodes, `/sys/fs/cgroup/unified` on hybrid ones).
    ///
    /// # Errors
    /// No cgroup2 mount, or it cannot be opened.
    pub fn discover() -> Result<Self, EnrichError> {
        let path = "/proc/self/mountinfo";
        let text = std::fs::read_to_string(path).map_err(|source| EnrichError::Io {
            path: path.into(),
            source,
        })?;
        let mount = cgroup2_mount(&text).ok_or_else(|| EnrichError::NoCgroup2(path.into()))?;
        Self::open(&mount)
    }

    /// Where the hierarchy is mounted.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// Hands every cgroup below the mount to `f`: its id (the directory's inode number)
    /// and path (relative to the mount, starting with `/`). A cgroup removed mid-walk
    /// is skipped.
    pub fn walk(&self, mut f: impl FnMut(u64, &str)) {
        use std::os::unix::fs::{DirEntryExt, MetadataExt};
        let mut dirs = vec![(self.mount.clone(), String::new())];
        while let Some((dir, path)) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let child = format!("{path}/{name}");
                f(e.metadata().map_or(e.ino(), |m| m.ino()), &child);
                dirs.push((e.path(), child));
            }
        }
    }

    /// The id of the cgroup at `path` (relative to the mount), i.e. its inode number.
    ///
    /// # Errors
    /// The directory does not exist.
    pub fn id_of(&self, path: &str) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(self.mount.join(path.trim_start_matches('/')))?.ino())
    }

    /// The path (relative to the mount, starting with `/`) of the cgroup with `id`.
    ///
    /// # Errors
    /// The cgroup no longer exists (`ESTALE`/`ENOENT`) or the process lacks
    /// `CAP_DAC_READ_SEARCH`.
    pub fn path_of(&self, id: u64) -> io::Result<String> {
        let mut handle = CgroupHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id: id.to_le_bytes(),
        };
        // SAFETY: handle is a valid file_handle with handle_bytes of payload; the
        // returned descriptor is owned below.
        let fd = unsafe {
            libc::open_by_handle_at(
                self.dir.as_raw_fd(),
                (&raw mut handle).cast(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by the kernel and is ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        let rel = target.strip_prefix(&self.mount).unwrap_or(&target);
        Ok(format!("/{}", rel.display()).replace("//", "/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mount_on_hybrid_and_pure_v2_hosts() {
        let hybrid = "31 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      35 31 0:30 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(hybrid), Some("/sys/fs/cgroup/unified".into()));
        let pure = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(pure), Some("/sys/fs/cgroup".into()));
        let spaced = "30 23 0:26 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(spaced), Some("/mnt/my cg".into()));
        assert_eq!(
            cgroup2_mount("35 31 0:30 / /x rw - cgroup cgroup rw\n"),
            None
        );
        assert_eq!(cgroup2_mount("garbage\n\n"), None);
    }

    /// Needs root (CAP_DAC_READ_SEARCH) and a cgroup2 mount; checks the root cgroup.
    #[test]
    fn resolves_root_cgroup_when_privileged() {
        if !test_support::privileged("resolves_root_cgroup_when_privileged") {
            return;
        }
        let fs = CgroupFs::discover().unwrap();
        let id = fs.id_of("/").unwrap();
        assert_eq!(fs.path_of(id).unwrap(), "/");
        assert!(fs.path_of(u64::MAX - 7).is_err());
    }
}
