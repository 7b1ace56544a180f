//! Parses nft's JSON listing of our table back into a [`RuleSet`], for verification.
//!
//! nft 1.0.6 *writes* concatenated map elements correctly in JSON (only its JSON *input* of
//! them is broken), so reading back through JSON is safe.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

use super::{ALLOWED_SET, FORWARDS_MAP, MASQUERADE_SET, RESTRICTED_SET, TABLE};
use crate::dataplane::{ExternalKey, MasqueradeKey, Protocol, RuleSet, Target};

/// What the kernel holds in our table.
#[derive(Debug, Default)]
pub struct Listing {
    pub rules: RuleSet,
    /// Rules per chain, by chain name.
    pub chain_rules: BTreeMap<String, usize>,
}

fn objects(json: &str) -> Result<Vec<Value>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("listing is not JSON: {e}"))?;
    match v.get("nftables") {
        Some(Value::Array(items)) => Ok(items.clone()),
        _ => Err("listing has no \"nftables\" array".into()),
    }
}

/// Whether `list tables ip` output holds our table.
pub fn has_table(json: &str) -> Result<bool, String> {
    Ok(objects(json)?.iter().any(|o| {
        o.pointer("/table/name").and_then(Value::as_str) == Some(TABLE)
            && o.pointer("/table/family").and_then(Value::as_str) == Some("ip")
    }))
}

/// Parses `list table ip praas` output.
pub fn parse(json: &str) -> Result<Listing, String> {
    let mut listing = Listing::default();
    for obj in objects(json)? {
        if let Some(chain) = obj.get("chain") {
            let name = chain
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            listing.chain_rules.entry(name.to_string()).or_insert(0);
        } else if let Some(rule) = obj.get("rule") {
            let name = rule
                .get("chain")
                .and_then(Value::as_str)
                .unwrap_or_default();
            *listing.chain_rules.entry(name.to_string()).or_insert(0) += 1;
        } else if let Some(set) = obj.get("set").or_else(|| obj.get("map")) {
            let name = set.get("name").and_then(Value::as_str).unwrap_or_default();
            let elems = match set.get("elem") {
                Some(Value::Array(e)) => e.as_slice(),
                _ => &[],
            };
            for elem in elems {
                parse_element(&mut listing.rules, name, elem)
                    .map_err(|e| format!("set {name}: element {elem}: {e}"))?;
            }
        }
    }
    Ok(listing)
}

fn parse_element(rules: &mut RuleSet, set: &str, elem: &Value) -> Result<(), String> {
    // Elements with metadata come as {"elem": {"val": ...}}; plain ones are the value itself.
    let elem = elem.pointer("/elem/val").unwrap_or(elem);
    match set {
        FORWARDS_MAP => {
            let pair = elem
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or("not a map element")?;
            let key = external_key(&concat(&pair[0])?)?;
            let data = concat(&pair[1])?;
            let [ip, port] = data.as_slice() else {
                return Err("target is not address . port".into());
            };
            rules.forwards.insert(
                key,
                Target {
                    ip: ipv4(ip)?,
                    port: port_of(port)?,
                },
            );
        }
        RESTRICTED_SET => {
            rules.restricted.insert(external_key(&concat(elem)?)?);
        }
        ALLOWED_SET => {
            let parts = concat(elem)?;
            let [a, b, c, net] = parts.as_slice() else {
                return Err("expected 4 fields".into());
            };
            let key = external_key(&[a.clone(), b.clone(), c.clone()])?;
            rules.allowed.insert((key, cidr(net)?));
        }
        MASQUERADE_SET => {
            let parts = concat(elem)?;
            let [gw, vm, proto, port] = parts.as_slice() else {
                return Err("expected 4 fields".into());
            };
            rules.masqueraded.insert(MasqueradeKey {
                external_ip: ipv4(gw)?,
                internal_ip: ipv4(vm)?,
                protocol: protocol(proto)?,
                internal_port: port_of(port)?,
            });
        }
        _ => {} // not ours to interpret
    }
    Ok(())
}

