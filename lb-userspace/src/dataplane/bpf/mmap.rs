//! Shared writable mappings of mmapable BPF arrays (`BPF_F_MMAPABLE`): the Maglev tables and
//! the conntrack key filter are written with memory stores instead of one syscall per slot.

use super::*;

/// A `MAP_SHARED` mapping of an array map's values, unmapped on drop.
pub(super) struct ArrayMapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value; its users access the shared memory with
// volatile or atomic operations (the kernel and the data plane access it concurrently).
unsafe impl Send for ArrayMapping {}
// SAFETY: as above.
unsafe impl Sync for ArrayMapping {}

impl Drop for ArrayMapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

impl ArrayMapping {
    /// Maps the first `bytes` (rounded up to pages) of the array map `name` of `ebpf`. Array
    /// values are 8-byte aligned slots in the kernel (value size rounded up to 8).
    pub(super) fn of(ebpf: &Ebpf, name: &'static str, bytes: usize) -> Result<Self> {
        let Some(Map::Array(data)) = ebpf.map(name) else {
            return Err(DataplaneError::MissingInObject {
                kind: "array map",
                name: name.into(),
            });
        };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = bytes.div_ceil(page) * page;
        // SAFETY: mapping a BPF array fd; the kernel checks size and flags.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_err(format!("mmap of {name}"))(io::Error::last_os_error()));
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The start of the mapping (page-aligned).
    pub(super) fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Its length in bytes.
    pub(super) fn len(&self) -> usize {
        self.len
    }
}
