//! Conntrack cleanup for removed and re-pointed forwards, in-process over ctnetlink.
//!
//! Deleting a DNAT element does nothing to the connections it already translated: conntrack
//! keeps translating their packets to the old target for as long as the entry lives (five days
//! for an established TCP flow by default, forever for a flow that keeps sending). That is
//! OSSN-0020 ("Disassociating floating IPs does not terminate NAT connections"), and it applies
//! to port forwards as much as to floating IPs: whoever was connected through a mapping stays
//! connected to the old VM after the mapping was deleted or re-pointed. So once the rules are
//! gone, [`Conntrack`] deletes the entries they created.
//!
//! An entry belongs to a stale forward `(gateway, protocol, port) -> (ip, port)` when its
//! original tuple is addressed to `gateway:port` over `protocol` **and** its reply tuple comes
//! from the target `ip:port`. Checking the reply side is what makes the flow ours: a flow to the
//! same external port that was translated elsewhere (after a re-point, to the new target) or not
//! at all is left alone.
//!
//! The method is the one proposed for kube-proxy (kubernetes/kubernetes#135399): per call, ONE dump of the
//! namespace's IPv4 conntrack table, matched in user space against a hash set built from the
//! stale forwards, then one `IPCTNL_MSG_CT_DELETE` per match carrying the entry's original tuple
//! (and its zone and id, so that exactly the dumped entry goes), sent in batches whose
//! acknowledgements are read back. The cost is one table walk however many forwards went stale,
//! where `conntrack -D` per forward walks the table once per forward and spawns a process each
//! time. An entry that is gone by the time its delete arrives (`ENOENT`) is not an error.
//! A dump walks every bucket of the conntrack hash, which all namespaces share: on a test VM
//! with 262,144 buckets it costs ~12 ms for an empty table and ~50 ms for 10,000 entries, almost
//! all of it in the kernel; deleting 1,000 of them adds a few ms.
//! It uses the namespace's kept netfilter socket ([`super::netlink::sockets`]): no thread
//! switch into the namespace, and no close that would wait for nf_tables' deferred destruction.
//!
//! The netlink encoding is done here by hand; it is small: `nlmsghdr`, `nfgenmsg` and
//! attributes (host byte order for netlink's own fields, network byte order for addresses,
//! ports, zones and ids, everything 4-byte aligned). The constants are those of
//! `linux/netlink.h`, `linux/netfilter/nfnetlink.h` and `linux/netfilter/nfnetlink_conntrack.h`.

use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;
use std::time::Instant;

use tracing::debug;

use super::netlink::{self, *};
use super::sync::FlowCleaner;
use super::{DataplaneError, ExternalKey, RouterNamespace, Target};

/// Deletes the conntrack entries of stale forwards through ctnetlink, inside the router
/// namespace, over the namespace's kept netfilter socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct Conntrack;

impl FlowCleaner for Conntrack {
    fn delete_flows(
        &self,
        namespace: &RouterNamespace,
        stale: &[(ExternalKey, Target)],
    ) -> Result<usize, DataplaneError> {
        if stale.is_empty() {
            return Ok(0);
        }
        let wanted: HashSet<FlowKey> = stale
            .iter()
            .map(|(key, target)| FlowKey::of_forward(key, target))
            .collect();
        let started = Instant::now();
        let stats =
            sockets::with(namespace, |socket| clean(socket, &wanted))?.map_err(|source| {
                DataplaneError::Conntrack {
                    namespace: namespace.to_string(),
                    source,
                }
            })?;
        debug!(
            %namespace,
            forwards = wanted.len(),
            dumped = stats.dumped,
            matched = stats.matched,
            deleted = stats.deleted,
            already_gone = stats.already_gone,
            elapsed_us = started.elapsed().as_micros() as u64,
            "conntrack cleanup"
        );
        Ok(stats.deleted)
    }
}

/// What one cleanup did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct CleanupStats {
    /// IPv4 entries with ports in the dump.
    dumped: usize,
    /// Entries that belonged to a stale forward.
    matched: usize,
    /// Entries the kernel deleted on our request.
    deleted: usize,
    /// Entries that were gone by the time their delete arrived.
    already_gone: usize,
}

/// Dumps the conntrack table of the socket's namespace and deletes the entries that `wanted`
/// selects.
fn clean(socket: &mut Socket, wanted: &HashSet<FlowKey>) -> io::Result<CleanupStats> {
    let mut stats = CleanupStats::default();
    let mut matches = Vec::new();
    socket.dump(|entry| {
        stats.dumped += 1;
        if wanted.contains(&FlowKey::of_entry(&entry)) {
            matches.push(entry);
        }
    })?;
    stats.matched = matches.len();
    let (deleted, already_gone) = socket.delete(&matches)?;
    stats.deleted = deleted;
    stats.already_gone = already_gone;
    Ok(stats)
}

