//! Two tiny XDP programs for the packet-rate section, assembled by hand, and the raw `bpf(2)`
//! calls they need (aya loads ELF objects only; these programs are a dozen instructions).
//!
//! - [`syn_generator`]: rewrites its frame into a TCP SYN from a random source
//!   (`198.18.<k1>` port `<k2>`, 2^32 distinct 4-tuples) and returns `XDP_TX`. Run with
//!   `BPF_PROG_TEST_RUN` and `BPF_F_TEST_XDP_LIVE_FRAMES` on the client's veth, it is the
//!   SYN flood (the kernel has no pktgen). The random fields are paired with compensating
//!   fields inside the same checksum (IP id = !k1, sequence number = !k1:!k2), so both
//!   checksums stay valid with no arithmetic per packet.
//! - [`counter_drop`]: counts every frame in a per-CPU array and drops it. Attached natively
//!   to each backend's veth it counts what the balancer forwarded, and the backends spend no
//!   CPU answering the flood (which would otherwise share the 2 cores with the balancer).
//!
//! Every function documents the kernel ABI offsets it relies on (`include/uapi/linux/bpf.h`).

use super::{BenchError, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_PROG_LOAD: u32 = 5;
const BPF_PROG_TEST_RUN: u32 = 10;
const BPF_LINK_CREATE: u32 = 28;

const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// `XDP_FLAGS_SKB_MODE`: generic (skb) mode.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native (driver) mode.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

const XDP_DROP: i32 = 1;
const XDP_TX: i32 = 3;

/// A zeroed `union bpf_attr`, large enough for every command used here.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
}

fn sys_bpf(cmd: u32, attr: &mut Attr, name: &'static str) -> Result<i64> {
    // SAFETY: `attr` is a valid, zero-initialised bpf_attr of 128 bytes that outlives the
    // call; every pointer stored in it points to memory the caller keeps alive.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_long,
        )
    };
    if ret < 0 {
        return Err(BenchError::Bpf {
            cmd: name,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(ret)
}

fn fd_from(ret: i64) -> OwnedFd {
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(ret as i32) }
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Insn {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    fn encode(self) -> u64 {
        u64::from(self.code)
            | (u64::from(self.dst & 0xf) << 8)
            | (u64::from(self.src & 0xf) << 12)
            | (u64::from(self.off as u16) << 16)
            | (u64::from(self.imm as u32) << 32)
    }
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        dst,
        src,
        off,
        imm,
    }
}

// The handful of opcodes used (class | op | source).
const fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0)
}
const fn ldx_dw(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x79, dst, src, off, 0)
}
const fn stx_dw(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x7b, dst, src, off, 0)
}
const fn stx_h(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x6b, dst, src, off, 0)
}
const fn st_w(dst: u8, off: i16, imm: i32) -> Insn {
    insn(0x62, dst, 0, off, imm)
}
const fn mov_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}
const fn mov_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}
const fn add_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm)
}
const fn sub_reg(dst: u8, src: u8) -> Insn {
    insn(0x1f, dst, src, 0, 0)
}
const fn and_imm(dst: u8, imm: i32) -> Insn {
    insn(0x57, dst, 0, 0, imm)
}
const fn rsh_imm(dst: u8, imm: i32) -> Insn {
    insn(0x77, dst, 0, 0, imm)
}
const fn jgt_reg(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x2d, dst, src, off, 0)
}
const fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x15, dst, 0, off, imm)
}
const fn call(helper: i32) -> Insn {
    insn(0x85, 0, 0, 0, helper)
}
const fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0)
}
/// `r<dst> = map fd` (two instruction slots).
fn ld_map_fd(dst: u8, fd: i32) -> [Insn; 2] {
    [insn(0x18, dst, 1, 0, fd), insn(0, 0, 0, 0, 0)]
}

const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_GET_PRANDOM_U32: i32 = 7;

/// Length of the generated frame (a 54-byte SYN padded to the Ethernet minimum).
pub const SYN_FRAME_LEN: usize = 60;

