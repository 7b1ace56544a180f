//! nf_tables over netlink, for what must be fast: element batches and read-back.
//!
//! Rules and set definitions are written as nft text through libnftables (readable, golden
//! tested, and only needed when our table is created or repaired). Elements, which are what
//! changes and what there are many of, are written here as one nfnetlink batch per transaction,
//! and read back with dumps: nft's text parser costs ≈ 14 µs per element and its JSON printer
//! ≈ 80 µs, where a batch costs a few µs per element in the kernel.
//!
//! The usage set's counters are read the same way: one dump, in which every element carries
//! its counter expression.
//!
//! Element bytes follow the kernel's register layout for concatenations: every field starts on
//! a 4-byte boundary (an IPv4 address is 4 bytes, a protocol 1 + 3 padding, a port 2 in network
//! order + 2 padding).

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{ALLOWED_SET, FORWARDS_MAP, MASQUERADE_SET, RESTRICTED_SET, TABLE, USAGE_SET};
use crate::dataplane::netlink::{self, *};
use crate::dataplane::{Changes, ExternalKey, MasqueradeKey, Protocol, RuleSet, Target, Usage};

// linux/netfilter/nfnetlink.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
// linux/netlink.h
const NLM_F_CREATE: u16 = 0x400;
// linux/netfilter.h
const NFPROTO_IPV4: u8 = 2;
const AF_UNSPEC: u8 = 0;

// linux/netfilter/nf_tables.h
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_EXPR: u16 = 17;
const NFTA_SET_EXPRESSIONS: u16 = 18;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_EXPR: u16 = 7;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_SET_ELEM_EXPRESSIONS: u16 = 11;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
pub const NFT_SET_INTERVAL: u32 = 0x4;
pub const NFT_SET_MAP: u32 = 0x8;

/// Elements per NEWSETELEM/DELSETELEM message: the element list is one attribute, whose length
/// field is 16 bits, and an element takes at most 56 bytes.
const ELEMENTS_PER_MESSAGE: usize = 1000;

/// Single-element lookups sent in one datagram. Every lookup is answered by two messages (the
/// element or an error, and an acknowledgement), each costing ≈ 1 KiB of receive-buffer
/// accounting however small it is: 64 stay well inside the default 208 KiB.
const LOOKUPS_PER_SEND: usize = 64;

fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One element of one of our sets, as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RawElement {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: Option<Vec<u8>>,
}

/// An element as a dump shows it, with the counter the kernel keeps for it if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedElement {
    pub element: RawElement,
    pub counter: Option<Usage>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_bytes(k: &ExternalKey) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&k.ip.octets());
    b.extend_from_slice(&[k.protocol.number(), 0, 0, 0]);
    b.extend_from_slice(&k.port.to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b
}

