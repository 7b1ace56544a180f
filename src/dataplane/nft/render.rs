//! Renders rule sets and element changes as nft text: one buffer is one transaction.
//!
//! Layout of our table (see `docs/design.md`):
//!
//! ```text
//! table ip praas
//!   map forwards         gateway . proto . port  : vm_ip . vm_port     (DNAT targets)
//!   set restricted       gateway . proto . port                        (forwards with a source list)
//!   set allowed_sources  gateway . proto . port . source-cidr          (interval set)
//!   set masqueraded      gateway . vm_ip . proto . vm_port             (rewrite the client)
//!   set usage            gateway . vm_ip . proto . vm_port, counter    (traffic per mapping)
//!   chain prerouting     nat, dstnat: refuse unlisted sources, mark hairpin flows, DNAT by map
//!   chain postrouting    nat, srcnat: masquerade hairpin flows and the masqueraded set
//!   chain forward        filter + 10: count both directions of DNATed flows in the usage set
//! ```
//!
//! Dispatch is one map lookup whatever the number of forwards; counting is one more lookup per
//! forwarded packet of a DNATed flow, and the forward chain accepts everything.

use std::fmt::Write;

use super::{
    ALLOWED_SET, FORWARDS_MAP, HAIRPIN_LABEL, MASQUERADE_SET, RESTRICTED_SET, TABLE, USAGE_SET,
};
use crate::dataplane::{Changes, ExternalKey, MasqueradeKey, RuleSet, Target};

/// Start of the comment of every rule we write.
pub const RULE_COMMENT_PREFIX: &str = "praas:";

/// Prefix of the device that carries a Neutron router's external gateway port.
pub const GATEWAY_DEVICE_PREFIX: &str = "qg-";

fn key(k: &ExternalKey) -> String {
    format!("{} . {} . {}", k.ip, k.protocol, k.port)
}

fn target(t: &Target) -> String {
    format!("{} . {}", t.ip, t.port)
}

fn masq(k: &MasqueradeKey) -> String {
    format!(
        "{} . {} . {} . {}",
        k.external_ip, k.internal_ip, k.protocol, k.internal_port
    )
}

/// Writes `elements = { ... }` with `indent`, or nothing for an empty set (nft rejects `{ }`).
fn elements(out: &mut String, indent: &str, items: impl Iterator<Item = String>) {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "{indent}elements = {{ {} }}", items.join(", "));
}

/// The whole table, replacing whatever we had in the namespace in the same transaction.
///
/// `table ... {}` followed by `delete table` makes the replacement work whether or not the
/// table exists, without a window in which the namespace has no forwards.
pub fn full(rules: &RuleSet) -> String {
    format!(
        "table ip {TABLE} {{}}\ndelete table ip {TABLE}\n{}",
        definition(rules)
    )
}