fn concat(v: &Value) -> Result<Vec<Value>, String> {
    v.get("concat")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| "not a concatenation".into())
}

fn external_key(parts: &[Value]) -> Result<ExternalKey, String> {
    let [ip, proto, port] = parts else {
        return Err("key is not address . protocol . port".into());
    };
    Ok(ExternalKey {
        ip: ipv4(ip)?,
        protocol: protocol(proto)?,
        port: port_of(port)?,
    })
}

fn ipv4(v: &Value) -> Result<Ipv4Addr, String> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{v} is not an IPv4 address"))
}

fn port_of(v: &Value) -> Result<u16, String> {
    v.as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("{v} is not a port"))
}

fn protocol(v: &Value) -> Result<Protocol, String> {
    match v {
        Value::String(s) => s
            .parse()
            .map_err(|e: crate::dataplane::DataplaneError| e.to_string()),
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .and_then(Protocol::from_number)
            .ok_or_else(|| format!("protocol {n} is not ours")),
        _ => Err(format!("{v} is not a protocol")),
    }
}

/// A source in the allowed set: a prefix, or a plain address for a /32.
fn cidr(v: &Value) -> Result<Ipv4Net, String> {
    if let Some(p) = v.get("prefix") {
        let addr = ipv4(p.get("addr").ok_or("prefix without addr")?)?;
        let len = p
            .get("len")
            .and_then(Value::as_u64)
            .ok_or("prefix without len")?;
        return Ipv4Net::new(addr, len as u8).map_err(|e| e.to_string());
    }
    Ok(Ipv4Net::from(ipv4(v)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_nft_1_0_6_listing() {
        // Trimmed from `nft -j list table ip praas` on nftables 1.0.6.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "ip", "name": "praas", "handle": 1}},
          {"map": {"family": "ip", "name": "forwards", "table": "praas", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "ipv4_addr . inet_service",
            "elem": [[{"concat": ["203.0.113.5", "tcp", 4000]}, {"concat": ["10.0.0.5", 22]}]]}},
          {"set": {"family": "ip", "name": "restricted", "table": "praas", "elem": [{"concat": ["203.0.113.5", "tcp", 4000]}]}},
          {"set": {"family": "ip", "name": "allowed_sources", "table": "praas", "flags": ["interval"],
            "elem": [{"concat": ["203.0.113.5", "tcp", 4000, {"prefix": {"addr": "198.51.100.0", "len": 24}}]},
                     {"concat": ["203.0.113.5", "tcp", 4000, "192.0.2.7"]}]}},
          {"set": {"family": "ip", "name": "masqueraded", "table": "praas", "elem": [{"concat": ["203.0.113.5", "10.0.0.6", "udp", 53]}]}},
          {"chain": {"family": "ip", "table": "praas", "name": "prerouting"}},
          {"rule": {"family": "ip", "table": "praas", "chain": "prerouting", "expr": []}}
        ]}"#;
        let l = parse(json).unwrap();
        assert_eq!(l.rules.forwards.len(), 1);
        assert_eq!(l.rules.restricted.len(), 1);
        assert_eq!(l.rules.allowed.len(), 2);
        assert!(l
            .rules
            .allowed
            .iter()
            .any(|(_, n)| n.to_string() == "192.0.2.7/32"));
        assert_eq!(l.rules.masqueraded.len(), 1);
        assert_eq!(l.chain_rules.get("prerouting"), Some(&1));
        assert!(has_table(json).unwrap());
    }

    #[test]
    fn malformed_elements_are_reported_not_skipped() {
        let json = r#"{"nftables": [{"map": {"name": "forwards", "elem": [[{"concat": ["x", "tcp", 1]}, {"concat": ["10.0.0.1", 2]}]]}}]}"#;
        assert!(parse(json).unwrap_err().contains("forwards"));
    }
}
