//! Allowed sources on OVN: a load balancer has no source match, so a forward with an allowed
//! list gets a `Logical_Router_Policy` of ours on the router that drops what it should not let
//! through. Pure functions, tested without a database.
//!
//! The router pipeline runs its policies (`lr_in_policy`) after un-SNAT and DNAT
//! (`lr_in_dnat`, where the load balancer's `ct_lb_mark` picks the VM), so a policy sees the
//! packet already sent to the VM. OVN 23.03's match language has no field for the
//! connection's original destination (ovn-controller refuses `ct_nw_dst`), so a policy names
//! the forward by its backend. One policy per run of consecutive external ports of one VM with
//! the same allowed list whose VM ports are consecutive too (or all one port):
//!
//! ```text
//! inport == "<gateway port>" && ip4 && ct_mark.natted == 1 && ip4.dst == <vm>
//!   && tcp && tcp.dst >= <first> && tcp.dst <= <last> && ip4.src != {<allowed>}   → drop
//! ```
//!
//! - `inport`: only traffic that arrived through the router's gateway port. A VM of the
//!   router's own networks reaching the forward (hairpin) is load-balanced on its tenant switch
//!   and enters the router, if at all, through a tenant port: the allowed list does not apply
//!   to it (see `docs/design.md`).
//! - `ct_mark.natted == 1`: the connection was load-balanced (OVN's `ct_lb_mark` sets it), so
//!   replies to the VM's own connections through the router's SNAT are not matched. A VM
//!   socket belongs to one mapping per router, so the backend names the forward; a load
//!   balancer of someone else's (Neutron's floating-IP port forwarding) to the same VM socket
//!   would be restricted too.
//! - Priority [`POLICY_PRIORITY`], the highest: no other policy can let a refused source
//!   through.
//!
//! What a policy enforces is written in its `external_ids` (`praas:forward`, `praas:allowed`);
//! reading back recomputes the match from them and counts the policy only when its match,
//! action and priority are exactly that, so an edited policy is drift and is rewritten.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use super::northbound::{reference_set, Replica, Row};
use super::plan::ROUTER_KEY;
use crate::dataplane::{ExternalKey, Protocol, RuleSet};
use crate::ovsdb::value;

/// `external_ids` key: the forwarded key range a policy of ours guards, as
/// `<protocol> <gateway> <first>-<last>`.
pub const FORWARD_KEY: &str = "praas:forward";
/// `external_ids` key: the allowed sources, CIDRs separated by spaces.
pub const ALLOWED_KEY: &str = "praas:allowed";
/// The priority of our policies: the highest `Logical_Router_Policy` allows.
pub const POLICY_PRIORITY: i64 = 32767;
pub const POLICY_ACTION: &str = "drop";

/// One policy of ours: which external ports of one gateway address and protocol it guards, and
/// who may use them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Guard {
    pub protocol: Protocol,
    pub gateway: Ipv4Addr,
    pub first: u16,
    pub last: u16,
    pub vm: Ipv4Addr,
    pub vm_first: u16,
    pub vm_last: u16,
    pub allowed: Vec<Ipv4Net>,
}

impl Guard {
    fn forward_id(&self) -> String {
        format!(
            "{} {} {}-{} {} {}-{}",
            self.protocol,
            self.gateway,
            self.first,
            self.last,
            self.vm,
            self.vm_first,
            self.vm_last
        )
    }

