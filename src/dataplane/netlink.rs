//! Netlink wire format and a `NETLINK_NETFILTER` socket, shared by the nftables and conntrack
//! code: `nlmsghdr`, `nfgenmsg` and attributes, host byte order for netlink's own fields and
//! network byte order for what netfilter carries, everything 4-byte aligned. The constants are
//! those of `linux/netlink.h` and `linux/netfilter/nfnetlink.h`.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// linux/netlink.h
pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;
pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_DUMP: u16 = 0x100 | 0x200; // NLM_F_ROOT | NLM_F_MATCH
pub const NLA_HDRLEN: usize = 4;
pub const NLA_F_NESTED: u16 = 1 << 15;
pub const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

// linux/netfilter/nfnetlink.h
pub const NFGENMSG_LEN: usize = 4;
pub const NFNETLINK_V0: u8 = 0;

/// Receive buffer. The kernel fills dump datagrams up to 32 KiB at most.
pub const RECV_BUFFER: usize = 64 * 1024;

/// A reply that does not come within this time is an error rather than a hang.
pub const RECV_TIMEOUT_SECS: libc::time_t = 30;

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Appends a message header and `nfgenmsg`; returns the message's offset for [`end_message`].
pub fn begin_message(
    buf: &mut Vec<u8>,
    msg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by end_message
    buf.extend_from_slice(&msg_type.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it in
    buf.extend_from_slice(&[family, NFNETLINK_V0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    start
}

pub fn end_message(buf: &mut [u8], start: usize) {
    let len = u32::try_from(buf.len() - start).expect("netlink message longer than 4 GiB");
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

pub fn put_attr(buf: &mut Vec<u8>, attr_type: u16, payload: &[u8]) {
    let len = u16::try_from(NLA_HDRLEN + payload.len()).expect("netlink attribute too long");
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&attr_type.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

/// Opens a nested attribute; returns its offset for [`end_nest`].
pub fn begin_nest(buf: &mut Vec<u8>, attr_type: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(attr_type | NLA_F_NESTED).to_ne_bytes());
    start
}

pub fn end_nest(buf: &mut [u8], start: usize) {
    let len = u16::try_from(buf.len() - start).expect("nested netlink attribute too long");
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// One netlink message of a datagram.
#[derive(Debug)]
pub struct Message<'a> {
    pub msg_type: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// The messages of a received datagram, in order; a malformed length ends with an error.
pub struct Messages<'a> {
    rest: &'a [u8],
}

pub fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages { rest: datagram }
}

impl<'a> Iterator for Messages<'a> {
    type Item = io::Result<Message<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = mem::take(&mut self.rest);
        if rest.len() < NLMSG_HDRLEN {
            return Some(Err(invalid(format!(
                "{} trailing bytes are not a netlink message",
                rest.len()
            ))));
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Some(Err(invalid(format!(
                "netlink message length {len} out of bounds ({} bytes left)",
                rest.len()
            ))));
        }
        let msg = Message {
            msg_type: u16::from_ne_bytes(rest[4..6].try_into().unwrap()),
            seq: u32::from_ne_bytes(rest[8..12].try_into().unwrap()),
            payload: &rest[NLMSG_HDRLEN..len],
        };
        self.rest = rest.get(align4(len)..).unwrap_or_default();
        Some(Ok(msg))
    }
}

/// The attributes in `buf`, as (type without flags, payload); a malformed length ends with an
/// error.
pub struct Attrs<'a> {
    rest: &'a [u8],
}

pub fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { rest: buf }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = io::Result<(u16, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = mem::take(&mut self.rest);
        if rest.len() < NLA_HDRLEN {
            return Some(Err(invalid(format!(
                "{} trailing bytes are not a netlink attribute",
                rest.len()
            ))));
        }
        let len = u16::from_ne_bytes(rest[0..2].try_into().unwrap()) as usize;
        let attr_type = u16::from_ne_bytes(rest[2..4].try_into().unwrap()) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > rest.len() {
            return Some(Err(invalid(format!(
                "netlink attribute {attr_type} has length {len} ({} bytes left)",
                rest.len()
            ))));
        }
        self.rest = rest.get(align4(len)..).unwrap_or_default();
        Some(Ok((attr_type, &rest[NLA_HDRLEN..len])))
    }
}