// Offsets in the frame (Ethernet 14 + IPv4 20 + TCP 20).
const OFF_IP_ID: i16 = 18;
const OFF_IP_SRC_LO: i16 = 28;
const OFF_TCP_SPORT: i16 = 34;
const OFF_TCP_SEQ_HI: i16 = 38;
const OFF_TCP_SEQ_LO: i16 = 40;

fn csum(words: impl Iterator<Item = u16>) -> u16 {
    let mut sum: u32 = words.map(u32::from).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn be_words(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
}

/// The SYN template with k1 = k2 = 0: source `src_hi.0.0:0`, IP id 0xffff, sequence
/// 0xffffffff; any (k1, k2) the program writes keeps both checksums valid.
pub fn syn_template(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src_hi: [u8; 2],
    dst: std::net::Ipv4Addr,
    dst_port: u16,
) -> [u8; SYN_FRAME_LEN] {
    let mut f = [0u8; SYN_FRAME_LEN];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = 14;
    f[ip] = 0x45;
    f[ip + 2..ip + 4].copy_from_slice(&40u16.to_be_bytes());
    f[ip + 4..ip + 6].copy_from_slice(&[0xff, 0xff]); // id = !k1 with k1 = 0
    f[ip + 6] = 0x40; // DF
    f[ip + 8] = 64; // TTL
    f[ip + 9] = 6; // TCP
    f[ip + 12..ip + 14].copy_from_slice(&src_hi);
    f[ip + 16..ip + 20].copy_from_slice(&dst.octets());
    let ip_sum = csum(be_words(&f[ip..ip + 20]));
    f[ip + 10..ip + 12].copy_from_slice(&ip_sum.to_be_bytes());
    let t = 34;
    f[t + 2..t + 4].copy_from_slice(&dst_port.to_be_bytes());
    f[t + 4..t + 8].copy_from_slice(&[0xff; 4]); // seq = !k1:!k2
    f[t + 12] = 5 << 4;
    f[t + 13] = 0x02; // SYN
    f[t + 14..t + 16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&f[ip + 12..ip + 20]);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&f[t..t + 20]);
    let tcp_sum = csum(be_words(&pseudo));
    f[t + 16..t + 18].copy_from_slice(&tcp_sum.to_be_bytes());
    f
}

/// Writes (k1, k2) into a template exactly as the generator program does (for tests).
pub fn apply_random(frame: &mut [u8; SYN_FRAME_LEN], r: u32) {
    let k1 = (r & 0xffff) as u16;
    let k2 = (r >> 16) as u16;
    let put = |f: &mut [u8; SYN_FRAME_LEN], off: i16, v: u16| {
        let o = off as usize;
        f[o..o + 2].copy_from_slice(&v.to_ne_bytes());
    };
    put(frame, OFF_IP_SRC_LO, k1);
    put(frame, OFF_IP_ID, 0xffff - k1);
    put(frame, OFF_TCP_SPORT, k2);
    put(frame, OFF_TCP_SEQ_HI, 0xffff - k1);
    put(frame, OFF_TCP_SEQ_LO, 0xffff - k2);
}

fn syn_generator_insns(template: &[u8; SYN_FRAME_LEN]) -> Vec<Insn> {
    let mut p = vec![
        ldx_w(2, 1, 0), // r2 = ctx->data
        ldx_w(3, 1, 4), // r3 = ctx->data_end
        mov_reg(4, 2),
        add_imm(4, SYN_FRAME_LEN as i32),
    ];
    // if data + 60 > data_end goto drop (patched below)
    let bounds_at = p.len();
    p.push(jgt_reg(4, 3, 0));
    p.extend([
        mov_reg(6, 2),
        call(HELPER_GET_PRANDOM_U32),
        mov_reg(7, 0),
        and_imm(7, 0xffff), // k1
        mov_reg(8, 0),
        rsh_imm(8, 16),
        and_imm(8, 0xffff), // k2
        mov_imm(9, 0xffff),
        sub_reg(9, 7), // !k1
        mov_imm(5, 0xffff),
        sub_reg(5, 8), // !k2
    ]);
    for (i, chunk) in template.chunks(4).enumerate() {
        let word = i32::from_ne_bytes(chunk.try_into().expect("60 is a multiple of 4"));
        p.push(st_w(6, (i * 4) as i16, word));
    }
    p.extend([
        stx_h(6, 7, OFF_IP_SRC_LO),
        stx_h(6, 9, OFF_IP_ID),
        stx_h(6, 8, OFF_TCP_SPORT),
        stx_h(6, 9, OFF_TCP_SEQ_HI),
        stx_h(6, 5, OFF_TCP_SEQ_LO),
        mov_imm(0, XDP_TX),
        exit(),
    ]);
    let drop_at = p.len();
    p.extend([mov_imm(0, XDP_DROP), exit()]);
    p[bounds_at].off = (drop_at - bounds_at - 1) as i16;
    p
}