// ------------------------------------------------------------------------------------------
// Matching
// ------------------------------------------------------------------------------------------

/// What identifies the flows of one forward: where the client sent the packet (original
/// destination) and who answers (reply source, i.e. the DNAT target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    orig_dst: Ipv4Addr,
    protocol: u8,
    orig_dst_port: u16,
    reply_src: Ipv4Addr,
    reply_src_port: u16,
}

impl FlowKey {
    fn of_forward(key: &ExternalKey, target: &Target) -> Self {
        FlowKey {
            orig_dst: key.ip,
            protocol: key.protocol.number(),
            orig_dst_port: key.port,
            reply_src: target.ip,
            reply_src_port: target.port,
        }
    }

    fn of_entry(entry: &Entry) -> Self {
        FlowKey {
            orig_dst: entry.orig.dst,
            protocol: entry.orig.protocol,
            orig_dst_port: entry.orig.dst_port,
            reply_src: entry.reply.src,
            reply_src_port: entry.reply.src_port,
        }
    }
}

/// One direction of an IPv4 conntrack entry with ports (TCP, UDP, SCTP, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tuple {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    src_port: u16,
    dst_port: u16,
}

/// A conntrack entry as far as cleanup cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    orig: Tuple,
    reply: Tuple,
    /// `CTA_TUPLE_ZONE` of the original tuple (a zone that applies to that direction only).
    orig_zone: Option<u16>,
    /// `CTA_ZONE`: the entry's zone when it applies to both directions and is not zone 0.
    zone: Option<u16>,
    /// `CTA_ID`: the kernel's id of the entry, so a delete cannot hit a newer entry that took
    /// over the same tuple after the dump.
    id: Option<u32>,
}

// ------------------------------------------------------------------------------------------
// Wire format
// ------------------------------------------------------------------------------------------

const NFNL_SUBSYS_CTNETLINK: u16 = 1;

// linux/netfilter/nfnetlink_conntrack.h
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_TUPLE_ZONE: u16 = 3;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const AF_INET: u8 = libc::AF_INET as u8;

/// Deletes sent per `sendto`. Every one is acknowledged, and the acknowledgements of a batch
/// queue up in the socket before we read them: kept well below what the default receive buffer
/// (208 KiB, roughly 1 KiB of accounting per acknowledgement) holds, so none is dropped.
const DELETE_BATCH: usize = 100;

fn ctnetlink_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg
}

/// Appends the request for a dump of the IPv4 conntrack table.
fn encode_dump_request(buf: &mut Vec<u8>, seq: u32) {
    let start = begin_message(
        buf,
        ctnetlink_type(IPCTNL_MSG_CT_GET),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        AF_INET,
        0,
    );
    end_message(buf, start);
}

/// Appends a delete of `entry`, identified by its original tuple (plus zone and id when the
/// dump carried them), asking for an acknowledgement.
fn encode_delete(buf: &mut Vec<u8>, seq: u32, entry: &Entry) {
    let start = begin_message(
        buf,
        ctnetlink_type(IPCTNL_MSG_CT_DELETE),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        AF_INET,
        0,
    );
    let orig = begin_nest(buf, CTA_TUPLE_ORIG);
    let ip = begin_nest(buf, CTA_TUPLE_IP);
    put_attr(buf, CTA_IP_V4_SRC, &entry.orig.src.octets());
    put_attr(buf, CTA_IP_V4_DST, &entry.orig.dst.octets());
    end_nest(buf, ip);
    let proto = begin_nest(buf, CTA_TUPLE_PROTO);
    put_attr(buf, CTA_PROTO_NUM, &[entry.orig.protocol]);
    put_attr(buf, CTA_PROTO_SRC_PORT, &entry.orig.src_port.to_be_bytes());
    put_attr(buf, CTA_PROTO_DST_PORT, &entry.orig.dst_port.to_be_bytes());
    end_nest(buf, proto);
    if let Some(zone) = entry.orig_zone {
        put_attr(buf, CTA_TUPLE_ZONE, &zone.to_be_bytes());
    }
    end_nest(buf, orig);
    if let Some(zone) = entry.zone {
        put_attr(buf, CTA_ZONE, &zone.to_be_bytes());
    }
    if let Some(id) = entry.id {
        put_attr(buf, CTA_ID, &id.to_be_bytes());
    }
    end_message(buf, start);
}

