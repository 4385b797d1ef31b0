//! The dead-man switch: a tun device that exists only while lbd holds its file descriptor.
//!
//! lbd creates it without `TUNSETPERSIST`, gives it `ADDRESS peer PEER/30` and brings it up;
//! the announced routes are device routes on it (`via "DEVICE"`). When lbd exits for any
//! reason (SIGKILL included) the kernel closes the descriptor, the device disappears and BIRD
//! withdraws every route on it, with no lbd code running (4-18 ms, docs/scale-out.md).
//!
//! Done with four ioctls rather than a crate: `tun`/`tun-tap` bring async runtimes or
//! packet I/O lbd never uses (nobody reads this device), and `libc` is already a dependency.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `TUNSETIFF` (`_IOW('T', 202, int)`).
const TUNSETIFF: libc::Ioctl = 0x4004_54ca;
const IFF_TUN: i16 = 0x0001;
const IFF_NO_PI: i16 = 0x1000;
/// `IFF_TUN_EXCL`: refuse to attach to an existing (e.g. persistent) device of that name, which
/// would not vanish with lbd; closes the gap between the name check and `TUNSETIFF`.
const IFF_TUN_EXCL: i16 = 0x8000u16 as i16;

/// `struct ifreq`: the name and a 24-byte union (flags or a `sockaddr_in`).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }

    fn with_flags(name: &str, flags: i16) -> Self {
        let mut r = Self::new(name);
        r.data[..2].copy_from_slice(&flags.to_ne_bytes());
        r
    }

    fn with_addr(name: &str, addr: Ipv4Addr) -> Self {
        let mut r = Self::new(name);
        r.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        r.data[4..8].copy_from_slice(&addr.octets());
        r
    }
}

/// An open, configured, non-persistent tun device. Dropping it removes the device.
#[derive(Debug)]
pub struct DeadMan {
    fd: OwnedFd,
    name: String,
}

fn ioctl(fd: i32, request: libc::Ioctl, req: &mut IfReq, what: &str) -> std::io::Result<()> {
    // SAFETY: `req` is a valid, writable `struct ifreq` (40 bytes) for the whole call, which
    // is what every request used here reads or writes.
    let rc = unsafe { libc::ioctl(fd, request, req as *mut IfReq) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

impl DeadMan {
    /// Creates tun device `name` with `address peer PEER/30` and sets it up. Fails when the
    /// name is taken (another lbd runs, or an interface of that name exists).
    pub fn open(name: &str, address: Ipv4Addr, peer: Ipv4Addr) -> std::io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad interface name {name:?}"),
            ));
        }
        if nix::net::if_::if_nametoindex(name).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("an interface named {name} exists already (another lbd running? a persistent device left over? `ip link del {name}` if it is stale)"),
            ));
        }
        let path = CString::new("/dev/net/tun").expect("no NUL");
        // SAFETY: a valid NUL-terminated path; the result is checked.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(
                e.kind(),
                format!("open /dev/net/tun: {e}"),
            ));
        }
        // SAFETY: `raw` is a descriptor this function just opened and owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq::with_flags(name, IFF_TUN | IFF_NO_PI | IFF_TUN_EXCL);
        ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req, "TUNSETIFF")?;
        let dm = DeadMan {
            fd,
            name: name.to_string(),
        };
        // Addresses and flags go through an ordinary socket.
        // SAFETY: plain socket(2) call; the result is checked.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if s < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `s` was just opened and is owned here.
        let sock = unsafe { OwnedFd::from_raw_fd(s) };
        let sfd = sock.as_raw_fd();
        let mask = Ipv4Addr::new(255, 255, 255, 252);
        ioctl(
            sfd,
            libc::SIOCSIFADDR,
            &mut IfReq::with_addr(name, address),
            "SIOCSIFADDR",
        )?;
        ioctl(
            sfd,
            libc::SIOCSIFDSTADDR,
            &mut IfReq::with_addr(name, peer),
            "SIOCSIFDSTADDR",
        )?;
        ioctl(
            sfd,
            libc::SIOCSIFNETMASK,
            &mut IfReq::with_addr(name, mask),
            "SIOCSIFNETMASK",
        )?;
        let mut flags = IfReq::new(name);
        ioctl(sfd, libc::SIOCGIFFLAGS, &mut flags, "SIOCGIFFLAGS")?;
        let f = i16::from_ne_bytes([flags.data[0], flags.data[1]]) | libc::IFF_UP as i16;
        ioctl(
            sfd,
            libc::SIOCSIFFLAGS,
            &mut IfReq::with_flags(name, f),
            "SIOCSIFFLAGS",
        )?;
        Ok(dm)
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True while the device exists (it is this process's as long as `self` lives).
    pub fn exists(&self) -> bool {
        let _ = self.fd.as_raw_fd();
        nix::net::if_::if_nametoindex(self.name.as_str()).is_ok()
    }
}