fn counter_insns(map_fd: i32) -> Vec<Insn> {
    let mut p = vec![st_w(10, -4, 0), mov_reg(2, 10), add_imm(2, -4)];
    p.extend(ld_map_fd(1, map_fd));
    p.extend([
        call(HELPER_MAP_LOOKUP_ELEM),
        jeq_imm(0, 0, 3),
        ldx_dw(1, 0, 0),
        add_imm(1, 1),
        stx_dw(0, 1, 0),
        mov_imm(0, XDP_DROP),
        exit(),
    ]);
    p
}

/// A loaded XDP program.
#[derive(Debug)]
pub struct Prog {
    fd: OwnedFd,
}

fn load_xdp(insns: &[Insn], name: &str) -> Result<Prog> {
    let code: Vec<u64> = insns.iter().map(|i| i.encode()).collect();
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = Attr::new();
    attr.u32(0, BPF_PROG_TYPE_XDP)
        .u32(4, code.len() as u32)
        .u64(8, code.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1)
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .u32(68, BPF_XDP);
    let n = name.as_bytes();
    let n = &n[..n.len().min(15)];
    attr.0[48..48 + n.len()].copy_from_slice(n);
    match sys_bpf(BPF_PROG_LOAD, &mut attr, "PROG_LOAD") {
        Ok(fd) => Ok(Prog { fd: fd_from(fd) }),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(BenchError::Other(format!(
                "{e}; verifier log: {}",
                String::from_utf8_lossy(&log[..end]).trim()
            )))
        }
    }
}

/// Loads the SYN generator for `template` (from [`syn_template`]).
pub fn syn_generator(template: &[u8; SYN_FRAME_LEN]) -> Result<Prog> {
    load_xdp(&syn_generator_insns(template), "lbb_syngen")
}

impl Prog {
    /// Runs the program `count` times on live frames initialised from `frame`, as if they
    /// arrived on `ingress_ifindex` (in the calling thread's network namespace): `XDP_TX`
    /// transmits each frame out of that interface. Returns the wall time of the call.
    pub fn run_live(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        count: u32,
    ) -> Result<std::time::Duration> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress.
        // The kernel wants data = 0 and data_end = the frame's length.
        let mut ctx = [0u32; 6];
        ctx[1] = frame.len() as u32;
        ctx[3] = ingress_ifindex;
        let mut attr = Attr::new();
        attr.u32(0, self.fd.as_raw_fd() as u32)
            .u32(8, frame.len() as u32)
            .u64(16, frame.as_ptr() as u64)
            .u32(32, count)
            .u32(40, std::mem::size_of_val(&ctx) as u32)
            .u64(48, ctx.as_ptr() as u64)
            .u32(64, BPF_F_TEST_XDP_LIVE_FRAMES)
            .u32(72, 64);
        let start = std::time::Instant::now();
        sys_bpf(BPF_PROG_TEST_RUN, &mut attr, "PROG_TEST_RUN (live frames)")?;
        Ok(start.elapsed())
    }

    /// One non-live test run: the XDP action and the output frame (for checking the
    /// generator's output).
    pub fn run_once(&self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut attr = Attr::new();
        attr.u32(0, self.fd.as_raw_fd() as u32)
            .u32(8, frame.len() as u32)
            .u32(12, out.len() as u32)
            .u64(16, frame.as_ptr() as u64)
            .u64(24, out.as_mut_ptr() as u64)
            .u32(32, 1);
        sys_bpf(BPF_PROG_TEST_RUN, &mut attr, "PROG_TEST_RUN")?;
        out.truncate(attr.get_u32(12) as usize);
        Ok((attr.get_u32(4), out))
    }

    /// Attaches the program to `ifindex` (in the calling thread's network namespace) through a
    /// bpf_link; the attachment lasts as long as the returned fd.
    pub fn attach(&self, ifindex: u32, xdp_flags: u32) -> Result<OwnedFd> {
        let mut attr = Attr::new();
        attr.u32(0, self.fd.as_raw_fd() as u32)
            .u32(4, ifindex)
            .u32(8, BPF_XDP)
            .u32(12, xdp_flags);
        Ok(fd_from(sys_bpf(BPF_LINK_CREATE, &mut attr, "LINK_CREATE")?))
    }
}