/// A parsed `CTA_TUPLE_*` nest: `None` for what cleanup does not handle (IPv6, protocols
/// without ports such as ICMP).
fn parse_tuple(buf: &[u8]) -> io::Result<(Option<Tuple>, Option<u16>)> {
    let (mut src, mut dst, mut protocol, mut src_port, mut dst_port, mut zone) =
        (None, None, None, None, None, None);
    for attr in attrs(buf) {
        let (attr_type, payload) = attr?;
        match attr_type {
            CTA_TUPLE_IP => {
                for attr in attrs(payload) {
                    let (attr_type, payload) = attr?;
                    match attr_type {
                        CTA_IP_V4_SRC => src = Some(ipv4(payload, "CTA_IP_V4_SRC")?),
                        CTA_IP_V4_DST => dst = Some(ipv4(payload, "CTA_IP_V4_DST")?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for attr in attrs(payload) {
                    let (attr_type, payload) = attr?;
                    match attr_type {
                        CTA_PROTO_NUM => match payload {
                            [n] => protocol = Some(*n),
                            _ => return Err(invalid("CTA_PROTO_NUM is not one byte")),
                        },
                        CTA_PROTO_SRC_PORT => src_port = Some(be16(payload, "CTA_PROTO_SRC_PORT")?),
                        CTA_PROTO_DST_PORT => dst_port = Some(be16(payload, "CTA_PROTO_DST_PORT")?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_ZONE => zone = Some(be16(payload, "CTA_TUPLE_ZONE")?),
            _ => {}
        }
    }
    let tuple = match (src, dst, protocol, src_port, dst_port) {
        (Some(src), Some(dst), Some(protocol), Some(src_port), Some(dst_port)) => Some(Tuple {
            src,
            dst,
            protocol,
            src_port,
            dst_port,
        }),
        _ => None,
    };
    Ok((tuple, zone))
}

/// Parses the payload (`nfgenmsg` and attributes) of one dumped entry; `None` for an entry
/// cleanup does not handle.
fn parse_entry(payload: &[u8]) -> io::Result<Option<Entry>> {
    let Some(attributes) = payload.get(NFGENMSG_LEN..) else {
        return Err(invalid("conntrack message shorter than nfgenmsg"));
    };
    if payload[0] != AF_INET {
        return Ok(None);
    }
    let (mut orig, mut orig_zone, mut reply, mut zone, mut id) = (None, None, None, None, None);
    for attr in attrs(attributes) {
        let (attr_type, payload) = attr?;
        match attr_type {
            CTA_TUPLE_ORIG => (orig, orig_zone) = parse_tuple(payload)?,
            CTA_TUPLE_REPLY => reply = parse_tuple(payload)?.0,
            CTA_ZONE => zone = Some(be16(payload, "CTA_ZONE")?),
            CTA_ID => id = Some(be32(payload, "CTA_ID")?),
            _ => {}
        }
    }
    Ok(match (orig, reply) {
        (Some(orig), Some(reply)) => Some(Entry {
            orig,
            reply,
            orig_zone,
            zone,
            id,
        }),
        _ => None,
    })
}

/// Hands the entries of one dump message to `on_entry` (those cleanup handles).
fn on_dump_message(msg: &Message<'_>, on_entry: &mut impl FnMut(Entry)) -> io::Result<()> {
    if let Some(entry) = parse_entry(msg.payload)? {
        on_entry(entry);
    }
    Ok(())
}

/// The conntrack requests, on the shared netlink socket.
impl Socket {
    /// Dumps the IPv4 conntrack table, handing every entry with ports to `on_entry`.
    fn dump(&mut self, mut on_entry: impl FnMut(Entry)) -> io::Result<()> {
        let seq = self.next_seq();
        let mut request = Vec::with_capacity(NLMSG_HDRLEN + NFGENMSG_LEN);
        encode_dump_request(&mut request, seq);
        netlink::dump(self, &request, seq, |msg| {
            on_dump_message(msg, &mut on_entry)
        })
    }

    /// Deletes `entries` in batches; returns (deleted, already gone). Every batch is sent even
    /// when one delete fails; the first failure is returned at the end.
    fn delete(&mut self, entries: &[Entry]) -> io::Result<(usize, usize)> {
        let (mut deleted, mut already_gone, mut first_error) = (0, 0, None);
        let mut request = Vec::new();
        for batch in entries.chunks(DELETE_BATCH) {
            request.clear();
            let first_seq = self.seq.wrapping_add(1);
            for entry in batch {
                let seq = self.next_seq();
                encode_delete(&mut request, seq, entry);
            }
            self.send(&request)?;
            for errno in netlink::read_acks(self, first_seq, batch.len())? {
                match errno {
                    0 => deleted += 1,
                    libc::ENOENT => already_gone += 1,
                    errno => {
                        first_error.get_or_insert(errno);
                    }
                }
            }
        }
        match first_error {
            None => Ok((deleted, already_gone)),
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::Protocol;

    fn tuple(src: &str, dst: &str, protocol: u8, src_port: u16, dst_port: u16) -> Tuple {
        Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol,
            src_port,
            dst_port,
        }
    }

    /// The flow of the brief: 198.51.100.2:40000 -> 203.0.113.10:4000/tcp, DNATed to
    /// 10.0.0.5:22.
    fn dnat_entry() -> Entry {
        Entry {
            orig: tuple("198.51.100.2", "203.0.113.10", 6, 40000, 4000),
            reply: tuple("10.0.0.5", "198.51.100.2", 6, 22, 40000),
            orig_zone: None,
            zone: None,
            id: None,
        }
    }

    fn forward(gw: &str, protocol: Protocol, port: u16, ip: &str, to: u16) -> FlowKey {
        FlowKey::of_forward(
            &ExternalKey {
                ip: gw.parse().unwrap(),
                protocol,
                port,
            },
            &Target {
                ip: ip.parse().unwrap(),
                port: to,
            },
        )
    }

    #[test]
    fn constants_match_the_uapi_headers() {
        assert_eq!(ctnetlink_type(IPCTNL_MSG_CT_GET), 0x0101);
        assert_eq!(ctnetlink_type(IPCTNL_MSG_CT_DELETE), 0x0102);
        assert_eq!(NLM_F_DUMP, libc::NLM_F_DUMP as u16);
        assert_eq!(NLM_F_ACK, libc::NLM_F_ACK as u16);
        assert_eq!(NLMSG_DONE, libc::NLMSG_DONE as u16);
        assert_eq!(NLMSG_ERROR, libc::NLMSG_ERROR as u16);
        assert_eq!(NLA_F_NESTED, libc::NLA_F_NESTED as u16);
        assert_eq!(NLA_TYPE_MASK, 0x3fff);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn a_delete_is_encoded_byte_for_byte() {
        let mut buf = Vec::new();
        encode_delete(&mut buf, 7, &dnat_entry());
        #[rustfmt::skip]
        let expected: &[u8] = &[
            // nlmsghdr: len 72, type 0x0102 (CTNETLINK << 8 | CT_DELETE), REQUEST|ACK, seq 7, pid 0
            72, 0, 0, 0,  0x02, 0x01,  0x05, 0x00,  7, 0, 0, 0,  0, 0, 0, 0,
            // nfgenmsg: AF_INET, NFNETLINK_V0, res_id 0
            2, 0, 0, 0,
            // CTA_TUPLE_ORIG | NLA_F_NESTED, len 52
            52, 0, 0x01, 0x80,
            //   CTA_TUPLE_IP | NLA_F_NESTED, len 20
                 20, 0, 0x01, 0x80,
            //     CTA_IP_V4_SRC 198.51.100.2, CTA_IP_V4_DST 203.0.113.10
                   8, 0, 1, 0,  198, 51, 100, 2,
                   8, 0, 2, 0,  203, 0, 113, 10,
            //   CTA_TUPLE_PROTO | NLA_F_NESTED, len 28
                 28, 0, 0x02, 0x80,
            //     CTA_PROTO_NUM 6 (len 5, padded), SRC_PORT 40000 (0x9c40), DST_PORT 4000 (0x0fa0)
                   5, 0, 1, 0,  6, 0, 0, 0,
                   6, 0, 2, 0,  0x9c, 0x40, 0, 0,
                   6, 0, 3, 0,  0x0f, 0xa0, 0, 0,
        ];
        assert_eq!(buf, expected);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn a_delete_carries_zones_and_id_when_the_dump_had_them() {
        let entry = Entry {
            orig_zone: Some(7),
            zone: Some(5),
            id: Some(0x0102_0304),
            ..dnat_entry()
        };
        let mut buf = Vec::new();
        encode_delete(&mut buf, 1, &entry);
        assert_eq!(buf.len(), 72 + 8 + 8 + 8);
        assert_eq!(&buf[0..4], &[96, 0, 0, 0]);
        // The orig nest grew by CTA_TUPLE_ZONE.
        assert_eq!(&buf[20..24], &[60, 0, 0x01, 0x80]);
        #[rustfmt::skip]
        let tail: &[u8] = &[
            6, 0, 3, 0,  0, 7, 0, 0,            // CTA_TUPLE_ZONE 7 (be16), inside the orig nest
            6, 0, 18, 0,  0, 5, 0, 0,           // CTA_ZONE 5 (be16)
            8, 0, 12, 0,  1, 2, 3, 4,           // CTA_ID (be32)
        ];
        assert_eq!(&buf[72..], tail);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn the_dump_request_is_a_bare_ipv4_get() {
        let mut buf = Vec::new();
        encode_dump_request(&mut buf, 0x0a0b_0c0d);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            20, 0, 0, 0,  0x01, 0x01,  0x01, 0x03,  0x0d, 0x0c, 0x0b, 0x0a,  0, 0, 0, 0,
            2, 0, 0, 0,
        ];
        assert_eq!(buf, expected);
    }

    /// A datagram as the kernel sends it for a dump with sequence number 42: a DNATed TCP
    /// entry with the attributes ctnetlink adds around the tuples, an ICMP entry (no ports,
    /// skipped), then NLMSG_DONE.
    #[cfg(target_endian = "little")]
    #[rustfmt::skip]
    fn dump_datagram() -> Vec<u8> {
        let tcp: &[u8] = &[
            // nlmsghdr: len 172, type 0x0100 (CT_NEW), NLM_F_MULTI, seq 42, pid 1234
            172, 0, 0, 0,  0x00, 0x01,  0x02, 0x00,  42, 0, 0, 0,  0xd2, 0x04, 0, 0,
            2, 0, 0, 0,
            // CTA_TUPLE_ORIG (nested, len 52)
            52, 0, 0x01, 0x80,
                20, 0, 0x01, 0x80,
                    8, 0, 1, 0,  198, 51, 100, 2,
                    8, 0, 2, 0,  203, 0, 113, 10,
                28, 0, 0x02, 0x80,
                    5, 0, 1, 0,  6, 0, 0, 0,
                    6, 0, 2, 0,  0x9c, 0x40, 0, 0,
                    6, 0, 3, 0,  0x0f, 0xa0, 0, 0,
            // CTA_TUPLE_REPLY (nested, len 52), with CTA_TUPLE_IP after CTA_TUPLE_PROTO
            52, 0, 0x02, 0x80,
                28, 0, 0x02, 0x80,
                    5, 0, 1, 0,  6, 0, 0, 0,
                    6, 0, 2, 0,  0, 22, 0, 0,
                    6, 0, 3, 0,  0x9c, 0x40, 0, 0,
                20, 0, 0x01, 0x80,
                    8, 0, 1, 0,  10, 0, 0, 5,
                    8, 0, 2, 0,  198, 51, 100, 2,
            // CTA_STATUS (be32)
            8, 0, 3, 0,  0, 0, 0, 0x8e,
            // CTA_PROTOINFO (nested) { CTA_PROTOINFO_TCP (nested) { STATE 3 } }
            16, 0, 0x04, 0x80,
                12, 0, 0x01, 0x80,
                    5, 0, 1, 0,  3, 0, 0, 0,
            // CTA_TIMEOUT, CTA_ID 0xdeadbeef, CTA_ZONE 5
            8, 0, 7, 0,  0, 0, 1, 0x2c,
            8, 0, 12, 0,  0xde, 0xad, 0xbe, 0xef,
            6, 0, 18, 0,  0, 5, 0, 0,
        ];
        assert_eq!(tcp.len(), 172);
        let icmp: &[u8] = &[
            // nlmsghdr: len 88
            88, 0, 0, 0,  0x00, 0x01,  0x02, 0x00,  42, 0, 0, 0,  0xd2, 0x04, 0, 0,
            2, 0, 0, 0,
            // CTA_TUPLE_ORIG { IP { src, dst }, PROTO { NUM 1, ICMP_ID 7, TYPE 8, CODE 0 } }
            52, 0, 0x01, 0x80,
                20, 0, 0x01, 0x80,
                    8, 0, 1, 0,  198, 51, 100, 2,
                    8, 0, 2, 0,  203, 0, 113, 10,
                28, 0, 0x02, 0x80,
                    5, 0, 1, 0,  1, 0, 0, 0,
                    6, 0, 4, 0,  0, 7, 0, 0,
                    5, 0, 5, 0,  8, 0, 0, 0,
            // CTA_TUPLE_REPLY (just the IP part, enough to be skipped)
            16, 0, 0x02, 0x80,
                12, 0, 0x01, 0x80,
                    8, 0, 1, 0,  203, 0, 113, 10,
        ];
        assert_eq!(icmp.len(), 88);
        let done: &[u8] = &[
            20, 0, 0, 0,  0x03, 0x00,  0x02, 0x00,  42, 0, 0, 0,  0xd2, 0x04, 0, 0,
            0, 0, 0, 0,
        ];
        [tcp, icmp, done].concat()
    }

    /// One datagram of a conntrack dump through the shared dump handling.
    fn parse_dump(datagram: &[u8], seq: u32, on_entry: &mut impl FnMut(Entry)) -> io::Result<bool> {
        netlink::dump_datagram(datagram, seq, &mut |msg| on_dump_message(msg, on_entry))
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn a_dump_datagram_is_parsed_into_entries() {
        let mut entries = Vec::new();
        let done = parse_dump(&dump_datagram(), 42, &mut |e| entries.push(e)).unwrap();
        assert!(done);
        assert_eq!(
            entries,
            vec![Entry {
                zone: Some(5),
                id: Some(0xdead_beef),
                ..dnat_entry()
            }]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn a_dump_continues_until_done_and_ignores_other_sequence_numbers() {
        let datagram = dump_datagram();
        let without_done = &datagram[..datagram.len() - 20];
        let mut count = 0;
        assert!(!parse_dump(without_done, 42, &mut |_| count += 1).unwrap());
        assert_eq!(count, 1);
        assert!(!parse_dump(&datagram, 43, &mut |_| count += 1).unwrap());
        assert_eq!(count, 1);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn malformed_lengths_are_errors_not_panics() {
        let datagram = dump_datagram();
        for cut in [3, 17, 25, 100, 159] {
            // A message whose length cuts through its header or attributes.
            let mut truncated = datagram[..172].to_vec();
            truncated[0] = cut as u8;
            truncated.truncate(cut.max(NLMSG_HDRLEN));
            assert!(parse_dump(&truncated, 42, &mut |_| {}).is_err(), "{cut}");
        }
        let mut bad = datagram.clone();
        bad[20] = 200; // CTA_TUPLE_ORIG claims more than the message holds
        assert!(parse_dump(&bad, 42, &mut |_| {}).is_err());
        let mut bad = datagram;
        bad[0] = 10; // shorter than a header
        assert!(parse_dump(&bad, 42, &mut |_| {}).is_err());
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn dump_errors_are_reported() {
        #[rustfmt::skip]
        let eperm: &[u8] = &[
            36, 0, 0, 0,  0x02, 0x00,  0x00, 0x01,  42, 0, 0, 0,  0, 0, 0, 0,
            0xff, 0xff, 0xff, 0xff, // -EPERM
            20, 0, 0, 0,  0x01, 0x01,  0x01, 0x03,  42, 0, 0, 0,  0, 0, 0, 0,
        ];
        let err = parse_dump(eperm, 42, &mut |_| {}).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn acks_are_matched_by_sequence_number() {
        let ack = |seq: u32, error: i32| -> Vec<u8> {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m.extend_from_slice(&0x100u16.to_ne_bytes()); // NLM_F_CAPPED
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&error.to_ne_bytes());
            m.extend_from_slice(&[0; 16]); // the request's header
            m
        };
        let mut acks = Acks::new(u32::MAX, 4); // sequence numbers wrap: MAX, 0, 1, 2
        let datagram = [
            ack(u32::MAX, 0),
            ack(0, -libc::ENOENT),
            ack(0, 0), // duplicate: ignored
            ack(5, 0), // not this batch: ignored
            ack(1, -libc::EPERM),
        ]
        .concat();
        acks.handle_datagram(&datagram).unwrap();
        assert_eq!(acks.pending, 1);
        acks.handle_datagram(&ack(2, 0)).unwrap();
        assert_eq!(acks.pending, 0);
        assert_eq!(acks.errors, vec![0, libc::ENOENT, libc::EPERM, 0]);
    }

    #[test]
    fn a_flow_matches_only_with_its_reply_side() {
        let wanted: HashSet<FlowKey> = [
            forward("203.0.113.10", Protocol::Tcp, 4000, "10.0.0.5", 22),
            forward("203.0.113.10", Protocol::Udp, 5000, "10.0.0.9", 53),
        ]
        .into_iter()
        .collect();
        let matches = |e: Entry| wanted.contains(&FlowKey::of_entry(&e));

        assert!(matches(dnat_entry()));
        // Same original destination, answered by another VM (the re-pointed forward).
        let mut other_target = dnat_entry();
        other_target.reply.src = "10.0.0.7".parse().unwrap();
        assert!(!matches(other_target));
        // Same VM, other port.
        let mut other_port = dnat_entry();
        other_port.reply.src_port = 2222;
        assert!(!matches(other_port));
        // Not translated at all: the router itself answers.
        let mut untranslated = dnat_entry();
        untranslated.reply.src = untranslated.orig.dst;
        untranslated.reply.src_port = untranslated.orig.dst_port;
        assert!(!matches(untranslated));
        // Another external port or protocol.
        let mut other_dport = dnat_entry();
        other_dport.orig.dst_port = 4001;
        assert!(!matches(other_dport));
        let mut udp = dnat_entry();
        udp.orig.protocol = 17;
        udp.reply.protocol = 17;
        assert!(!matches(udp));
        // The client side does not matter: any client, any zone, any id.
        let mut other_client = dnat_entry();
        other_client.orig.src = "192.0.2.1".parse().unwrap();
        other_client.orig.src_port = 1;
        other_client.reply.dst = "192.0.2.1".parse().unwrap();
        other_client.zone = Some(3);
        other_client.id = Some(9);
        assert!(matches(other_client));
    }

    #[test]
    fn no_stale_forwards_is_a_no_op_and_a_missing_namespace_an_error() {
        let ns = RouterNamespace::named("praas-ct-test-does-not-exist");
        assert_eq!(Conntrack.delete_flows(&ns, &[]).unwrap(), 0);
        let stale = [(
            ExternalKey {
                ip: "203.0.113.10".parse().unwrap(),
                protocol: Protocol::Tcp,
                port: 4000,
            },
            Target {
                ip: "10.0.0.5".parse().unwrap(),
                port: 22,
            },
        )];
        let err = Conntrack.delete_flows(&ns, &stale).unwrap_err();
        assert!(matches!(err, DataplaneError::Namespace { .. }), "{err}");
    }

    // ---- against the kernel (root only) ----

    use std::process::Command;

    /// A namespace this test created; deleted on drop, also when the test panics.
    struct TestNamespace(String);

    impl TestNamespace {
        fn create(name: String) -> Self {
            let status = Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .expect("run ip netns add");
            assert!(status.success(), "ip netns add {name} failed");
            TestNamespace(name)
        }

        fn conntrack(&self, args: &[&str]) -> String {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.0, "conntrack"])
                .args(args)
                .output()
                .expect("run conntrack");
            assert!(
                out.status.success(),
                "conntrack {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }

        fn insert(&self, line: &str) {
            let args: Vec<&str> = line.split_whitespace().collect();
            self.conntrack(&[&["-I"], &args[..]].concat());
        }

        fn list(&self) -> Vec<String> {
            let mut lines: Vec<String> =
                self.conntrack(&["-L"]).lines().map(str::to_owned).collect();
            lines.sort();
            lines
        }

        fn namespace(&self) -> RouterNamespace {
            RouterNamespace::named(self.0.clone())
        }
    }

    impl Drop for TestNamespace {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    fn kernel_test_namespace(name: String) -> Option<TestNamespace> {
        if !crate::testbed::simnode::kernel_tests_enabled("conntrack") {
            return None;
        }
        if Command::new("conntrack").arg("--version").output().is_err() {
            eprintln!("skipped: needs the conntrack CLI");
            return None;
        }
        Some(TestNamespace::create(name))
    }

    fn stale(gw: &str, protocol: Protocol, port: u16, ip: &str, to: u16) -> (ExternalKey, Target) {
        (
            ExternalKey {
                ip: gw.parse().unwrap(),
                protocol,
                port,
            },
            Target {
                ip: ip.parse().unwrap(),
                port: to,
            },
        )
    }

    const ESTABLISHED: &str = "--state ESTABLISHED -t 300 -u SEEN_REPLY";

    #[test]
    fn deletes_exactly_the_flows_of_the_stale_forward_in_a_namespace() {
        let Some(ns) = kernel_test_namespace(format!("praas-ct-test-{}", std::process::id()))
        else {
            return;
        };
        // Ours: DNATed to 10.0.0.5:22.
        ns.insert(&format!(
            "-p tcp -s 198.51.100.2 -d 203.0.113.10 --sport 40000 --dport 4000 \
             -r 10.0.0.5 -q 198.51.100.2 --reply-port-src 22 --reply-port-dst 40000 {ESTABLISHED}"
        ));
        // Another external port.
        ns.insert(&format!(
            "-p tcp -s 198.51.100.2 -d 203.0.113.10 --sport 40001 --dport 4001 \
             -r 10.0.0.5 -q 198.51.100.2 --reply-port-src 22 --reply-port-dst 40001 {ESTABLISHED}"
        ));
        // Same external port, answered by another VM (what a re-pointed forward creates).
        ns.insert(&format!(
            "-p tcp -s 198.51.100.3 -d 203.0.113.10 --sport 40000 --dport 4000 \
             -r 10.0.0.7 -q 198.51.100.3 --reply-port-src 22 --reply-port-dst 40000 {ESTABLISHED}"
        ));
        // Same ports over UDP.
        ns.insert(
            "-p udp -s 198.51.100.2 -d 203.0.113.10 --sport 40000 --dport 4000 \
             -r 10.0.0.5 -q 198.51.100.2 --reply-port-src 22 --reply-port-dst 40000 -t 300",
        );
        let before = ns.list();
        assert_eq!(before.len(), 4, "{before:#?}");

        let deleted = Conntrack
            .delete_flows(
                &ns.namespace(),
                &[
                    stale("203.0.113.10", Protocol::Tcp, 4000, "10.0.0.5", 22),
                    // A forward without flows deletes nothing.
                    stale("203.0.113.10", Protocol::Tcp, 4444, "10.0.0.5", 22),
                ],
            )
            .unwrap();
        assert_eq!(deleted, 1);
        let after = ns.list();
        assert_eq!(after.len(), 3, "{after:#?}");
        assert!(
            !after
                .iter()
                .any(|l| l.starts_with("tcp") && l.contains("dport=4000 src=10.0.0.5 ")),
            "{after:#?}"
        );
        // The third field is the entry's remaining lifetime, which may tick between the two
        // listings: the entries are compared without it.
        let without_timeout = |l: &String| {
            l.split_whitespace()
                .enumerate()
                .filter(|(i, _)| *i != 2)
                .map(|(_, w)| w)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let expected: Vec<String> = before
            .iter()
            .filter(|l| !(l.starts_with("tcp") && l.contains("dport=4000 src=10.0.0.5 ")))
            .map(without_timeout)
            .collect();
        assert_eq!(
            after.iter().map(without_timeout).collect::<Vec<_>>(),
            expected
        );

        // Nothing left to delete: a second call is a no-op.
        assert_eq!(
            Conntrack
                .delete_flows(
                    &ns.namespace(),
                    &[stale("203.0.113.10", Protocol::Tcp, 4000, "10.0.0.5", 22)]
                )
                .unwrap(),
            0
        );

        // Entries in conntrack zones are found and deleted too (the delete names the zone).
        ns.insert(&format!(
            "-p tcp -s 198.51.100.4 -d 203.0.113.10 --sport 40000 --dport 4000 \
             -r 10.0.0.5 -q 198.51.100.4 --reply-port-src 22 --reply-port-dst 40000 \
             {ESTABLISHED} -w 5"
        ));
        ns.insert(&format!(
            "-p tcp -s 198.51.100.5 -d 203.0.113.10 --sport 40000 --dport 4000 \
             -r 10.0.0.5 -q 198.51.100.5 --reply-port-src 22 --reply-port-dst 40000 \
             {ESTABLISHED} --orig-zone 7"
        ));
        assert_eq!(
            Conntrack
                .delete_flows(
                    &ns.namespace(),
                    &[stale("203.0.113.10", Protocol::Tcp, 4000, "10.0.0.5", 22)]
                )
                .unwrap(),
            2
        );
        assert_eq!(ns.list(), after);
    }

    /// Times one cleanup of 1,000 stale flows in a table of 10,000 entries. Run with
    /// `cargo test --lib conntrack -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark: inserts 10,000 conntrack entries"]
    fn ten_thousand_entries() {
        let Some(ns) = kernel_test_namespace(format!("praas-ct-bench-{}", std::process::id()))
        else {
            return;
        };
        // 100 forwarded ports (4000..4100) to 10.0.0.5:22, 100 connections each (one client
        // address per port, as reply tuples must be unique too); the forwards of ports
        // 4000..4010 (1,000 flows) go stale.
        let mut script = String::new();
        for port in 4000..4100u16 {
            let client = format!("198.51.100.{}", port - 3999);
            for sport in 20000..20100u16 {
                script.push_str(&format!(
                    "-I -p tcp -s {client} -d 203.0.113.10 --sport {sport} --dport {port} \
                     -r 10.0.0.5 -q {client} --reply-port-src 22 --reply-port-dst {sport} \
                     {ESTABLISHED}\n"
                ));
            }
        }
        let namespace = ns.namespace();
        let none = [stale("203.0.113.10", Protocol::Tcp, 9999, "10.0.0.5", 22)];
        let best_of_5 = || {
            (0..5)
                .map(|_| {
                    let started = Instant::now();
                    assert_eq!(Conntrack.delete_flows(&namespace, &none).unwrap(), 0);
                    started.elapsed()
                })
                .min()
                .unwrap()
        };
        let empty = best_of_5();

        let file = std::env::temp_dir().join(format!("{}.conntrack", ns.0));
        std::fs::write(&file, script).unwrap();
        let loaded = Instant::now();
        ns.conntrack(&["-R", file.to_str().unwrap()]);
        let load_time = loaded.elapsed();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(ns.list().len(), 10_000);

        let dump_only = best_of_5();
        let started = Instant::now();
        ns.conntrack(&["-L"]);
        let cli_list = started.elapsed();

        let stale: Vec<_> = (4000..4010)
            .map(|port| stale("203.0.113.10", Protocol::Tcp, port, "10.0.0.5", 22))
            .collect();
        let started = Instant::now();
        assert_eq!(Conntrack.delete_flows(&namespace, &stale).unwrap(), 1000);
        let dump_and_delete = started.elapsed();
        assert_eq!(ns.list().len(), 9_000);

        eprintln!(
            "empty table: dump (best of 5) {empty:?}; 10,000 entries: load via conntrack -R \
             {load_time:?}; `conntrack -L` {cli_list:?}; dump, no match (best of 5) \
             {dump_only:?}; dump + delete 1,000 {dump_and_delete:?}"
        );
    }
}