pub fn be16(payload: &[u8], what: &str) -> io::Result<u16> {
    payload
        .try_into()
        .map(u16::from_be_bytes)
        .map_err(|_| invalid(format!("{what} is {} bytes, expected 2", payload.len())))
}

pub fn be32(payload: &[u8], what: &str) -> io::Result<u32> {
    payload
        .try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| invalid(format!("{what} is {} bytes, expected 4", payload.len())))
}

pub fn be64(payload: &[u8], what: &str) -> io::Result<u64> {
    payload
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| invalid(format!("{what} is {} bytes, expected 8", payload.len())))
}

pub fn ipv4(payload: &[u8], what: &str) -> io::Result<Ipv4Addr> {
    be32(payload, what).map(Ipv4Addr::from)
}

/// The errno of an `NLMSG_ERROR` payload: 0 for an acknowledgement, positive otherwise.
pub fn parse_error(payload: &[u8]) -> io::Result<i32> {
    let bytes = payload
        .get(..4)
        .ok_or_else(|| invalid("NLMSG_ERROR shorter than its error code"))?;
    Ok(-i32::from_ne_bytes(bytes.try_into().unwrap()))
}

/// A `NETLINK_NETFILTER` socket, bound to the namespace of the thread that opened it.
pub struct Socket {
    fd: OwnedFd,
    pub seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    /// A `NETLINK_NETFILTER` socket (nftables, conntrack).
    pub fn open() -> io::Result<Self> {
        Self::open_protocol(libc::NETLINK_NETFILTER)
    }

    /// A `NETLINK_ROUTE` socket (addresses, links).
    pub fn open_route() -> io::Result<Self> {
        Self::open_protocol(libc::NETLINK_ROUTE)
    }

    fn open_protocol(protocol: libc::c_int) -> io::Result<Self> {
        // SAFETY: plain socket(2) call with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = kernel_address();
        // SAFETY: `addr` is a valid sockaddr_nl and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Error acknowledgements without a copy of the request: smaller acks, more per buffer.
        // Best effort; the kernel has supported it since 4.3.
        let one: libc::c_int = 1;
        // SAFETY: `one` is a c_int and the length passed is its size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_CAP_ACK,
                (&one as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let timeout = libc::timeval {
            tv_sec: RECV_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a timeval and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket {
            fd,
            // Any start works; distinct per socket makes traces easier to tell apart.
            seq: std::process::id().wrapping_mul(65_599) ^ 0x7072_6161,
            // Allocated at the first receive; kept sockets borrow a shared one instead (see
            // `sockets::with`), so that a thousand idle sockets hold no buffers.
            buf: Vec::new(),
        })
    }

    /// Moves the socket to a descriptor number of at least `min`, when the process may open
    /// one; otherwise it stays where it is.
    fn move_above(&mut self, min: libc::c_int) {
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor (or -1) and touches nothing else.
        let moved = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
        if moved >= 0 {
            // SAFETY: `moved` is a new descriptor that nothing else owns; the old one is closed
            // when replaced.
            self.fd = unsafe { OwnedFd::from_raw_fd(moved) };
        }
    }

    /// Raises the send buffer to at least `bytes`, so that one large batch (one transaction)
    /// fits in one datagram. SO_SNDBUFFORCE needs CAP_NET_ADMIN, which the dataplane has.
    pub fn reserve_send_buffer(&self, bytes: usize) -> io::Result<()> {
        let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        for option in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
            // SAFETY: `size` is a c_int and the length passed is its size.
            let rc = unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&size as *const libc::c_int).cast(),
                    mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                return Ok(());
            }
        }
        Err(io::Error::last_os_error())
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    pub fn send(&self, data: &[u8]) -> io::Result<()> {
        let addr = kernel_address();
        loop {
            // SAFETY: `data` is a valid buffer of the given length; `addr` is a valid
            // sockaddr_nl and the length passed is its size.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    0,
                    (&addr as *const libc::sockaddr_nl).cast(),
                    mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return if n as usize == data.len() {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "netlink request sent in part",
                    ))
                };
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Receives one datagram from the kernel.
    pub fn recv(&mut self) -> io::Result<&[u8]> {
        if self.buf.capacity() < RECV_BUFFER {
            // Not zeroed: the kernel writes what is read.
            self.buf = Vec::with_capacity(RECV_BUFFER);
        }
        loop {
            // SAFETY: sockaddr_nl is plain data, valid when zeroed.
            let mut from: libc::sockaddr_nl = unsafe { mem::zeroed() };
            let mut from_len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            let capacity = self.buf.capacity();
            // SAFETY: `self.buf` is writable for its capacity; `from` and `from_len` describe a
            // writable sockaddr_nl. MSG_TRUNC makes the call return the datagram's real length.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    capacity,
                    libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no answer from the kernel over netlink",
                        ))
                    }
                    _ => return Err(err),
                }
            }
            let n = n as usize;
            if n > capacity {
                return Err(invalid(format!(
                    "netlink datagram of {n} bytes does not fit the {capacity} byte buffer"
                )));
            }
            // SAFETY: the kernel wrote the first `n` bytes, and `n` is within the capacity.
            unsafe { self.buf.set_len(n) };
            if from.nl_pid != 0 {
                continue; // not from the kernel
            }
            return Ok(&self.buf[..n]);
        }
    }
}