/// The counting XDP program and its per-CPU counter.
#[derive(Debug)]
pub struct Counter {
    /// The program.
    pub prog: Prog,
    map: OwnedFd,
    ncpus: usize,
}

fn possible_cpus() -> usize {
    // "/sys/devices/system/cpu/possible" reads like "0-1" or "0".
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split(',')
                .map(|r| r.rsplit('-').next().and_then(|n| n.parse::<usize>().ok()))
                .max()
                .flatten()
        })
        .map(|max| max + 1)
        .unwrap_or(1)
}

/// Creates the counter map and loads the program that counts and drops.
pub fn counter_drop() -> Result<Counter> {
    let mut attr = Attr::new();
    attr.u32(0, BPF_MAP_TYPE_PERCPU_ARRAY)
        .u32(4, 4)
        .u32(8, 8)
        .u32(12, 1);
    attr.0[28..28 + 9].copy_from_slice(b"lbb_count");
    let map = fd_from(sys_bpf(BPF_MAP_CREATE, &mut attr, "MAP_CREATE")?);
    let prog = load_xdp(&counter_insns(map.as_raw_fd()), "lbb_count")?;
    Ok(Counter {
        prog,
        map,
        ncpus: possible_cpus(),
    })
}

impl Counter {
    /// Frames counted so far (summed over CPUs).
    pub fn total(&self) -> Result<u64> {
        let key = 0u32;
        let mut values = vec![0u64; self.ncpus];
        let mut attr = Attr::new();
        attr.u32(0, self.map.as_raw_fd() as u32)
            .u64(8, &key as *const u32 as u64)
            .u64(16, values.as_mut_ptr() as u64);
        sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr, "MAP_LOOKUP_ELEM")?;
        Ok(values.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_checksums_ok(f: &[u8]) -> bool {
        let ip_ok = csum(be_words(&f[14..34])) == 0;
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&f[34..54]);
        ip_ok && csum(be_words(&pseudo)) == 0
    }

    #[test]
    fn random_fields_keep_checksums_valid() {
        let base = syn_template(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            [198, 18],
            std::net::Ipv4Addr::new(192, 0, 2, 10),
            80,
        );
        assert!(full_checksums_ok(&base));
        let mut seen = std::collections::HashSet::new();
        for r in [
            0u32,
            1,
            0xffff,
            0x1234_5678,
            0xdead_beef,
            u32::MAX,
            0x8000_0001,
        ] {
            let mut f = base;
            apply_random(&mut f, r);
            assert!(full_checksums_ok(&f), "bad checksum for r = {r:#x}");
            assert_eq!(&f[26..28], &[198, 18]);
            seen.insert((f[28], f[29], f[34], f[35]));
        }
        assert_eq!(seen.len(), 7, "every random value gives a distinct 4-tuple");
    }

    #[test]
    fn instructions_encode_like_the_kernel_expects() {
        // r0 = 3 ; exit
        assert_eq!(mov_imm(0, 3).encode(), 0x0000_0003_0000_00b7);
        assert_eq!(exit().encode(), 0x95);
        // *(u16 *)(r6 + 28) = r7
        assert_eq!(stx_h(6, 7, 28).encode(), 0x0000_0000_001c_766b);
        // if r4 > r3 goto +5
        assert_eq!(jgt_reg(4, 3, 5).encode(), 0x0000_0000_0005_342d);
    }
}