/// The table with its sets, chains and rules, and the elements of `rules`, to be added to a
/// namespace that does not have it. Every rule carries a comment starting with
/// [`RULE_COMMENT_PREFIX`], by which read-back recognizes our rules.
pub fn definition(rules: &RuleSet) -> String {
    let mut out = String::with_capacity(256 + rules.forwards.len() * 48);
    let _ = writeln!(out, "table ip {TABLE} {{");

    let _ = writeln!(out, "\tmap {FORWARDS_MAP} {{");
    let _ = writeln!(
        out,
        "\t\ttype ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service"
    );
    elements(
        &mut out,
        "\t\t",
        rules
            .forwards
            .iter()
            .map(|(k, t)| format!("{} : {}", key(k), target(t))),
    );
    let _ = writeln!(out, "\t}}");

    let _ = writeln!(out, "\tset {RESTRICTED_SET} {{");
    let _ = writeln!(out, "\t\ttype ipv4_addr . inet_proto . inet_service");
    elements(&mut out, "\t\t", rules.restricted.iter().map(key));
    let _ = writeln!(out, "\t}}");

    let _ = writeln!(out, "\tset {ALLOWED_SET} {{");
    let _ = writeln!(
        out,
        "\t\ttype ipv4_addr . inet_proto . inet_service . ipv4_addr"
    );
    let _ = writeln!(out, "\t\tflags interval");
    elements(
        &mut out,
        "\t\t",
        rules
            .allowed
            .iter()
            .map(|(k, net)| format!("{} . {net}", key(k))),
    );
    let _ = writeln!(out, "\t}}");

    let _ = writeln!(out, "\tset {MASQUERADE_SET} {{");
    let _ = writeln!(
        out,
        "\t\ttype ipv4_addr . ipv4_addr . inet_proto . inet_service"
    );
    elements(&mut out, "\t\t", rules.masqueraded.iter().map(masq));
    let _ = writeln!(out, "\t}}");

    // Every element gets a counter of its own (the set's `counter` is copied to each).
    let _ = writeln!(out, "\tset {USAGE_SET} {{");
    let _ = writeln!(
        out,
        "\t\ttype ipv4_addr . ipv4_addr . inet_proto . inet_service"
    );
    let _ = writeln!(out, "\t\tcounter");
    elements(&mut out, "\t\t", rules.counted.iter().map(masq));
    let _ = writeln!(out, "\t}}");

    let tuple = "ip daddr . meta l4proto . th dport";
    let _ = writeln!(out, "\tchain prerouting {{");
    let _ = writeln!(
        out,
        "\t\ttype nat hook prerouting priority dstnat; policy accept;"
    );
    // A restricted forward whose source is not listed is left alone: the packet is not
    // translated and reaches nothing behind the router.
    let _ = writeln!(
        out,
        "\t\t{tuple} @{RESTRICTED_SET} {tuple} . ip saddr != @{ALLOWED_SET} return comment \"{RULE_COMMENT_PREFIX} source not allowed\""
    );
    // Flows from behind the router (hairpin) are labelled so that postrouting can rewrite their
    // source: otherwise the VM would answer its neighbour directly, bypassing the reverse DNAT.
    let _ = writeln!(
        out,
        "\t\tiifname != \"{GATEWAY_DEVICE_PREFIX}*\" {tuple} @{FORWARDS_MAP} ct label set {HAIRPIN_LABEL} comment \"{RULE_COMMENT_PREFIX} hairpin\""
    );
    let _ = writeln!(
        out,
        "\t\tdnat ip to {tuple} map @{FORWARDS_MAP} comment \"{RULE_COMMENT_PREFIX} forward\""
    );
    let _ = writeln!(out, "\t}}");

    let _ = writeln!(out, "\tchain postrouting {{");
    let _ = writeln!(
        out,
        "\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
    let _ = writeln!(
        out,
        "\t\tct status dnat ct label {HAIRPIN_LABEL} masquerade comment \"{RULE_COMMENT_PREFIX} hairpin\""
    );
    let _ = writeln!(
        out,
        "\t\tct status dnat ct original ip daddr . ip daddr . meta l4proto . th dport @{MASQUERADE_SET} masquerade comment \"{RULE_COMMENT_PREFIX} masquerade\""
    );
    let _ = writeln!(out, "\t}}");

    // Counting only: a set lookup whose element's counter moves, no verdict, policy accept.
    // Between DNAT (prerouting) and the reply's un-DNAT (postrouting), both directions of a
    // forwarded flow show the VM socket: as destination going in, as source coming back. The
    // gateway is the flow's original destination, so a floating IP's flows to the same VM
    // socket are not counted. After the filter priority, so that packets the filter chains
    // (Neutron's FORWARD, a firewall) drop are not counted.
    let _ = writeln!(out, "\tchain forward {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook forward priority filter + 10; policy accept;"
    );
    let _ = writeln!(
        out,
        "\t\tct direction original ct status dnat ct original ip daddr . ip daddr . meta l4proto . th dport @{USAGE_SET} comment \"{RULE_COMMENT_PREFIX} usage\""
    );
    let _ = writeln!(
        out,
        "\t\tct direction reply ct status dnat ct original ip daddr . ip saddr . meta l4proto . th sport @{USAGE_SET} comment \"{RULE_COMMENT_PREFIX} usage\""
    );
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "}}");
    out
}

/// Element additions and removals as one transaction. Removals come first so that a re-pointed
/// forward (same key, new target) is a delete and an add of the same key.
pub fn update(changes: &Changes) -> String {
    let mut out = String::new();
    let mut cmd = |verb: &str, set: &str, items: Vec<String>| {
        if !items.is_empty() {
            let _ = writeln!(
                out,
                "{verb} element ip {TABLE} {set} {{ {} }}",
                items.join(", ")
            );
        }
    };
    cmd(
        "delete",
        FORWARDS_MAP,
        changes
            .remove_forwards
            .iter()
            .map(|(k, _)| key(k))
            .collect(),
    );
    cmd(
        "delete",
        RESTRICTED_SET,
        changes.remove_restricted.iter().map(key).collect(),
    );
    cmd(
        "delete",
        ALLOWED_SET,
        changes
            .remove_allowed
            .iter()
            .map(|(k, n)| format!("{} . {n}", key(k)))
            .collect(),
    );
    cmd(
        "delete",
        MASQUERADE_SET,
        changes.remove_masqueraded.iter().map(masq).collect(),
    );
    cmd(
        "delete",
        USAGE_SET,
        changes.remove_counted.iter().map(masq).collect(),
    );
    // Restrictions go in before the forward they guard, in the same transaction anyway.
    cmd(
        "add",
        ALLOWED_SET,
        changes
            .add_allowed
            .iter()
            .map(|(k, n)| format!("{} . {n}", key(k)))
            .collect(),
    );
    cmd(
        "add",
        RESTRICTED_SET,
        changes.add_restricted.iter().map(key).collect(),
    );
    cmd(
        "add",
        MASQUERADE_SET,
        changes.add_masqueraded.iter().map(masq).collect(),
    );
    cmd(
        "add",
        USAGE_SET,
        changes.add_counted.iter().map(masq).collect(),
    );
    cmd(
        "add",
        FORWARDS_MAP,
        changes
            .add_forwards
            .iter()
            .map(|(k, t)| format!("{} : {}", key(k), target(t)))
            .collect(),
    );
    out
}