/// The kernel's netlink address (pid 0, no multicast groups); binding to it lets the kernel
/// pick our port id.
pub fn kernel_address() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data, valid when zeroed.
    let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

/// Answers to acknowledged requests sent with consecutive sequence numbers, filled in as their
/// datagrams arrive: per request, 0 for success or the errno the kernel refused it with.
pub struct Acks {
    first_seq: u32,
    answered: Vec<bool>,
    pub pending: usize,
    pub errors: Vec<i32>,
}

impl Acks {
    pub fn new(first_seq: u32, count: usize) -> Self {
        Acks {
            first_seq,
            answered: vec![false; count],
            pending: count,
            errors: vec![0; count],
        }
    }

    /// Takes in the acknowledgements of one datagram; others' and duplicates are ignored.
    pub fn handle_datagram(&mut self, datagram: &[u8]) -> io::Result<()> {
        for msg in messages(datagram) {
            let msg = msg?;
            if msg.msg_type != NLMSG_ERROR {
                continue;
            }
            let index = msg.seq.wrapping_sub(self.first_seq) as usize;
            if index >= self.answered.len() || mem::replace(&mut self.answered[index], true) {
                continue;
            }
            self.pending -= 1;
            self.errors[index] = parse_error(msg.payload)?;
        }
        Ok(())
    }
}

/// Reads the answers to `count` acknowledged requests sent with consecutive sequence numbers
/// from `first_seq`: per request, 0 or the errno it was refused with.
pub fn read_acks(socket: &mut Socket, first_seq: u32, count: usize) -> io::Result<Vec<i32>> {
    let mut acks = Acks::new(first_seq, count);
    while acks.pending > 0 {
        acks.handle_datagram(socket.recv()?)?;
    }
    Ok(acks.errors)
}