fn target_bytes(t: &Target) -> Vec<u8> {
    let mut b = t.ip.octets().to_vec();
    b.extend_from_slice(&t.port.to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b
}

fn masq_bytes(m: &MasqueradeKey) -> Vec<u8> {
    let mut b = m.external_ip.octets().to_vec();
    b.extend_from_slice(&m.internal_ip.octets());
    b.extend_from_slice(&[m.protocol.number(), 0, 0, 0]);
    b.extend_from_slice(&m.internal_port.to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b
}

fn allowed_element(k: &ExternalKey, net: &Ipv4Net) -> RawElement {
    let (mut start, mut end) = (key_bytes(k), key_bytes(k));
    start.extend_from_slice(&net.network().octets());
    end.extend_from_slice(&net.broadcast().octets());
    RawElement {
        key: start,
        key_end: Some(end),
        data: None,
    }
}

fn forward_element(k: &ExternalKey, t: Option<&Target>) -> RawElement {
    RawElement {
        key: key_bytes(k),
        key_end: None,
        data: t.map(target_bytes),
    }
}

fn plain(key: Vec<u8>) -> RawElement {
    RawElement {
        key,
        key_end: None,
        data: None,
    }
}

/// The elements of every set of ours for `rules`.
pub fn elements_of(rules: &RuleSet) -> Vec<(&'static str, Vec<RawElement>)> {
    vec![
        (
            FORWARDS_MAP,
            rules
                .forwards
                .iter()
                .map(|(k, t)| forward_element(k, Some(t)))
                .collect(),
        ),
        (
            RESTRICTED_SET,
            rules
                .restricted
                .iter()
                .map(|k| plain(key_bytes(k)))
                .collect(),
        ),
        (
            ALLOWED_SET,
            rules
                .allowed
                .iter()
                .map(|(k, n)| allowed_element(k, n))
                .collect(),
        ),
        (
            MASQUERADE_SET,
            rules
                .masqueraded
                .iter()
                .map(|m| plain(masq_bytes(m)))
                .collect(),
        ),
        (
            USAGE_SET,
            rules.counted.iter().map(|m| plain(masq_bytes(m))).collect(),
        ),
    ]
}

/// One operation of a batch.
#[derive(Debug)]
pub enum SetOp {
    /// Removes every element of the set.
    Flush(&'static str),
    Add(&'static str, Vec<RawElement>),
    Delete(&'static str, Vec<RawElement>),
}

impl std::fmt::Display for SetOp {
    /// `add forwards [0a000005 0016 …] ×3`: the operation, the set and the elements' bytes in
    /// hex (the first four), as the batch carries them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (verb, set, elements) = match self {
            SetOp::Flush(set) => return write!(f, "flush {set}"),
            SetOp::Add(set, e) => ("add", set, e),
            SetOp::Delete(set, e) => ("delete", set, e),
        };
        write!(f, "{verb} {set}")?;
        for e in elements.iter().take(4) {
            write!(f, " [{}", hex(&e.key))?;
            if let Some(end) = &e.key_end {
                write!(f, "-{}", hex(end))?;
            }
            if let Some(data) = &e.data {
                write!(f, " : {}", hex(data))?;
            }
            f.write_str("]")?;
        }
        if elements.len() > 4 {
            f.write_str(" …")?;
        }
        write!(f, " ×{}", elements.len())
    }
}

/// Replaces the elements of every set with those of `rules`, `counted_now` being what the
/// usage set holds. The usage set is not flushed, so that the elements that stay keep their
/// counters: only those that go are deleted and only those missing are added. (Adding an
/// element that exists would keep it too, but the kernel allocates and frees a counter for
/// each: ≈ 0.5 µs an element here.) Should the set change between the listing and the batch,
/// the read-back that follows a full sync finds it.
pub fn replace_ops(rules: &RuleSet, counted_now: &[RawElement]) -> Vec<SetOp> {
    let mut ops: Vec<SetOp> = [FORWARDS_MAP, RESTRICTED_SET, ALLOWED_SET, MASQUERADE_SET]
        .into_iter()
        .map(SetOp::Flush)
        .collect();
    let wanted: HashSet<Vec<u8>> = rules.counted.iter().map(masq_bytes).collect();
    let stale: Vec<RawElement> = counted_now
        .iter()
        .filter(|e| !wanted.contains(&e.key))
        .map(|e| plain(e.key.clone()))
        .collect();
    let now: HashSet<&[u8]> = counted_now.iter().map(|e| e.key.as_slice()).collect();
    let mut elements = elements_of(rules);
    for (set, e) in elements.iter_mut() {
        if *set == USAGE_SET {
            e.retain(|e| !now.contains(e.key.as_slice()));
        }
    }
    if !stale.is_empty() {
        ops.push(SetOp::Delete(USAGE_SET, stale));
    }
    ops.extend(
        elements
            .into_iter()
            .filter(|(_, e)| !e.is_empty())
            .map(|(set, e)| SetOp::Add(set, e)),
    );
    ops
}

/// `changes` as set operations: deletions first, so that a re-pointed forward is a delete and an
/// add of the same key in one transaction.
pub fn change_ops(changes: &Changes) -> Vec<SetOp> {
    let forwards = |v: &[(ExternalKey, Target)], data: bool| -> Vec<RawElement> {
        v.iter()
            .map(|(k, t)| forward_element(k, data.then_some(t)))
            .collect()
    };
    vec![
        SetOp::Delete(FORWARDS_MAP, forwards(&changes.remove_forwards, false)),
        SetOp::Delete(
            RESTRICTED_SET,
            changes
                .remove_restricted
                .iter()
                .map(|k| plain(key_bytes(k)))
                .collect(),
        ),
        SetOp::Delete(
            ALLOWED_SET,
            changes
                .remove_allowed
                .iter()
                .map(|(k, n)| allowed_element(k, n))
                .collect(),
        ),
        SetOp::Delete(
            MASQUERADE_SET,
            changes
                .remove_masqueraded
                .iter()
                .map(|m| plain(masq_bytes(m)))
                .collect(),
        ),
        SetOp::Delete(
            USAGE_SET,
            changes
                .remove_counted
                .iter()
                .map(|m| plain(masq_bytes(m)))
                .collect(),
        ),
        SetOp::Add(
            ALLOWED_SET,
            changes
                .add_allowed
                .iter()
                .map(|(k, n)| allowed_element(k, n))
                .collect(),
        ),
        SetOp::Add(
            RESTRICTED_SET,
            changes
                .add_restricted
                .iter()
                .map(|k| plain(key_bytes(k)))
                .collect(),
        ),
        SetOp::Add(
            MASQUERADE_SET,
            changes
                .add_masqueraded
                .iter()
                .map(|m| plain(masq_bytes(m)))
                .collect(),
        ),
        SetOp::Add(
            USAGE_SET,
            changes
                .add_counted
                .iter()
                .map(|m| plain(masq_bytes(m)))
                .collect(),
        ),
        SetOp::Add(FORWARDS_MAP, forwards(&changes.add_forwards, true)),
    ]
    .into_iter()
    .filter(|op| !matches!(op, SetOp::Add(_, e) | SetOp::Delete(_, e) if e.is_empty()))
    .collect()
}

fn put_data(buf: &mut Vec<u8>, attr: u16, value: &[u8]) {
    let nest = begin_nest(buf, attr);
    put_attr(buf, NFTA_DATA_VALUE, value);
    end_nest(buf, nest);
}

/// Appends one element-list message; returns the sequence numbers it used.
fn encode_elements(
    buf: &mut Vec<u8>,
    msg: u16,
    flags: u16,
    seq: u32,
    set: &str,
    elements: &[RawElement],
) {
    let start = begin_message(buf, nft_type(msg), flags, seq, NFPROTO_IPV4, 0);
    put_attr(buf, NFTA_SET_ELEM_LIST_TABLE, &cstr(TABLE));
    put_attr(buf, NFTA_SET_ELEM_LIST_SET, &cstr(set));
    if !elements.is_empty() {
        let list = begin_nest(buf, NFTA_SET_ELEM_LIST_ELEMENTS);
        for e in elements {
            let elem = begin_nest(buf, NFTA_LIST_ELEM);
            put_data(buf, NFTA_SET_ELEM_KEY, &e.key);
            if let Some(end) = &e.key_end {
                put_data(buf, NFTA_SET_ELEM_KEY_END, end);
            }
            if let Some(data) = &e.data {
                put_data(buf, NFTA_SET_ELEM_DATA, data);
            }
            end_nest(buf, elem);
        }
        end_nest(buf, list);
    }
    end_message(buf, start);
}

/// Encodes `ops` as one batch (one transaction). Returns the batch and the number of
/// acknowledged messages, whose sequence numbers follow `first_seq` (the batch start).
pub fn encode_batch(first_seq: u32, ops: &[SetOp]) -> (Vec<u8>, usize) {
    let mut buf = Vec::new();
    let mut seq = first_seq;
    let begin = begin_message(
        &mut buf,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        AF_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
    );
    end_message(&mut buf, begin);
    let mut acked = 0;
    for op in ops {
        let (msg, flags, set, elements): (u16, u16, &str, &[RawElement]) = match op {
            SetOp::Flush(set) => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK, set, &[]),
            SetOp::Add(set, e) => (
                NFT_MSG_NEWSETELEM,
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
                set,
                e,
            ),
            SetOp::Delete(set, e) => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK, set, e),
        };
        let chunks: Vec<&[RawElement]> = if elements.is_empty() {
            vec![&[]]
        } else {
            elements.chunks(ELEMENTS_PER_MESSAGE).collect()
        };
        for chunk in chunks {
            seq = seq.wrapping_add(1);
            acked += 1;
            encode_elements(&mut buf, msg, flags, seq, set, chunk);
        }
    }
    seq = seq.wrapping_add(1);
    let end = begin_message(
        &mut buf,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        AF_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
    );
    end_message(&mut buf, end);
    (buf, acked)
}

/// What one of our sets is declared as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetInfo {
    pub flags: u32,
    pub key_len: u32,
    pub data_len: u32,
    /// Whether the set gives each element a counter (`counter` in its declaration).
    pub counter: bool,
}