    fn allowed_id(&self) -> String {
        self.allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The guard a policy's `external_ids` describe.
    fn parse(ids: &BTreeMap<String, String>) -> Option<Guard> {
        let mut words = ids.get(FORWARD_KEY)?.split(' ');
        let protocol = match words.next()? {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return None,
        };
        let gateway = words.next()?.parse().ok()?;
        let (first, last) = words.next()?.split_once('-')?;
        let (first, last) = (first.parse().ok()?, last.parse().ok()?);
        let vm = words.next()?.parse().ok()?;
        let (vm_first, vm_last) = words.next()?.split_once('-')?;
        let (vm_first, vm_last) = (vm_first.parse().ok()?, vm_last.parse().ok()?);
        if words.next().is_some() || first > last || vm_first > vm_last {
            return None;
        }
        let allowed: Vec<Ipv4Net> = ids
            .get(ALLOWED_KEY)?
            .split(' ')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        if allowed.is_empty() {
            return None;
        }
        Some(Guard {
            protocol,
            gateway,
            first,
            last,
            vm,
            vm_first,
            vm_last,
            allowed,
        })
    }

    /// The policy's match for a router whose gateway ports are `gateway_ports`.
    pub fn match_text(&self, gateway_ports: &[String]) -> String {
        let inport = match gateway_ports {
            [one] => format!("\"{one}\""),
            many => format!(
                "{{{}}}",
                many.iter()
                    .map(|p| format!("\"{p}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let p = self.protocol;
        let ports = if self.vm_first == self.vm_last {
            format!("{p}.dst == {}", self.vm_first)
        } else {
            format!(
                "{p}.dst >= {} && {p}.dst <= {}",
                self.vm_first, self.vm_last
            )
        };
        format!(
            "inport == {inport} && ip4 && ct_mark.natted == 1 && ip4.dst == {} && {p} && {ports} && ip4.src != {{{}}}",
            self.vm,
            self.allowed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// The guards `rules` needs: consecutive restricted ports of one gateway and protocol with the
/// same allowed list share one.
pub fn guards(rules: &RuleSet) -> Vec<Guard> {
    let mut allowed: BTreeMap<ExternalKey, Vec<Ipv4Net>> = BTreeMap::new();
    for (key, net) in &rules.allowed {
        if rules.restricted.contains(key) {
            allowed.entry(*key).or_default().push(*net);
        }
    }
    // ExternalKey orders by gateway, protocol, port: runs are neighbours.
    let mut out: Vec<Guard> = Vec::new();
    for (key, mut nets) in allowed {
        let Some(target) = rules.forwards.get(&key) else {
            continue;
        };
        nets.sort();
        if let Some(last) = out.last_mut() {
            let next = |port: u16| u32::from(port) + 1;
            let shifted = u32::from(last.vm_last)
                == u32::from(last.vm_first) + u32::from(last.last - last.first)
                && next(last.vm_last) == u32::from(target.port);
            let fanned = last.vm_first == last.vm_last && last.vm_last == target.port;
            if last.gateway == key.ip
                && last.protocol == key.protocol
                && last.vm == target.ip
                && last.allowed == nets
                && next(last.last) == u32::from(key.port)
                && (shifted || fanned)
            {
                last.last = key.port;
                last.vm_last = target.port;
                continue;
            }
        }
        out.push(Guard {
            protocol: key.protocol,
            gateway: key.ip,
            first: key.port,
            last: key.port,
            vm: target.ip,
            vm_first: target.port,
            vm_last: target.port,
            allowed: nets,
        });
    }
    out
}

/// One `Logical_Router_Policy` of ours on the router, as the replica holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OurPolicy {
    pub uuid: String,
    pub priority: Option<i64>,
    pub match_text: String,
    pub action: String,
    pub external_ids: BTreeMap<String, String>,
}

impl OurPolicy {
    /// The guard this policy enforces, when it is exactly what we would write for it.
    pub fn guard(&self, gateway_ports: &[String]) -> Option<Guard> {
        let guard = Guard::parse(&self.external_ids)?;
        let exact = self.priority == Some(POLICY_PRIORITY)
            && self.action == POLICY_ACTION
            && !gateway_ports.is_empty()
            && self.match_text == guard.match_text(gateway_ports);
        exact.then_some(guard)
    }
}

/// The router's gateway ports (`Logical_Router_Port`s with a gateway chassis, an HA chassis
/// group or a redirect chassis), by name.
pub fn is_gateway_port(lrp: &Row) -> bool {
    !reference_set(lrp, "gateway_chassis").is_empty()
        || !reference_set(lrp, "ha_chassis_group").is_empty()
        || lrp
            .get("options")
            .map(value::string_map)
            .is_some_and(|o| o.contains_key("redirect-chassis"))
}

/// The policies of ours among `router`'s, sorted by uuid.
pub fn ours_on(replica: &Replica, router: &Row, router_id: &str) -> Vec<OurPolicy> {
    let mut ours: Vec<OurPolicy> = reference_set(router, "policies")
        .iter()
        .filter_map(|uuid| {
            replica
                .row("Logical_Router_Policy", uuid)
                .map(|r| (uuid, r))
        })
        .filter(|(_, row)| {
            row.get("external_ids")
                .map(value::string_map)
                .and_then(|ids| ids.get(ROUTER_KEY).cloned())
                .as_deref()
                == Some(router_id)
        })
        .map(|(uuid, row)| OurPolicy {
            uuid: uuid.clone(),
            priority: row.get("priority").and_then(Value::as_i64),
            match_text: row
                .get("match")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            action: row
                .get("action")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            external_ids: row
                .get("external_ids")
                .map(value::string_map)
                .unwrap_or_default(),
        })
        .collect();
    ours.sort_by(|a, b| a.uuid.cmp(&b.uuid));
    ours
}

/// Adds what the policies enforce to `rules` (restricted keys and their allowed sources).
pub fn read_into(rules: &mut RuleSet, ours: &[OurPolicy], gateway_ports: &[String]) {
    for guard in ours.iter().filter_map(|p| p.guard(gateway_ports)) {
        for port in guard.first..=guard.last {
            let key = ExternalKey {
                ip: guard.gateway,
                protocol: guard.protocol,
                port,
            };
            rules.restricted.insert(key);
            rules
                .allowed
                .extend(guard.allowed.iter().map(|net| (key, *net)));
        }
    }
}

/// The operations that make the router `router_uuid` hold exactly the policies `rules` needs
/// among ours: policies that are not exactly wanted are dropped from `Logical_Router.policies`
/// (which deletes them: the table is not a root table), missing ones inserted and referenced.
pub fn plan(
    router_id: &str,
    router_uuid: &str,
    gateway_ports: &[String],
    ours: &[OurPolicy],
    rules: &RuleSet,
) -> Vec<Value> {
    let wanted: BTreeSet<Guard> = if gateway_ports.is_empty() {
        BTreeSet::new()
    } else {
        guards(rules).into_iter().collect()
    };
    let mut have: BTreeSet<Guard> = BTreeSet::new();
    let mut remove: Vec<Value> = Vec::new();
    for policy in ours {
        match policy.guard(gateway_ports) {
            Some(guard) if wanted.contains(&guard) && !have.contains(&guard) => {
                have.insert(guard);
            }
            _ => remove.push(value::uuid(&policy.uuid)),
        }
    }
    let mut ops = Vec::new();
    let mut add: Vec<Value> = Vec::new();
    for (i, guard) in wanted.difference(&have).enumerate() {
        let named = format!("policy_{i}");
        let (forward, allowed) = (guard.forward_id(), guard.allowed_id());
        ops.push(
            json!({"op": "insert", "table": "Logical_Router_Policy", "uuid-name": named,
            "row": {
                "priority": POLICY_PRIORITY,
                "match": guard.match_text(gateway_ports),
                "action": POLICY_ACTION,
                "external_ids": value::map([
                    (ROUTER_KEY, router_id),
                    (FORWARD_KEY, forward.as_str()),
                    (ALLOWED_KEY, allowed.as_str()),
                ]),
            }}),
        );
        add.push(value::named_uuid(&named));
    }
    let mut mutations = Vec::new();
    if !remove.is_empty() {
        mutations.push(json!(["policies", "delete", value::set(remove)]));
    }
    if !add.is_empty() {
        mutations.push(json!(["policies", "insert", value::set(add)]));
    }
    if !mutations.is_empty() {
        ops.push(json!({"op": "mutate", "table": "Logical_Router",
            "where": [["_uuid", "==", value::uuid(router_uuid)]], "mutations": mutations}));
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{Forward, PortRange};

    fn forward(id: &str, ext: (u16, u16), int: (u16, u16), allowed: &[&str]) -> Forward {
        Forward {
            id: id.into(),
            external_ip: Ipv4Addr::new(203, 0, 113, 10),
            protocol: Protocol::Tcp,
            external_ports: PortRange::new(ext.0, ext.1).unwrap(),
            internal_ip: Ipv4Addr::new(10, 0, 0, 5),
            internal_ports: PortRange::new(int.0, int.1).unwrap(),
            allowed_cidrs: allowed.iter().map(|c| c.parse().unwrap()).collect(),
            masquerade: false,
        }
    }

    #[test]
    fn consecutive_ports_of_one_vm_with_one_allowed_list_share_one_guard_and_others_get_their_own()
    {
        let list = ["198.51.100.0/24", "192.0.2.7/32"];
        let rules = RuleSet::from_forwards(&[
            forward("shift", (4000, 4009), (8000, 8009), &list),
            forward("next", (4010, 4010), (8010, 8010), &list),
            forward("fan-in", (4011, 4013), (22, 22), &list),
            forward("other-list", (4014, 4014), (23, 23), &["192.0.2.0/24"]),
            forward("open", (5000, 5000), (24, 24), &[]),
        ])
        .unwrap();
        let gw = ["lrp-gw".to_string()];
        let texts: Vec<String> = guards(&rules).iter().map(|g| g.match_text(&gw)).collect();
        let head =
            "inport == \"lrp-gw\" && ip4 && ct_mark.natted == 1 && ip4.dst == 10.0.0.5 && tcp";
        let list = "ip4.src != {192.0.2.7/32, 198.51.100.0/24}";
        assert_eq!(
            texts,
            [
                format!("{head} && tcp.dst >= 8000 && tcp.dst <= 8010 && {list}"),
                format!("{head} && tcp.dst == 22 && {list}"),
                format!("{head} && tcp.dst == 23 && ip4.src != {{192.0.2.0/24}}"),
            ]
        );
        let ranges: Vec<(u16, u16)> = guards(&rules).iter().map(|g| (g.first, g.last)).collect();
        assert_eq!(ranges, [(4000, 4010), (4011, 4013), (4014, 4014)]);
    }

    fn policy_row(guard: &Guard, gw: &[String]) -> OurPolicy {
        OurPolicy {
            uuid: "p1".into(),
            priority: Some(POLICY_PRIORITY),
            match_text: guard.match_text(gw),
            action: "drop".into(),
            external_ids: [
                (ROUTER_KEY.to_string(), "r1".to_string()),
                (FORWARD_KEY.to_string(), guard.forward_id()),
                (ALLOWED_KEY.to_string(), guard.allowed_id()),
            ]
            .into(),
        }
    }

    #[test]
    fn a_policy_reads_back_as_its_keys_only_while_its_match_is_exactly_ours() {
        let rules =
            RuleSet::from_forwards(&[forward("a", (4000, 4001), (4000, 4001), &["192.0.2.0/24"])])
                .unwrap();
        let gw = ["lrp-gw".to_string()];
        let guard = guards(&rules).remove(0);
        let mut row = policy_row(&guard, &gw);
        let mut read = RuleSet::default();
        read_into(&mut read, std::slice::from_ref(&row), &gw);
        assert_eq!(
            (&read.restricted, &read.allowed),
            (&rules.restricted, &rules.allowed)
        );
        assert!(plan("r1", "lr1", &gw, std::slice::from_ref(&row), &rules).is_empty());
        // Another gateway port, an edited match or action: not ours as written, replaced.
        assert!(row.guard(&["lrp-other".to_string()]).is_none());
        row.match_text = row.match_text.replace("ip4.src != ", "ip4.src == ");
        assert!(row.guard(&gw).is_none());
        let ops = plan("r1", "lr1", &gw, std::slice::from_ref(&row), &rules);
        assert_eq!(ops.len(), 2, "{ops:#?}");
        assert_eq!(ops[0]["op"], "insert");
        assert_eq!(ops[0]["row"]["match"], guard.match_text(&gw));
        assert_eq!(
            ops[1]["mutations"],
            json!([
                ["policies", "delete", ["set", [["uuid", "p1"]]]],
                ["policies", "insert", ["set", [["named-uuid", "policy_0"]]]]
            ])
        );
        // Nothing restricted: ours go.
        let ops = plan(
            "r1",
            "lr1",
            &gw,
            &[policy_row(&guard, &gw)],
            &RuleSet::default(),
        );
        assert_eq!(
            ops,
            [
                json!({"op": "mutate", "table": "Logical_Router", "where": [["_uuid", "==", ["uuid", "lr1"]]],
                "mutations": [["policies", "delete", ["set", [["uuid", "p1"]]]]]})
            ]
        );
    }
}