/// Handles one datagram of the dump answering `seq`, handing every message that is not a
/// control message to `on_message`; returns whether the dump is complete.
pub fn dump_datagram(
    datagram: &[u8],
    seq: u32,
    on_message: &mut impl FnMut(&Message<'_>) -> io::Result<()>,
) -> io::Result<bool> {
    for msg in messages(datagram) {
        let msg = msg?;
        if msg.seq != seq {
            continue; // not ours (nothing else should be talking to this socket)
        }
        match msg.msg_type {
            NLMSG_NOOP => {}
            NLMSG_DONE => {
                // The payload of DONE is the dump's final status, negative on failure.
                return match msg.payload.get(..4).map(parse_error).transpose()? {
                    Some(errno) if errno > 0 => Err(io::Error::from_raw_os_error(errno)),
                    _ => Ok(true),
                };
            }
            NLMSG_ERROR => match parse_error(msg.payload)? {
                0 => {}
                errno => return Err(io::Error::from_raw_os_error(errno)),
            },
            NLMSG_OVERRUN => return Err(invalid("netlink overrun during a dump")),
            _ => on_message(&msg)?,
        }
    }
    Ok(false)
}

/// Sends a dump request and hands every answering message to `on_message` until the kernel
/// says the dump is done.
pub fn dump(
    socket: &mut Socket,
    request: &[u8],
    seq: u32,
    mut on_message: impl FnMut(&Message<'_>) -> io::Result<()>,
) -> io::Result<()> {
    socket.send(request)?;
    while !dump_datagram(socket.recv()?, seq, &mut on_message)? {}
    Ok(())
}

// linux/rtnetlink.h, linux/if_addr.h
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;

/// An IPv4 address of a device, as `ip addr` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// The address label: the device's name unless an alias label was given.
    pub label: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
}

/// The IPv4 addresses of every device in the namespace `socket` was opened in: one
/// `RTM_GETADDR` dump, as `ip -4 addr` makes.
pub fn ipv4_addresses(socket: &mut Socket) -> io::Result<Vec<InterfaceAddress>> {
    let seq = socket.next_seq();
    let mut request = Vec::with_capacity(NLMSG_HDRLEN + IFADDRMSG_LEN);
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&RTM_GETADDR.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&seq.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    // ifaddrmsg: family, prefix length, flags, scope, interface index (0: all).
    request.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    request.extend_from_slice(&0u32.to_ne_bytes());
    end_message(&mut request, 0);
    let mut found = vec![];
    dump(socket, &request, seq, |msg| {
        if msg.msg_type != RTM_NEWADDR {
            return Ok(());
        }
        if let Some(address) = parse_address(msg.payload)? {
            found.push(address);
        }
        Ok(())
    })?;
    Ok(found)
}

/// One `RTM_NEWADDR` payload (`ifaddrmsg` and attributes); `None` for another family.
fn parse_address(payload: &[u8]) -> io::Result<Option<InterfaceAddress>> {
    let header = payload
        .get(..IFADDRMSG_LEN)
        .ok_or_else(|| invalid("short ifaddrmsg"))?;
    if header[0] != libc::AF_INET as u8 {
        return Ok(None);
    }
    let (mut local, mut address, mut label) = (None, None, None);
    for attr in attrs(&payload[IFADDRMSG_LEN..]) {
        let (attr_type, value) = attr?;
        match attr_type {
            IFA_LOCAL => local = Some(ipv4(value, "IFA_LOCAL")?),
            IFA_ADDRESS => address = Some(ipv4(value, "IFA_ADDRESS")?),
            IFA_LABEL => {
                let name = value.split(|b| *b == 0).next().unwrap_or_default();
                label = Some(String::from_utf8_lossy(name).into_owned());
            }
            _ => {}
        }
    }
    // IFA_LOCAL is the device's own address; IFA_ADDRESS is the peer on point-to-point links.
    let Some(ip) = local.or(address) else {
        return Ok(None);
    };
    Ok(Some(InterfaceAddress {
        label: label.unwrap_or_default(),
        ip,
        prefix_len: header[1],
    }))
}

/// One open `NETLINK_NETFILTER` socket per namespace, kept for the life of the process.
///
/// Why keep them: a socket is bound to the namespace it was opened in, so a kept socket needs no
/// thread switch into the namespace; and closing a netfilter socket makes nf_tables wait for the
/// destruction of whatever the last transactions deleted (an RCU grace period, 10-20 ms here),
/// which would otherwise be paid by every change that removes a forward.
///
/// A namespace deleted and created again under the same name is a different namespace: the
/// cached socket remembers the inode of the namespace it belongs to and is replaced when the
/// name points elsewhere.
///
/// A node with a thousand routers keeps a thousand sockets: the process raises its soft limit
/// of open files to the hard one (systemd's default soft limit is 1,024), and the kept sockets
/// are moved to descriptors from 1,024 up, because libnftables waits on its own socket with
/// `select(2)`, which cannot watch a descriptor above 1,023 (glibc aborts the process).
pub mod sockets {
    use std::collections::HashMap;
    use std::io;
    use std::sync::{Arc, Mutex, OnceLock};

    use super::Socket;
    use crate::dataplane::{netns, DataplaneError, RouterNamespace};

    struct Cached {
        inode: u64,
        socket: Socket,
    }

    type Slot = Arc<Mutex<Option<Cached>>>;

    /// Where kept sockets go: above what `select(2)` can watch (`FD_SETSIZE`).
    const KEPT_FROM: libc::c_int = 1024;

    fn cache() -> &'static Mutex<HashMap<String, Slot>> {
        static CACHE: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();
        CACHE.get_or_init(|| {
            raise_open_files_limit();
            Default::default()
        })
    }

    /// Raises the soft limit of open files to the hard limit.
    fn raise_open_files_limit() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) if soft < hard => {
                if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    tracing::warn!(soft, hard, error = %e, "cannot raise the limit of open files");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the limit of open files"),
        }
    }

    /// Runs `f` with the namespace's socket, opening it first if needed. Calls for one
    /// namespace are serialized. After an error from `f` the socket is dropped (it may hold
    /// unread answers), and the next call opens a new one.
    pub fn with<R>(
        namespace: &RouterNamespace,
        f: impl FnOnce(&mut Socket) -> io::Result<R>,
    ) -> Result<io::Result<R>, DataplaneError> {
        let inode = netns::inode(namespace)?;
        let slot = cache()
            .lock()
            .unwrap()
            .entry(namespace.name().to_string())
            .or_default()
            .clone();
        let mut cached = slot.lock().unwrap_or_else(|p| p.into_inner());
        if cached.as_ref().is_none_or(|c| c.inode != inode) {
            *cached = None;
            let mut socket = match netns::run_in(namespace, Socket::open)? {
                Ok(socket) => socket,
                Err(e) => return Ok(Err(e)),
            };
            socket.move_above(KEPT_FROM);
            *cached = Some(Cached { inode, socket });
        }
        let socket = &mut cached.as_mut().expect("socket just opened").socket;
        // A receive buffer lent for this call only: idle kept sockets hold none.
        socket.buf = buffers().lock().unwrap().pop().unwrap_or_default();
        let result = f(socket);
        let buf = std::mem::take(&mut socket.buf);
        if buf.capacity() > 0 {
            buffers().lock().unwrap().push(buf);
        }
        if result.is_err() {
            *cached = None;
        }
        Ok(result)
    }

    /// Receive buffers for kept sockets, as many as were ever in use at once.
    fn buffers() -> &'static Mutex<Vec<Vec<u8>>> {
        static BUFFERS: OnceLock<Mutex<Vec<Vec<u8>>>> = OnceLock::new();
        BUFFERS.get_or_init(Default::default)
    }

    /// Closes the namespace's socket, when its router is gone.
    pub fn forget(namespace: &RouterNamespace) {
        cache().lock().unwrap().remove(namespace.name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_message_gives_the_label_the_address_and_the_prefix() {
        let mut payload = vec![libc::AF_INET as u8, 24, 0, 0];
        payload.extend_from_slice(&7u32.to_ne_bytes());
        put_attr(&mut payload, IFA_ADDRESS, &[203, 0, 113, 10]);
        put_attr(&mut payload, IFA_LOCAL, &[203, 0, 113, 10]);
        put_attr(&mut payload, IFA_LABEL, b"qg-1234\0");
        assert_eq!(
            parse_address(&payload).unwrap(),
            Some(InterfaceAddress {
                label: "qg-1234".into(),
                ip: Ipv4Addr::new(203, 0, 113, 10),
                prefix_len: 24,
            })
        );
        let mut inet6 = vec![libc::AF_INET6 as u8, 64, 0, 0];
        inet6.extend_from_slice(&7u32.to_ne_bytes());
        assert_eq!(parse_address(&inet6).unwrap(), None);
        assert!(parse_address(&[2, 24]).is_err());
    }
}