/// The shape of our table as the kernel holds it.
#[derive(Debug, Default)]
pub struct Structure {
    pub table: bool,
    pub sets: BTreeMap<String, SetInfo>,
    /// Per chain, the user data (nft comment) of each rule in order.
    pub rules: BTreeMap<String, Vec<Vec<u8>>>,
}

/// nf_tables requests over a namespace's netfilter socket.
pub struct NftSocket<'a> {
    socket: &'a mut Socket,
}

impl<'a> NftSocket<'a> {
    pub fn new(socket: &'a mut Socket) -> Self {
        NftSocket { socket }
    }

    /// Sends `ops` as one transaction and waits for the kernel's verdict.
    pub fn apply(&mut self, ops: &[SetOp]) -> io::Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let first = self.socket.seq.wrapping_add(1);
        let (batch, acked) = encode_batch(first, ops);
        if tracing::enabled!(tracing::Level::TRACE) {
            let plan: Vec<String> = ops.iter().map(|op| op.to_string()).collect();
            tracing::trace!(bytes = batch.len(), ops = %plan.join("; "), "nfnetlink batch");
        }
        // Sequence numbers used: the batch start, `acked` messages, the batch end.
        self.socket.seq = first.wrapping_add(acked as u32 + 1);
        self.socket.reserve_send_buffer(batch.len() * 2 + 65536)?;
        self.socket.send(&batch)?;
        match netlink::read_acks(self.socket, first.wrapping_add(1), acked)?
            .into_iter()
            .find(|e| *e != 0)
        {
            None => Ok(()),
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    fn request(&mut self, msg: u16, flags: u16, attrs: &[(u16, &str)]) -> (Vec<u8>, u32) {
        let seq = self.socket.next_seq();
        let mut buf = Vec::new();
        let start = begin_message(
            &mut buf,
            nft_type(msg),
            NLM_F_REQUEST | flags,
            seq,
            NFPROTO_IPV4,
            0,
        );
        for (attr, value) in attrs {
            put_attr(&mut buf, *attr, &cstr(value));
        }
        end_message(&mut buf, start);
        (buf, seq)
    }

    /// Whether our table exists: the kernel answers ENOENT for a table it does not have.
    pub fn table_exists(&mut self) -> io::Result<bool> {
        let (req, seq) = self.request(NFT_MSG_GETTABLE, NLM_F_ACK, &[(NFTA_TABLE_NAME, TABLE)]);
        self.socket.send(&req)?;
        let mut found = false;
        loop {
            for msg in messages(self.socket.recv()?) {
                let msg = msg?;
                if msg.seq != seq {
                    continue;
                }
                if msg.msg_type == NLMSG_ERROR {
                    return match parse_error(msg.payload)? {
                        0 => Ok(found),
                        libc::ENOENT => Ok(false),
                        errno => Err(io::Error::from_raw_os_error(errno)),
                    };
                }
                found = true;
            }
        }
    }

    /// The namespace's nf_tables generation: a counter the kernel moves with every committed
    /// transaction of any table, ours or not (iptables-nft's included). One small round trip,
    /// which is what makes a check of every namespace each second affordable.
    pub fn generation(&mut self) -> io::Result<u32> {
        let (req, seq) = self.request(NFT_MSG_GETGEN, 0, &[]);
        self.socket.send(&req)?;
        loop {
            for msg in messages(self.socket.recv()?) {
                let msg = msg?;
                if msg.seq != seq {
                    continue;
                }
                if msg.msg_type == NLMSG_ERROR {
                    match parse_error(msg.payload)? {
                        0 => continue,
                        errno => return Err(io::Error::from_raw_os_error(errno)),
                    }
                }
                if msg.msg_type == nft_type(NFT_MSG_NEWGEN) {
                    for attr in attrs(msg.payload.get(NFGENMSG_LEN..).unwrap_or_default()) {
                        let (ty, payload) = attr?;
                        if ty == NFTA_GEN_ID {
                            return be32(payload, "NFTA_GEN_ID");
                        }
                    }
                    return Err(invalid("generation message without NFTA_GEN_ID"));
                }
            }
        }
    }

    /// Our table's sets and rules.
    pub fn structure(&mut self) -> io::Result<Structure> {
        let mut s = Structure {
            table: self.table_exists()?,
            ..Default::default()
        };
        if !s.table {
            return Ok(s);
        }
        let (req, seq) = self.request(NFT_MSG_GETSET, NLM_F_DUMP, &[(NFTA_SET_TABLE, TABLE)]);
        netlink::dump(self.socket, &req, seq, |msg| {
            let (mut name, mut info) = (String::new(), SetInfo::default());
            for attr in attrs(msg.payload.get(NFGENMSG_LEN..).unwrap_or_default()) {
                let (ty, payload) = attr?;
                match ty {
                    NFTA_SET_NAME => name = string(payload),
                    NFTA_SET_FLAGS => info.flags = be32(payload, "NFTA_SET_FLAGS")?,
                    NFTA_SET_KEY_LEN => info.key_len = be32(payload, "NFTA_SET_KEY_LEN")?,
                    NFTA_SET_DATA_LEN => info.data_len = be32(payload, "NFTA_SET_DATA_LEN")?,
                    NFTA_SET_EXPR | NFTA_SET_EXPRESSIONS => {
                        for expr in expressions(ty == NFTA_SET_EXPR, payload)? {
                            info.counter |= expression_name(expr)? == b"counter";
                        }
                    }
                    _ => {}
                }
            }
            s.sets.insert(name, info);
            Ok(())
        })?;
        let (req, seq) = self.request(NFT_MSG_GETRULE, NLM_F_DUMP, &[(NFTA_RULE_TABLE, TABLE)]);
        netlink::dump(self.socket, &req, seq, |msg| {
            let (mut chain, mut userdata) = (String::new(), Vec::new());
            for attr in attrs(msg.payload.get(NFGENMSG_LEN..).unwrap_or_default()) {
                let (ty, payload) = attr?;
                match ty {
                    NFTA_RULE_CHAIN => chain = string(payload),
                    NFTA_RULE_USERDATA => userdata = payload.to_vec(),
                    _ => {}
                }
            }
            s.rules.entry(chain).or_default().push(userdata);
            Ok(())
        })?;
        Ok(s)
    }

    /// Every element of one of our sets.
    pub fn elements(&mut self, set: &str) -> io::Result<Vec<RawElement>> {
        let (req, seq) = self.request(
            NFT_MSG_GETSETELEM,
            NLM_F_DUMP,
            &[
                (NFTA_SET_ELEM_LIST_TABLE, TABLE),
                (NFTA_SET_ELEM_LIST_SET, set),
            ],
        );
        let mut out = Vec::new();
        netlink::dump(self.socket, &req, seq, |msg| {
            out.extend(element_list(msg.payload)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Every element of the usage set with its counter: one dump. A namespace without the set
    /// (our table missing, or written before the set existed) has none.
    pub fn counters(&mut self) -> io::Result<Vec<CountedElement>> {
        let (req, seq) = self.request(
            NFT_MSG_GETSETELEM,
            NLM_F_DUMP,
            &[
                (NFTA_SET_ELEM_LIST_TABLE, TABLE),
                (NFTA_SET_ELEM_LIST_SET, USAGE_SET),
            ],
        );
        let mut out = Vec::new();
        match netlink::dump(self.socket, &req, seq, |msg| {
            out.extend(counted_element_list(msg.payload)?);
            Ok(())
        }) {
            Ok(()) => Ok(out),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Asks the kernel for specific elements, one request each, and returns those it holds (with
    /// their data). Used for elements that a dump did not show: a dump of a hash set that the
    /// kernel is resizing can miss elements, a lookup cannot.
    pub fn lookup(&mut self, set: &str, wanted: &[RawElement]) -> io::Result<Vec<RawElement>> {
        let mut found = Vec::new();
        for chunk in wanted.chunks(LOOKUPS_PER_SEND) {
            let first = self.socket.seq.wrapping_add(1);
            let mut buf = Vec::new();
            for e in chunk {
                let seq = self.socket.next_seq();
                let key = RawElement {
                    key: e.key.clone(),
                    key_end: e.key_end.clone(),
                    data: None,
                };
                encode_elements(
                    &mut buf,
                    NFT_MSG_GETSETELEM,
                    NLM_F_REQUEST | NLM_F_ACK,
                    seq,
                    set,
                    &[key],
                );
            }
            self.socket.send(&buf)?;
            let mut answered = vec![false; chunk.len()];
            let mut pending = chunk.len();
            while pending > 0 {
                for msg in messages(self.socket.recv()?) {
                    let msg = msg?;
                    let index = msg.seq.wrapping_sub(first) as usize;
                    if index >= chunk.len() {
                        continue;
                    }
                    if msg.msg_type == NLMSG_ERROR {
                        if !std::mem::replace(&mut answered[index], true) {
                            pending -= 1;
                            match parse_error(msg.payload)? {
                                0 | libc::ENOENT => {}
                                errno => return Err(io::Error::from_raw_os_error(errno)),
                            }
                        }
                    } else if msg.msg_type == nft_type(NFT_MSG_NEWSETELEM) {
                        found.extend(element_list(msg.payload)?);
                    }
                }
            }
        }
        Ok(found)
    }

    /// Reads every element of our sets back into a rule set.
    pub fn read_rules(&mut self) -> io::Result<RuleSet> {
        let mut rules = RuleSet::default();
        for (set, _) in elements_of(&RuleSet::default()) {
            decode_all(&mut rules, set, &self.elements(set)?)?;
        }
        Ok(rules)
    }
}

/// The elements of an element-list message (NEWSETELEM as the kernel sends it).
fn element_list(payload: &[u8]) -> io::Result<Vec<RawElement>> {
    Ok(counted_element_list(payload)?
        .into_iter()
        .map(|e| e.element)
        .collect())
}

/// The elements of an element-list message with their counters.
fn counted_element_list(payload: &[u8]) -> io::Result<Vec<CountedElement>> {
    let mut out = Vec::new();
    for attr in attrs(payload.get(NFGENMSG_LEN..).unwrap_or_default()) {
        let (ty, payload) = attr?;
        if ty == NFTA_SET_ELEM_LIST_ELEMENTS {
            for elem in attrs(payload) {
                out.push(parse_element(elem?.1)?);
            }
        }
    }
    Ok(out)
}

/// Why the usage counters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("the dump of set {USAGE_SET} failed")]
    Netlink(#[source] io::Error),
    #[error("element {key} of set {USAGE_SET} is not ours")]
    Element {
        key: String,
        #[source]
        source: ElementError,
    },
}

/// The counters of the usage set's elements, by the mapping's gateway and internal socket.
pub fn decode_usage(
    counted: &[CountedElement],
) -> Result<BTreeMap<MasqueradeKey, Usage>, UsageError> {
    counted
        .iter()
        .map(|e| {
            let decoded = decode_masquerade(&e.element.key)
                .and_then(|key| Ok((key, e.counter.ok_or(ElementError::NoCounter)?)));
            decoded.map_err(|source| UsageError::Element {
                key: hex(&e.element.key),
                source,
            })
        })
        .collect()
}

/// Decodes raw elements of `set` into `rules`.
pub fn decode_all(rules: &mut RuleSet, set: &str, elements: &[RawElement]) -> io::Result<()> {
    for e in elements {
        decode_into(rules, set, e).map_err(|what| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("set {set}: element {:02x?}: {what}", e.key),
            )
        })?;
    }
    Ok(())
}

fn string(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

fn data_value(payload: &[u8]) -> io::Result<Vec<u8>> {
    for attr in attrs(payload) {
        let (ty, value) = attr?;
        if ty == NFTA_DATA_VALUE {
            return Ok(value.to_vec());
        }
    }
    Err(invalid("nft data without a value"))
}

/// The expressions of an `*_EXPR` attribute (`single`: one expression) or of an
/// `*_EXPRESSIONS` attribute (a list of them), as the payloads of their `nft_expr_attributes`.
/// The kernel sends the list form when there are several.
fn expressions(single: bool, payload: &[u8]) -> io::Result<Vec<&[u8]>> {
    if single {
        return Ok(vec![payload]);
    }
    let mut out = Vec::new();
    for attr in attrs(payload) {
        let (ty, expr) = attr?;
        if ty == NFTA_LIST_ELEM {
            out.push(expr);
        }
    }
    Ok(out)
}

/// The name of an expression, without its terminating NUL.
fn expression_name(expr: &[u8]) -> io::Result<&[u8]> {
    for attr in attrs(expr) {
        let (ty, value) = attr?;
        if ty == NFTA_EXPR_NAME {
            return Ok(value.split(|b| *b == 0).next().unwrap_or_default());
        }
    }
    Err(invalid("nft expression without a name"))
}

/// The packets and bytes of a `counter` expression; `None` for another expression.
fn counter_of(expr: &[u8]) -> io::Result<Option<Usage>> {
    if expression_name(expr)? != b"counter" {
        return Ok(None);
    }
    let (mut packets, mut bytes) = (None, None);
    for attr in attrs(expr) {
        let (ty, data) = attr?;
        if ty != NFTA_EXPR_DATA {
            continue;
        }
        for attr in attrs(data) {
            let (ty, value) = attr?;
            match ty {
                NFTA_COUNTER_BYTES => bytes = Some(be64(value, "NFTA_COUNTER_BYTES")?),
                NFTA_COUNTER_PACKETS => packets = Some(be64(value, "NFTA_COUNTER_PACKETS")?),
                _ => {}
            }
        }
    }
    match (packets, bytes) {
        (Some(packets), Some(bytes)) => Ok(Some(Usage { packets, bytes })),
        _ => Err(invalid("counter expression without packets and bytes")),
    }
}

fn parse_element(payload: &[u8]) -> io::Result<CountedElement> {
    let mut e = RawElement {
        key: vec![],
        key_end: None,
        data: None,
    };
    let mut counter = None;
    for attr in attrs(payload) {
        let (ty, value) = attr?;
        match ty {
            NFTA_SET_ELEM_KEY => e.key = data_value(value)?,
            NFTA_SET_ELEM_KEY_END => e.key_end = Some(data_value(value)?),
            NFTA_SET_ELEM_DATA => e.data = Some(data_value(value)?),
            NFTA_SET_ELEM_EXPR | NFTA_SET_ELEM_EXPRESSIONS => {
                for expr in expressions(ty == NFTA_SET_ELEM_EXPR, value)? {
                    counter = counter.or(counter_of(expr)?);
                }
            }
            _ => {}
        }
    }
    Ok(CountedElement {
        element: e,
        counter,
    })
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn port_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// An element of our sets that is not what we write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElementError {
    #[error("protocol {0} is not ours")]
    Protocol(u8),
    #[error("{len} bytes, expected {expected}")]
    Length { len: usize, expected: usize },
    #[error("map element without data")]
    NoData,
    #[error("interval spans several forwards")]
    SpansForwards,
    #[error("{first} - {last} is not a prefix")]
    NotAPrefix { first: Ipv4Addr, last: Ipv4Addr },
    #[error("element without a counter")]
    NoCounter,
}

fn proto_at(b: &[u8], at: usize) -> Result<Protocol, ElementError> {
    Protocol::from_number(b[at]).ok_or(ElementError::Protocol(b[at]))
}

fn decode_key(b: &[u8]) -> Result<ExternalKey, ElementError> {
    if b.len() < 12 {
        return Err(ElementError::Length {
            len: b.len(),
            expected: 12,
        });
    }
    Ok(ExternalKey {
        ip: ip_at(b, 0),
        protocol: proto_at(b, 4)?,
        port: port_at(b, 8),
    })
}

/// A key of the masquerade or usage set.
fn decode_masquerade(b: &[u8]) -> Result<MasqueradeKey, ElementError> {
    if b.len() != 16 {
        return Err(ElementError::Length {
            len: b.len(),
            expected: 16,
        });
    }
    Ok(MasqueradeKey {
        external_ip: ip_at(b, 0),
        internal_ip: ip_at(b, 4),
        protocol: proto_at(b, 8)?,
        internal_port: port_at(b, 12),
    })
}

fn decode_into(rules: &mut RuleSet, set: &str, e: &RawElement) -> Result<(), ElementError> {
    let expect = |expected: usize, b: &[u8]| {
        if b.len() == expected {
            Ok(())
        } else {
            Err(ElementError::Length {
                len: b.len(),
                expected,
            })
        }
    };
    match set {
        FORWARDS_MAP => {
            expect(12, &e.key)?;
            let data = e.data.as_deref().ok_or(ElementError::NoData)?;
            expect(8, data)?;
            rules.forwards.insert(
                decode_key(&e.key)?,
                Target {
                    ip: ip_at(data, 0),
                    port: port_at(data, 4),
                },
            );
        }
        RESTRICTED_SET => {
            expect(12, &e.key)?;
            rules.restricted.insert(decode_key(&e.key)?);
        }
        ALLOWED_SET => {
            expect(16, &e.key)?;
            let end = e.key_end.as_deref().unwrap_or(&e.key);
            expect(16, end)?;
            if end[..12] != e.key[..12] {
                return Err(ElementError::SpansForwards);
            }
            let (first, last) = (u32::from(ip_at(&e.key, 12)), u32::from(ip_at(end, 12)));
            let size = u64::from(last) - u64::from(first) + 1;
            let not_a_prefix = ElementError::NotAPrefix {
                first: ip_at(&e.key, 12),
                last: ip_at(end, 12),
            };
            if last < first || !size.is_power_of_two() || u64::from(first) % size != 0 {
                return Err(not_a_prefix);
            }
            let prefix = 32 - size.trailing_zeros() as u8;
            let net = Ipv4Net::new(Ipv4Addr::from(first), prefix).map_err(|_| not_a_prefix)?;
            rules.allowed.insert((decode_key(&e.key)?, net));
        }
        MASQUERADE_SET => {
            rules.masqueraded.insert(decode_masquerade(&e.key)?);
        }
        USAGE_SET => {
            rules.counted.insert(decode_masquerade(&e.key)?);
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_described_for_the_trace_log() {
        let element = |k: u8| RawElement {
            key: vec![10, 0, 0, k],
            key_end: None,
            data: Some(vec![0, 22]),
        };
        let add = SetOp::Add("forwards", (1..=5).map(element).collect());
        assert_eq!(
            add.to_string(),
            "add forwards [0a000001 : 0016] [0a000002 : 0016] [0a000003 : 0016] [0a000004 : 0016] … ×5"
        );
        assert_eq!(SetOp::Flush("masqueraded").to_string(), "flush masqueraded");
    }
    use crate::dataplane::Forward;

    fn sample() -> RuleSet {
        let f = Forward {
            id: "a".into(),
            protocol: Protocol::Udp,
            external_ip: "203.0.113.10".parse().unwrap(),
            external_ports: "4000".parse().unwrap(),
            internal_ip: "10.0.0.5".parse().unwrap(),
            internal_ports: "53".parse().unwrap(),
            allowed_cidrs: vec![
                "198.51.100.0/24".parse().unwrap(),
                "192.0.2.7/32".parse().unwrap(),
            ],
            masquerade: true,
        };
        RuleSet::from_forwards([&f]).unwrap()
    }

    #[test]
    fn element_bytes_follow_the_register_layout() {
        let els = elements_of(&sample());
        let fwd = &els[0].1[0];
        assert_eq!(fwd.key, [203, 0, 113, 10, 17, 0, 0, 0, 0x0f, 0xa0, 0, 0]);
        assert_eq!(fwd.data.as_deref(), Some(&[10, 0, 0, 5, 0, 53, 0, 0][..]));
        let allowed = &els[2].1;
        assert!(allowed.iter().any(|e| e.key[12..] == [198, 51, 100, 0]
            && e.key_end.as_deref().map(|k| &k[12..]) == Some(&[198, 51, 100, 255][..])));
    }

    #[test]
    fn decoding_what_was_encoded_gives_the_rule_set_back() {
        let rules = sample();
        let mut back = RuleSet::default();
        for (set, elements) in elements_of(&rules) {
            for e in elements {
                decode_into(&mut back, set, &e).unwrap();
            }
        }
        assert_eq!(back, rules);
    }

    #[test]
    fn an_interval_that_is_not_a_prefix_is_an_error() {
        let mut e = allowed_element(
            &decode_key(&[203, 0, 113, 10, 6, 0, 0, 0, 0, 22, 0, 0]).unwrap(),
            &"10.0.0.0/24".parse().unwrap(),
        );
        e.key_end.as_mut().unwrap()[15] = 100;
        assert!(decode_into(&mut RuleSet::default(), ALLOWED_SET, &e).is_err());
    }

    #[test]
    fn a_batch_is_framed_and_chunked() {
        let rules = RuleSet {
            forwards: (1..=2500u16)
                .map(|p| {
                    let k = ExternalKey {
                        ip: "203.0.113.10".parse().unwrap(),
                        protocol: Protocol::Tcp,
                        port: p,
                    };
                    (
                        k,
                        Target {
                            ip: "10.0.0.5".parse().unwrap(),
                            port: 22,
                        },
                    )
                })
                .collect(),
            ..Default::default()
        };
        let (batch, acked) = encode_batch(100, &replace_ops(&rules, &[]));
        // 4 flushes + 3 chunks of forwards; the empty sets add nothing.
        assert_eq!(acked, 4 + 3);
        let msgs: Vec<_> = messages(&batch).collect::<io::Result<_>>().unwrap();
        assert_eq!(msgs.first().unwrap().msg_type, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(msgs.last().unwrap().msg_type, NFNL_MSG_BATCH_END);
        assert_eq!(msgs.len(), acked + 2);
        let seqs: Vec<u32> = msgs.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (100..100 + acked as u32 + 2).collect::<Vec<_>>());
    }

    #[test]
    fn changes_delete_before_they_add_and_skip_empty_sets() {
        let old = sample();
        let changes = old.diff(&RuleSet::default());
        let ops = change_ops(&changes);
        assert!(
            ops.iter().all(|op| matches!(op, SetOp::Delete(..))),
            "{ops:?}"
        );
        // forwards, restricted, allowed_sources, masqueraded, usage
        assert_eq!(ops.len(), 5);
    }

    fn usage_key(port: u16) -> MasqueradeKey {
        MasqueradeKey {
            external_ip: "203.0.113.10".parse().unwrap(),
            internal_ip: "10.0.0.5".parse().unwrap(),
            protocol: Protocol::Tcp,
            internal_port: port,
        }
    }

    #[test]
    fn a_full_sync_keeps_the_usage_elements_that_stay_and_changes_only_the_others() {
        let mut rules = sample();
        let staying = plain(masq_bytes(rules.counted.first().unwrap()));
        rules.counted.insert(usage_key(80));
        let missing = plain(masq_bytes(&usage_key(80)));
        let gone = plain(masq_bytes(&usage_key(2222)));
        let ops = replace_ops(&rules, &[staying.clone(), gone.clone()]);
        let described: Vec<String> = ops.iter().map(|op| op.to_string()).collect();
        assert!(
            !described.iter().any(|d| d == "flush usage"),
            "the usage set must not be flushed: {described:?}"
        );
        let deleted: Vec<&RawElement> = ops
            .iter()
            .filter_map(|op| match op {
                SetOp::Delete(USAGE_SET, e) => Some(e),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(deleted, [&gone]);
        let added: Vec<&RawElement> = ops
            .iter()
            .filter_map(|op| match op {
                SetOp::Add(USAGE_SET, e) => Some(e),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(added, [&missing], "only what is missing is added");
        // Nothing there yet: nothing to delete.
        assert!(!replace_ops(&rules, &[])
            .iter()
            .any(|op| matches!(op, SetOp::Delete(..))));
    }

    /// A `counter` expression as the kernel dumps it under `attr`.
    fn put_counter(buf: &mut Vec<u8>, attr: u16, packets: u64, bytes: u64) {
        let expr = begin_nest(buf, attr);
        put_attr(buf, NFTA_EXPR_NAME, b"counter\0");
        let data = begin_nest(buf, NFTA_EXPR_DATA);
        put_attr(buf, 3, &[]); // NFTA_COUNTER_PAD, which aligns the 64-bit values
        put_attr(buf, NFTA_COUNTER_BYTES, &bytes.to_be_bytes());
        put_attr(buf, NFTA_COUNTER_PACKETS, &packets.to_be_bytes());
        end_nest(buf, data);
        end_nest(buf, expr);
    }

    /// A NEWSETELEM message payload of the usage set, as a dump answers, with `elements` (each
    /// the attributes of one element).
    fn dump_message(elements: &[Vec<u8>]) -> Vec<u8> {
        let mut buf = vec![NFPROTO_IPV4, NFNETLINK_V0, 0, 0];
        put_attr(&mut buf, NFTA_SET_ELEM_LIST_TABLE, &cstr(TABLE));
        put_attr(&mut buf, NFTA_SET_ELEM_LIST_SET, &cstr(USAGE_SET));
        let list = begin_nest(&mut buf, NFTA_SET_ELEM_LIST_ELEMENTS);
        for e in elements {
            let elem = begin_nest(&mut buf, NFTA_LIST_ELEM);
            buf.extend_from_slice(e);
            end_nest(&mut buf, elem);
        }
        end_nest(&mut buf, list);
        buf
    }

    #[test]
    fn counters_are_decoded_from_either_form_of_an_elements_expressions() {
        // One expression: NFTA_SET_ELEM_EXPR.
        let mut single = vec![];
        put_data(&mut single, NFTA_SET_ELEM_KEY, &masq_bytes(&usage_key(22)));
        put_counter(&mut single, NFTA_SET_ELEM_EXPR, 7, 1_234);
        // Several: NFTA_SET_ELEM_EXPRESSIONS, a list in which the counter is not first.
        let mut listed = vec![];
        put_data(&mut listed, NFTA_SET_ELEM_KEY, &masq_bytes(&usage_key(80)));
        let list = begin_nest(&mut listed, NFTA_SET_ELEM_EXPRESSIONS);
        let other = begin_nest(&mut listed, NFTA_LIST_ELEM);
        put_attr(&mut listed, NFTA_EXPR_NAME, b"limit\0");
        end_nest(&mut listed, other);
        put_counter(&mut listed, NFTA_LIST_ELEM, 1 << 40, u64::MAX);
        end_nest(&mut listed, list);

        let counted = counted_element_list(&dump_message(&[single, listed])).unwrap();
        assert_eq!(counted[0].element, plain(masq_bytes(&usage_key(22))));
        let usage = decode_usage(&counted).unwrap();
        assert_eq!(
            usage,
            BTreeMap::from([
                (
                    usage_key(22),
                    Usage {
                        packets: 7,
                        bytes: 1_234
                    }
                ),
                (
                    usage_key(80),
                    Usage {
                        packets: 1 << 40,
                        bytes: u64::MAX
                    }
                ),
            ])
        );
    }

    #[test]
    fn a_usage_element_without_a_counter_or_with_a_foreign_key_is_an_error() {
        let mut bare = vec![];
        put_data(&mut bare, NFTA_SET_ELEM_KEY, &masq_bytes(&usage_key(22)));
        let counted = counted_element_list(&dump_message(&[bare])).unwrap();
        assert_eq!(counted[0].counter, None);
        let err = decode_usage(&counted).unwrap_err();
        assert!(
            matches!(
                err,
                UsageError::Element {
                    source: ElementError::NoCounter,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "element cb00710a0a0000050600000000160000 of set usage is not ours"
        );

        let mut short = vec![];
        put_data(&mut short, NFTA_SET_ELEM_KEY, &[10, 0, 0, 5]);
        put_counter(&mut short, NFTA_SET_ELEM_EXPR, 1, 1);
        let counted = counted_element_list(&dump_message(&[short])).unwrap();
        assert!(matches!(
            decode_usage(&counted),
            Err(UsageError::Element {
                source: ElementError::Length {
                    len: 4,
                    expected: 16
                },
                ..
            })
        ));
    }

    #[test]
    fn a_truncated_counter_is_an_error_not_a_zero() {
        let mut e = vec![];
        put_data(&mut e, NFTA_SET_ELEM_KEY, &masq_bytes(&usage_key(22)));
        let expr = begin_nest(&mut e, NFTA_SET_ELEM_EXPR);
        put_attr(&mut e, NFTA_EXPR_NAME, b"counter\0");
        let data = begin_nest(&mut e, NFTA_EXPR_DATA);
        put_attr(&mut e, NFTA_COUNTER_BYTES, &[0, 0, 0, 9]);
        put_attr(&mut e, NFTA_COUNTER_PACKETS, &1u64.to_be_bytes());
        end_nest(&mut e, data);
        end_nest(&mut e, expr);
        let err = counted_element_list(&dump_message(&[e])).unwrap_err();
        assert_eq!(err.to_string(), "NFTA_COUNTER_BYTES is 4 bytes, expected 8");
    }
}