/// Removes our table; `table {}` first makes it succeed when the table is already gone.
pub fn remove() -> String {
    format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{Forward, Protocol};

    fn sample() -> RuleSet {
        let gw = "203.0.113.10".parse().unwrap();
        let ssh = Forward {
            id: "ssh".into(),
            protocol: Protocol::Tcp,
            external_ip: gw,
            external_ports: "4000".parse().unwrap(),
            internal_ip: "10.0.0.5".parse().unwrap(),
            internal_ports: "22".parse().unwrap(),
            allowed_cidrs: vec!["198.51.100.0/24".parse().unwrap()],
            masquerade: false,
        };
        let dns = Forward {
            id: "dns".into(),
            protocol: Protocol::Udp,
            external_ip: gw,
            external_ports: "4001:4002".parse().unwrap(),
            internal_ip: "10.0.0.6".parse().unwrap(),
            internal_ports: "53".parse().unwrap(),
            allowed_cidrs: vec![],
            masquerade: true,
        };
        RuleSet::from_forwards([&ssh, &dns]).unwrap()
    }

    #[test]
    fn full_table_golden() {
        let expected = r#"table ip praas {}
delete table ip praas
table ip praas {
	map forwards {
		type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
		elements = { 203.0.113.10 . tcp . 4000 : 10.0.0.5 . 22, 203.0.113.10 . udp . 4001 : 10.0.0.6 . 53, 203.0.113.10 . udp . 4002 : 10.0.0.6 . 53 }
	}
	set restricted {
		type ipv4_addr . inet_proto . inet_service
		elements = { 203.0.113.10 . tcp . 4000 }
	}
	set allowed_sources {
		type ipv4_addr . inet_proto . inet_service . ipv4_addr
		flags interval
		elements = { 203.0.113.10 . tcp . 4000 . 198.51.100.0/24 }
	}
	set masqueraded {
		type ipv4_addr . ipv4_addr . inet_proto . inet_service
		elements = { 203.0.113.10 . 10.0.0.6 . udp . 53 }
	}
	set usage {
		type ipv4_addr . ipv4_addr . inet_proto . inet_service
		counter
		elements = { 203.0.113.10 . 10.0.0.5 . tcp . 22, 203.0.113.10 . 10.0.0.6 . udp . 53 }
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr . meta l4proto . th dport @restricted ip daddr . meta l4proto . th dport . ip saddr != @allowed_sources return comment "praas: source not allowed"
		iifname != "qg-*" ip daddr . meta l4proto . th dport @forwards ct label set 127 comment "praas: hairpin"
		dnat ip to ip daddr . meta l4proto . th dport map @forwards comment "praas: forward"
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat ct label 127 masquerade comment "praas: hairpin"
		ct status dnat ct original ip daddr . ip daddr . meta l4proto . th dport @masqueraded masquerade comment "praas: masquerade"
	}
	chain forward {
		type filter hook forward priority filter + 10; policy accept;
		ct direction original ct status dnat ct original ip daddr . ip daddr . meta l4proto . th dport @usage comment "praas: usage"
		ct direction reply ct status dnat ct original ip daddr . ip saddr . meta l4proto . th sport @usage comment "praas: usage"
	}
}
"#;
        assert_eq!(full(&sample()), expected);
    }

    #[test]
    fn empty_rule_set_renders_sets_without_elements() {
        let text = full(&RuleSet::default());
        assert!(!text.contains("elements"), "{text}");
        assert!(text.contains("dnat ip to"));
    }

    #[test]
    fn update_golden_removes_before_it_adds() {
        let old = sample();
        let mut new = old.clone();
        let key = *new.forwards.keys().next().unwrap();
        new.forwards.insert(
            key,
            Target {
                ip: "10.0.0.7".parse().unwrap(),
                port: 2222,
            },
        );
        new.counted = RuleSet::counted_of(&new.forwards);
        let text = update(&old.diff(&new));
        assert_eq!(
            text,
            "delete element ip praas forwards { 203.0.113.10 . tcp . 4000 }\n\
             delete element ip praas usage { 203.0.113.10 . 10.0.0.5 . tcp . 22 }\n\
             add element ip praas usage { 203.0.113.10 . 10.0.0.7 . tcp . 2222 }\n\
             add element ip praas forwards { 203.0.113.10 . tcp . 4000 : 10.0.0.7 . 2222 }\n"
        );
        assert_eq!(update(&new.diff(&new)), "");
    }
}
