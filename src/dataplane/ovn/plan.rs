//! What the OVN driver writes, worked out from the replica alone: the load balancers a router's
//! rule set needs, what of ours the northbound database holds for that router, and the one
//! transaction that turns the one into the other. Pure functions, tested without a database.
//!
//! Layout (see `docs/design.md`, "OVN"): per router, protocol and VM address one
//! `Load_Balancer` named `praas-<router_id>-<protocol>-<vm address>`, `external_ids`
//! `praas:router_id`, `praas:protocol` and `praas:backend`, its `vips` map holding one
//! `gateway:port` → `vm:port` entry per port forwarded to that VM; attached to the logical
//! router `neutron-<router_id>` and to the router's tenant switches (so that a VM can reach a
//! forward of its own router: hairpin). Rows without those marks are never touched.
//!
//! One load balancer per VM rather than one per router: OVN reprocesses a changed load
//! balancer whole, so a change costs with the size of the row it touches (`benches/ovn.rs`: at
//! 10,000 forwards on a router, +1 took 1.3 s to reach the chassis as one row of 10,000 VIPs,
//! 0.7 s as 500 rows of 20, Neutron's own layout per floating IP).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};

use serde_json::{json, Value};

use super::northbound::{reference_set, Replica, Row};
use super::policy::{self, OurPolicy};
use crate::dataplane::{ExternalKey, Protocol, RuleSet, Target};
use crate::ovsdb::value;

/// `external_ids` key naming the router a load balancer of ours serves.
pub const ROUTER_KEY: &str = "praas:router_id";
/// `external_ids` key naming its protocol.
pub const PROTOCOL_KEY: &str = "praas:protocol";
/// `external_ids` key naming the VM address it forwards to.
pub const BACKEND_KEY: &str = "praas:backend";
/// Every load balancer of ours is named with this prefix.
pub const NAME_PREFIX: &str = "praas-";

/// The logical router Neutron's OVN driver makes for a router.
pub fn router_name(router_id: &str) -> String {
    format!("neutron-{router_id}")
}

/// Which load balancer of ours a forward lives in: one per router, protocol and VM address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LbKey {
    pub protocol: Protocol,
    pub backend: Ipv4Addr,
}

pub fn lb_name(router_id: &str, key: LbKey) -> String {
    format!("{NAME_PREFIX}{router_id}-{}-{}", key.protocol, key.backend)
}

/// The key a row of ours serves, if its name and protocol agree on one.
fn lb_key(router_id: &str, lb: &OurLb) -> Option<LbKey> {
    let protocol = match lb.protocol.as_deref()? {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return None,
    };
    let backend = lb
        .name
        .strip_prefix(&format!("{NAME_PREFIX}{router_id}-{protocol}-"))?
        .parse()
        .ok()?;
    Some(LbKey { protocol, backend })
}

/// `Load_Balancer.options` of ours: `ct_flush` makes ovn-controller delete the conntrack
/// entries of a VIP or backend that is removed (OVN 23.03 and later; for load balancers
/// attached to a logical switch, which ours are), so that established connections end with
/// their mapping.
pub const LB_OPTIONS: [(&str, &str); 1] = [("ct_flush", "true")];

/// One load balancer of ours, as the replica holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OurLb {
    pub uuid: String,
    pub name: String,
    pub protocol: Option<String>,
    pub vips: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
}

/// A logical router and what is attached to it, as far as the driver cares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RouterView {
    pub uuid: String,
    /// `Logical_Router.load_balancer`.
    pub load_balancers: BTreeSet<String>,
    /// The router's tenant switches (reached through a router port that is not a gateway
    /// port), with their `load_balancer` column.
    pub tenant_switches: BTreeMap<String, BTreeSet<String>>,
    /// Our load balancers for this router.
    pub ours: Vec<OurLb>,
    /// Other routers and switches that reference one of ours: (table, uuid, which of ours),
    /// sorted.
    pub elsewhere: Vec<(&'static str, String, BTreeSet<String>)>,
    /// The router's gateway ports, by name (where allowed sources are enforced).
    pub gateway_ports: Vec<String>,
    /// Our `Logical_Router_Policy` rows on the router (allowed sources).
    pub policies: Vec<OurPolicy>,
}

fn is_ours(row: &Row, router_id: &str) -> bool {
    is_any_ours(row).as_deref() == Some(router_id)
}

/// Whether a load balancer row is one of ours (for any router).
pub fn is_any_ours(row: &Row) -> Option<String> {
    let name = row.get("name").and_then(Value::as_str).unwrap_or("");
    if !name.starts_with(NAME_PREFIX) {
        return None;
    }
    row.get("external_ids")
        .map(value::string_map)
        .unwrap_or_default()
        .remove(ROUTER_KEY)
}

fn our_lb(uuid: &str, row: &Row) -> OurLb {
    OurLb {
        uuid: uuid.to_string(),
        name: row
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        protocol: row
            .get("protocol")
            .map(value::string_set)
            .and_then(|p| p.into_iter().next()),
        vips: row.get("vips").map(value::string_map).unwrap_or_default(),
        options: row
            .get("options")
            .map(value::string_map)
            .unwrap_or_default(),
        external_ids: row
            .get("external_ids")
            .map(value::string_map)
            .unwrap_or_default(),
    }
}

/// The replica's rows a router's view is made of, indexed in one pass over the replica: the
/// views of all routers then cost about one pass in all, not one pass per router.
struct Index<'a> {
    replica: &'a Replica,
    /// Logical routers by name (the lowest uuid where a name repeats).
    routers: HashMap<&'a str, &'a String>,
    /// Router-type logical switch ports by the router port they peer with.
    peers: HashMap<String, Vec<&'a String>>,
    /// The switches holding each router-type switch port.
    switches_of_port: HashMap<&'a String, Vec<&'a String>>,
    /// Our load balancers by router id, sorted by uuid.
    ours: HashMap<String, Vec<OurLb>>,
    /// Each router and switch referencing load balancers of ours: (table, uuid) → them.
    holders: HashMap<&'a String, Vec<(&'static str, &'a String)>>,
}

impl<'a> Index<'a> {
    fn new(replica: &'a Replica) -> Index<'a> {
        let mut routers: HashMap<&str, &String> = HashMap::new();
        for (uuid, row) in replica.rows("Logical_Router") {
            if let Some(name) = row.get("name").and_then(Value::as_str) {
                let slot = routers.entry(name).or_insert(uuid);
                if uuid < *slot {
                    *slot = uuid;
                }
            }
        }
        let mut peers: HashMap<String, Vec<&String>> = HashMap::new();
        for (uuid, lsp) in replica.rows("Logical_Switch_Port") {
            if lsp.get("type").and_then(Value::as_str) != Some("router") {
                continue;
            }
            if let Some(rp) = lsp
                .get("options")
                .map(value::string_map)
                .and_then(|mut o| o.remove("router-port"))
            {
                peers.entry(rp).or_default().push(uuid);
            }
        }
        let router_ports: BTreeSet<&String> = peers.values().flatten().copied().collect();
        let mut switches_of_port: HashMap<&String, Vec<&String>> = HashMap::new();
        let mut ours: HashMap<String, Vec<OurLb>> = HashMap::new();
        let mut ours_uuids: BTreeSet<&String> = BTreeSet::new();
        for (uuid, row) in replica.rows("Load_Balancer") {
            if let Some(router_id) = is_any_ours(row) {
                ours.entry(router_id).or_default().push(our_lb(uuid, row));
                ours_uuids.insert(uuid);
            }
        }
        for lbs in ours.values_mut() {
            lbs.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        }
        let mut holders: HashMap<&String, Vec<(&'static str, &String)>> = HashMap::new();
        for table in ["Logical_Router", "Logical_Switch"] {
            for (uuid, row) in replica.rows(table) {
                if table == "Logical_Switch" {
                    // Only switches that hold a router port can be a router's tenant switch.
                    for port in reference_set(row, "ports") {
                        if let Some(port) = router_ports.get(&port) {
                            switches_of_port.entry(port).or_default().push(uuid);
                        }
                    }
                }
                if ours_uuids.is_empty() {
                    continue;
                }
                for lb in reference_set(row, "load_balancer") {
                    if let Some(lb) = ours_uuids.get(&lb) {
                        holders.entry(lb).or_default().push((table, uuid));
                    }
                }
            }
        }
        Index {
            replica,
            routers,
            peers,
            switches_of_port,
            ours,
            holders,
        }
    }

    /// The view of router `router_id`, or `None` when its logical router is not there.
    fn view(&self, router_id: &str) -> Option<RouterView> {
        let replica = self.replica;
        let uuid = *self.routers.get(router_name(router_id).as_str())?;
        let router = replica.row("Logical_Router", uuid)?;
        // Router ports that lead to tenant networks: not the gateway port.
        let (gateway_ports, tenant_ports): (Vec<&Row>, Vec<&Row>) = reference_set(router, "ports")
            .iter()
            .filter_map(|p| replica.row("Logical_Router_Port", p))
            .partition(|lrp| policy::is_gateway_port(lrp));
        let port_name = |lrp: &&Row| lrp.get("name").and_then(Value::as_str).map(str::to_string);
        let mut gateway_ports: Vec<String> = gateway_ports.iter().filter_map(port_name).collect();
        gateway_ports.sort();
        // The switches whose router-type ports peer with those router ports.
        let mut tenant_switches = BTreeMap::new();
        for name in tenant_ports.iter().filter_map(port_name) {
            for peer in self.peers.get(&name).into_iter().flatten() {
                for switch in self.switches_of_port.get(peer).into_iter().flatten() {
                    if let Some(ls) = replica.row("Logical_Switch", switch) {
                        tenant_switches.insert(
                            (*switch).clone(),
                            reference_set(ls, "load_balancer").into_iter().collect(),
                        );
                    }
                }
            }
        }
        let ours = self.ours.get(router_id).cloned().unwrap_or_default();
        let mut elsewhere: BTreeMap<(&'static str, &String), BTreeSet<String>> = BTreeMap::new();
        for lb in &ours {
            for (table, holder) in self.holders.get(&lb.uuid).into_iter().flatten() {
                if *holder == uuid
                    || (*table == "Logical_Switch" && tenant_switches.contains_key(*holder))
                {
                    continue;
                }
                elsewhere
                    .entry((*table, *holder))
                    .or_default()
                    .insert(lb.uuid.clone());
            }
        }
        Some(RouterView {
            uuid: uuid.clone(),
            load_balancers: reference_set(router, "load_balancer").into_iter().collect(),
            tenant_switches,
            ours,
            elsewhere: elsewhere
                .into_iter()
                .map(|((table, holder), lbs)| (table, holder.clone(), lbs))
                .collect(),
            policies: policy::ours_on(replica, router, router_id),
            gateway_ports,
        })
    }
}

/// The router's view, or `None` when the logical router is not in the database.
pub fn router_view(replica: &Replica, router_id: &str) -> Option<RouterView> {
    Index::new(replica).view(router_id)
}

/// The view of every Neutron router (`neutron-<id>`) in the database, by router id: about the
/// cost of one [`router_view`].
pub fn router_views(replica: &Replica) -> HashMap<String, RouterView> {
    let index = Index::new(replica);
    index
        .routers
        .keys()
        .filter_map(|name| name.strip_prefix("neutron-"))
        .filter(|id| !id.is_empty())
        .filter_map(|id| Some((id.to_string(), index.view(id)?)))
        .collect()
}

fn vip_key(key: &ExternalKey) -> String {
    SocketAddrV4::new(key.ip, key.port).to_string()
}

fn backend_of(target: &Target) -> String {
    SocketAddrV4::new(target.ip, target.port).to_string()
}

/// The `vips` each load balancer of ours must hold for `rules`.
pub fn desired_vips(rules: &RuleSet) -> BTreeMap<LbKey, BTreeMap<String, String>> {
    let mut out: BTreeMap<LbKey, BTreeMap<String, String>> = BTreeMap::new();
    for (key, target) in &rules.forwards {
        let lb = LbKey {
            protocol: key.protocol,
            backend: target.ip,
        };
        out.entry(lb)
            .or_default()
            .insert(vip_key(key), backend_of(target));
    }
    out
}

/// What the router's load balancers forward, as a rule set: the VIPs of our load balancers
/// that are attached to the router and to every tenant switch. A VIP of a detached load
/// balancer forwards nothing (or forwards without hairpin), so it is not counted as there.
pub fn rules_of(view: &RouterView) -> RuleSet {
    let mut rules = RuleSet::default();
    for lb in &view.ours {
        let attached = view.load_balancers.contains(&lb.uuid)
            && view
                .tenant_switches
                .values()
                .all(|lbs| lbs.contains(&lb.uuid));
        let protocol = match lb.protocol.as_deref() {
            Some("udp") => Protocol::Udp,
            Some("tcp") | None => Protocol::Tcp,
            Some(_) => continue,
        };
        if !attached {
            continue;
        }
        for (vip, backend) in &lb.vips {
            let (Ok(vip), Ok(backend)) =
                (vip.parse::<SocketAddrV4>(), backend.parse::<SocketAddrV4>())
            else {
                continue;
            };
            rules.forwards.insert(
                ExternalKey {
                    ip: *vip.ip(),
                    protocol,
                    port: vip.port(),
                },
                Target {
                    ip: *backend.ip(),
                    port: backend.port(),
                },
            );
        }
    }
    rules.counted = RuleSet::counted_of(&rules.forwards);
    policy::read_into(&mut rules, &view.policies, &view.gateway_ports);
    rules
}

/// The operations that turn what `view` shows into `rules`: empty when nothing differs.
pub fn plan(router_id: &str, view: &RouterView, rules: &RuleSet) -> Vec<Value> {
    let desired = desired_vips(rules);
    let mut ops = Vec::new();
    // The load balancers of ours that are kept (uuid) or inserted (named uuid).
    let mut keep: Vec<Value> = Vec::new();
    let mut delete: BTreeSet<String> = BTreeSet::new();
    // Ours by the key they serve; of duplicates the first is kept. Rows of ours whose name or
    // protocol match no key (edited by hand, or of an earlier layout) are deleted.
    let mut existing: BTreeMap<LbKey, &OurLb> = BTreeMap::new();
    for lb in &view.ours {
        match lb_key(router_id, lb) {
            Some(key) if !existing.contains_key(&key) => {
                existing.insert(key, lb);
            }
            _ => {
                delete.insert(lb.uuid.clone());
            }
        }
    }
    let keys: BTreeSet<LbKey> = existing.keys().chain(desired.keys()).copied().collect();
    for (i, key) in keys.into_iter().enumerate() {
        match (existing.get(&key), desired.get(&key)) {
            (Some(lb), Some(vips)) => {
                ops.extend(update(lb, key, vips));
                keep.push(value::uuid(&lb.uuid));
            }
            (Some(lb), None) => {
                delete.insert(lb.uuid.clone());
            }
            (None, Some(vips)) => {
                let named = format!("lb{i}");
                let backend = key.backend.to_string();
                ops.push(json!({"op": "insert", "table": "Load_Balancer", "uuid-name": named,
                    "row": {
                        "name": lb_name(router_id, key),
                        "protocol": key.protocol.as_str(),
                        "vips": ["map", vips.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()],
                        "external_ids": value::map([
                            (ROUTER_KEY, router_id),
                            (PROTOCOL_KEY, key.protocol.as_str()),
                            (BACKEND_KEY, backend.as_str()),
                        ]),
                        "options": value::map(LB_OPTIONS),
                    }}));
                keep.push(value::named_uuid(&named));
            }
            (None, None) => {}
        }
    }
    // Attachments: the router and every tenant switch hold exactly the kept ones of ours.
    let kept_uuids: BTreeSet<String> = keep
        .iter()
        .filter_map(|v| value::as_uuid(v).map(str::to_string))
        .collect();
    let ours: BTreeSet<&String> = view.ours.iter().map(|lb| &lb.uuid).collect();
    let attach = |table: &str, uuid: &str, current: &BTreeSet<String>, ops: &mut Vec<Value>| {
        let add: Vec<Value> = keep
            .iter()
            .filter(|v| value::as_uuid(v).is_none_or(|u| !current.contains(u)))
            .cloned()
            .collect();
        let remove: Vec<Value> = current
            .iter()
            .filter(|u| ours.contains(u) && !kept_uuids.contains(*u))
            .map(|u| value::uuid(u))
            .collect();
        let mut mutations = Vec::new();
        if !remove.is_empty() {
            mutations.push(json!(["load_balancer", "delete", value::set(remove)]));
        }
        if !add.is_empty() {
            mutations.push(json!(["load_balancer", "insert", value::set(add)]));
        }
        if !mutations.is_empty() {
            ops.push(json!({"op": "mutate", "table": table,
                "where": [["_uuid", "==", value::uuid(uuid)]], "mutations": mutations}));
        }
    };
    attach("Logical_Router", &view.uuid, &view.load_balancers, &mut ops);
    ops.extend(policy::plan(
        router_id,
        &view.uuid,
        &view.gateway_ports,
        &view.policies,
        rules,
    ));
    for (switch, lbs) in &view.tenant_switches {
        attach("Logical_Switch", switch, lbs, &mut ops);
    }
    for (table, other, refs) in &view.elsewhere {
        ops.push(json!({"op": "mutate", "table": table,
            "where": [["_uuid", "==", value::uuid(other)]],
            "mutations": [["load_balancer", "delete", value::set(refs.iter().map(|u| value::uuid(u)))]]}));
    }
    // Deleted last: nothing references them any more in this transaction.
    for uuid in &delete {
        ops.push(json!({"op": "delete", "table": "Load_Balancer",
            "where": [["_uuid", "==", value::uuid(uuid)]]}));
    }
    ops
}

/// The operations that make the kept load balancer `lb` hold `vips`, its options and marks.
fn update(lb: &OurLb, key: LbKey, vips: &BTreeMap<String, String>) -> Vec<Value> {
    let mut ops = Vec::new();
    let this = json!([["_uuid", "==", value::uuid(&lb.uuid)]]);
    let remove: Vec<Value> = lb
        .vips
        .iter()
        .filter(|(vip, backend)| vips.get(*vip) != Some(*backend))
        .map(|(vip, _)| json!(vip))
        .collect();
    let add: Vec<Value> = vips
        .iter()
        .filter(|(vip, backend)| lb.vips.get(*vip) != Some(*backend))
        .map(|(vip, backend)| json!([vip, backend]))
        .collect();
    let mut mutations = Vec::new();
    if !remove.is_empty() {
        mutations.push(json!(["vips", "delete", ["set", remove]]));
    }
    if !add.is_empty() {
        mutations.push(json!(["vips", "insert", ["map", add]]));
    }
    if !mutations.is_empty() {
        ops.push(
            json!({"op": "mutate", "table": "Load_Balancer", "where": this,
            "mutations": mutations}),
        );
    }
    if LB_OPTIONS
        .iter()
        .any(|(k, v)| lb.options.get(*k).map(String::as_str) != Some(*v))
    {
        let keys: Vec<&str> = LB_OPTIONS.iter().map(|(k, _)| *k).collect();
        ops.push(
            json!({"op": "mutate", "table": "Load_Balancer", "where": this,
            "mutations": [
                ["options", "delete", ["set", keys]],
                ["options", "insert", value::map(LB_OPTIONS)],
            ]}),
        );
    }
    let backend = key.backend.to_string();
    let marks = [
        (PROTOCOL_KEY, key.protocol.as_str()),
        (BACKEND_KEY, backend.as_str()),
    ];
    if marks
        .iter()
        .any(|(k, v)| lb.external_ids.get(*k).map(String::as_str) != Some(*v))
    {
        ops.push(
            json!({"op": "mutate", "table": "Load_Balancer", "where": this,
            "mutations": [
                ["external_ids", "delete", ["set", [PROTOCOL_KEY, BACKEND_KEY]]],
                ["external_ids", "insert", value::map(marks)],
            ]}),
        );
    }
    ops
}

/// The operations that remove everything of ours for `router_id`, wherever it is attached
/// (also when the logical router itself is gone).
pub fn removal(replica: &Replica, router_id: &str) -> Vec<Value> {
    let ours: BTreeSet<String> = replica
        .rows("Load_Balancer")
        .filter(|(_, row)| is_ours(row, router_id))
        .map(|(uuid, _)| uuid.clone())
        .collect();
    let mut ops = Vec::new();
    // Policies live only as long as a router references them: gone with the router.
    let name = router_name(router_id);
    for (uuid, router) in replica.rows("Logical_Router") {
        if router.get("name").and_then(Value::as_str) == Some(name.as_str()) {
            let policies = policy::ours_on(replica, router, router_id);
            ops.extend(policy::plan(
                router_id,
                uuid,
                &[],
                &policies,
                &RuleSet::default(),
            ));
        }
    }
    for table in ["Logical_Router", "Logical_Switch"] {
        for (uuid, row) in replica.rows(table) {
            let refs: Vec<Value> = reference_set(row, "load_balancer")
                .into_iter()
                .filter(|lb| ours.contains(lb))
                .map(|lb| value::uuid(&lb))
                .collect();
            if !refs.is_empty() {
                ops.push(json!({"op": "mutate", "table": table,
                    "where": [["_uuid", "==", value::uuid(uuid)]],
                    "mutations": [["load_balancer", "delete", value::set(refs)]]}));
            }
        }
    }
    for uuid in &ours {
        ops.push(json!({"op": "delete", "table": "Load_Balancer",
            "where": [["_uuid", "==", value::uuid(uuid)]]}));
    }
    ops
}

/// The routers whose load balancers of ours are in the database (for orphan cleanup).
pub fn routers_with_ours(replica: &Replica) -> BTreeSet<String> {
    replica
        .rows("Load_Balancer")
        .filter_map(|(_, row)| is_any_ours(row))
        .collect()
}

/// The ids of the Neutron routers in the database (`neutron-<id>` logical routers).
pub fn neutron_routers(replica: &Replica) -> BTreeSet<String> {
    replica
        .rows("Logical_Router")
        .filter_map(|(_, row)| row.get("name").and_then(Value::as_str))
        .filter_map(|name| name.strip_prefix("neutron-"))
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{Forward, PortRange};
    use std::net::Ipv4Addr;

    fn replica(rows: Value) -> Replica {
        let mut r = Replica::default();
        for (table, rows) in rows.as_object().unwrap() {
            let stored = r.tables.entry(table.clone()).or_default();
            for (uuid, row) in rows.as_object().unwrap() {
                stored.insert(uuid.clone(), row.as_object().unwrap().clone());
            }
        }
        r
    }

    fn base() -> Value {
        json!({
            "Logical_Router": {"lr1": {"name": "neutron-r1", "ports": ["set", [["uuid", "gw"], ["uuid", "int"]]],
                                         "load_balancer": ["set", [["uuid", "pf"]]]}},
            "Logical_Router_Port": {
                "gw": {"name": "lrp-gw", "gateway_chassis": ["uuid", "gc"], "ha_chassis_group": ["set", []], "options": ["map", []]},
                "int": {"name": "lrp-int", "gateway_chassis": ["set", []], "ha_chassis_group": ["set", []], "options": ["map", []]}},
            "Logical_Switch_Port": {
                "p-int": {"name": "x", "type": "router", "options": ["map", [["router-port", "lrp-int"]]]},
                "p-gw": {"name": "y", "type": "router", "options": ["map", [["router-port", "lrp-gw"]]]}},
            "Logical_Switch": {
                "ls-int": {"name": "neutron-int", "ports": ["uuid", "p-int"], "load_balancer": ["set", []]},
                "ls-ext": {"name": "neutron-ext", "ports": ["uuid", "p-gw"], "load_balancer": ["set", []]}},
            "Load_Balancer": {
                "pf": {"name": "pf-floatingip-f1-tcp", "protocol": "tcp", "vips": ["map", []],
                       "options": ["map", []], "external_ids": ["map", [["neutron:fip_id", "f1"]]]}},
        })
    }

    /// A TCP load balancer of ours for r1 and `vm`, as the database holds it.
    fn our_row(vm: &str, vips: Value) -> Value {
        json!({"name": format!("praas-r1-tcp-{vm}"), "protocol": "tcp",
               "options": ["map", [["ct_flush", "true"]]], "vips": vips,
               "external_ids": ["map", [["praas:router_id", "r1"], ["praas:protocol", "tcp"],
                                        ["praas:backend", vm]]]})
    }

    /// The one VIP of `rules()`.
    fn one_vip() -> Value {
        json!(["map", [["203.0.113.10:4000", "10.0.0.5:22"]]])
    }

    fn rules() -> RuleSet {
        RuleSet::from_forwards([&Forward {
            id: "m1".into(),
            external_ip: Ipv4Addr::new(203, 0, 113, 10),
            protocol: Protocol::Tcp,
            external_ports: PortRange::new(4000, 4000).unwrap(),
            internal_ip: Ipv4Addr::new(10, 0, 0, 5),
            internal_ports: PortRange::new(22, 22).unwrap(),
            allowed_cidrs: vec![],
            masquerade: false,
        }])
        .unwrap()
    }

    #[test]
    fn a_new_forward_is_one_insert_attached_to_the_router_and_its_tenant_switch() {
        let r = replica(base());
        let view = router_view(&r, "r1").unwrap();
        assert_eq!(view.tenant_switches.keys().collect::<Vec<_>>(), ["ls-int"]);
        assert!(
            view.ours.is_empty(),
            "Neutron's floating IP forward is not ours"
        );
        let ops = plan("r1", &view, &rules());
        let kinds: Vec<(String, String)> = ops
            .iter()
            .map(|op| {
                (
                    op["op"].as_str().unwrap().into(),
                    op["table"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("insert".into(), "Load_Balancer".into()),
                ("mutate".into(), "Logical_Router".into()),
                ("mutate".into(), "Logical_Switch".into()),
            ]
        );
        assert_eq!(ops[0]["row"]["name"], "praas-r1-tcp-10.0.0.5");
        assert_eq!(
            ops[0]["row"]["external_ids"],
            json!([
                "map",
                [
                    ["praas:router_id", "r1"],
                    ["praas:protocol", "tcp"],
                    ["praas:backend", "10.0.0.5"]
                ]
            ])
        );
        assert_eq!(
            ops[0]["row"]["vips"],
            json!(["map", [["203.0.113.10:4000", "10.0.0.5:22"]]])
        );
        assert_eq!(
            ops[2]["where"],
            json!([["_uuid", "==", ["uuid", "ls-int"]]])
        );
        assert_eq!(
            ops[1]["mutations"],
            json!([["load_balancer", "insert", ["set", [["named-uuid", "lb0"]]]]])
        );
    }

    #[test]
    fn a_duplicate_or_foreign_named_row_of_ours_is_deleted_after_being_detached() {
        let mut rows = base();
        rows["Load_Balancer"]["a"] = our_row("10.0.0.5", one_vip());
        rows["Load_Balancer"]["b"] = our_row("10.0.0.5", one_vip());
        rows["Logical_Router"]["lr1"]["load_balancer"] =
            json!(["set", [["uuid", "pf"], ["uuid", "a"], ["uuid", "b"]]]);
        rows["Logical_Switch"]["ls-int"]["load_balancer"] = json!(["set", [["uuid", "a"]]]);
        let r = replica(rows);
        let view = router_view(&r, "r1").unwrap();
        assert_eq!(
            rules_of(&view).forwards,
            rules().forwards,
            "row a serves the forward"
        );
        let ops = plan("r1", &view, &rules());
        assert_eq!(
            ops.iter()
                .map(|op| op["op"].as_str().unwrap())
                .collect::<Vec<_>>(),
            ["mutate", "delete"],
            "{ops:#?}"
        );
        assert_eq!(
            ops[0]["mutations"],
            json!([["load_balancer", "delete", ["set", [["uuid", "b"]]]]])
        );
        assert_eq!(ops[1]["where"], json!([["_uuid", "==", ["uuid", "b"]]]));
        // Nothing differs once the duplicate is gone.
        assert!(removal(&r, "r9").is_empty());
        assert_eq!(
            routers_with_ours(&r).into_iter().collect::<Vec<_>>(),
            ["r1"]
        );
        assert_eq!(neutron_routers(&r).into_iter().collect::<Vec<_>>(), ["r1"]);
    }

    #[test]
    fn a_restricted_forward_is_its_load_balancer_and_a_policy_in_one_transaction_and_removal_takes_both(
    ) {
        let mut restricted = rules();
        let key = *restricted.forwards.keys().next().unwrap();
        restricted.restricted.insert(key);
        restricted
            .allowed
            .insert((key, "198.51.100.0/24".parse().unwrap()));
        let r = replica(base());
        let view = router_view(&r, "r1").unwrap();
        assert_eq!(view.gateway_ports, ["lrp-gw"]);
        let ops = plan("r1", &view, &restricted);
        let kinds: Vec<(&str, &str)> = ops
            .iter()
            .map(|op| (op["op"].as_str().unwrap(), op["table"].as_str().unwrap()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("insert", "Load_Balancer"),
                ("mutate", "Logical_Router"),
                ("insert", "Logical_Router_Policy"),
                ("mutate", "Logical_Router"),
                ("mutate", "Logical_Switch"),
            ]
        );
        assert_eq!(
            ops[2]["row"]["match"],
            "inport == \"lrp-gw\" && ip4 && ct_mark.natted == 1 && ip4.dst == 10.0.0.5 && tcp \
             && tcp.dst == 22 && ip4.src != {198.51.100.0/24}"
        );
        assert_eq!(
            ops[3]["mutations"],
            json!([["policies", "insert", ["set", [["named-uuid", "policy_0"]]]]])
        );

        // As the database would hold it: read back whole, nothing to do, removal drops it.
        let mut rows = base();
        rows["Load_Balancer"]["a"] = our_row("10.0.0.5", one_vip());
        rows["Logical_Router"]["lr1"]["load_balancer"] =
            json!(["set", [["uuid", "pf"], ["uuid", "a"]]]);
        rows["Logical_Switch"]["ls-int"]["load_balancer"] = json!(["uuid", "a"]);
        rows["Logical_Router"]["lr1"]["policies"] =
            json!(["set", [["uuid", "p1"], ["uuid", "theirs"]]]);
        rows["Logical_Router_Policy"] = json!({
            "p1": {"priority": 32767, "action": "drop", "match": ops[2]["row"]["match"],
                   "external_ids": ops[2]["row"]["external_ids"]},
            "theirs": {"priority": 100, "action": "allow", "match": "ip4", "external_ids": ["map", []]}});
        let r = replica(rows);
        let view = router_view(&r, "r1").unwrap();
        assert_eq!(rules_of(&view), restricted);
        assert!(plan("r1", &view, &restricted).is_empty());
        let ops = removal(&r, "r1");
        assert!(
            ops.contains(&json!({"op": "mutate", "table": "Logical_Router",
                "where": [["_uuid", "==", ["uuid", "lr1"]]],
                "mutations": [["policies", "delete", ["set", [["uuid", "p1"]]]]]})),
            "{ops:#?}"
        );
    }

    #[test]
    fn each_vm_has_a_load_balancer_and_a_repointed_forward_moves_between_them_in_one_transaction() {
        let forward = |port: u16, vm: u8| Forward {
            id: format!("m{port}"),
            external_ip: Ipv4Addr::new(203, 0, 113, 10),
            protocol: Protocol::Tcp,
            external_ports: PortRange::new(port, port).unwrap(),
            internal_ip: Ipv4Addr::new(10, 0, 0, vm),
            internal_ports: PortRange::new(22, 22).unwrap(),
            allowed_cidrs: vec![],
            masquerade: false,
        };
        // As an earlier layout left it: one row for the router, both forwards in it.
        let mut rows = base();
        rows["Load_Balancer"]["old"] = json!({"name": "praas-r1-tcp", "protocol": "tcp",
            "options": ["map", [["ct_flush", "true"]]],
            "vips": ["map", [["203.0.113.10:4000", "10.0.0.5:22"], ["203.0.113.10:4001", "10.0.0.6:22"]]],
            "external_ids": ["map", [["praas:router_id", "r1"], ["praas:protocol", "tcp"]]]});
        rows["Logical_Router"]["lr1"]["load_balancer"] =
            json!(["set", [["uuid", "pf"], ["uuid", "old"]]]);
        rows["Logical_Switch"]["ls-int"]["load_balancer"] = json!(["uuid", "old"]);
        let r = replica(rows);
        let view = router_view(&r, "r1").unwrap();
        let two = RuleSet::from_forwards([&forward(4000, 5), &forward(4001, 6)]).unwrap();
        assert_eq!(rules_of(&view).forwards, two.forwards);
        let ops = plan("r1", &view, &two);
        let names: Vec<&str> = ops
            .iter()
            .filter(|op| op["op"] == "insert")
            .map(|op| op["row"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["praas-r1-tcp-10.0.0.5", "praas-r1-tcp-10.0.0.6"]);
        assert_eq!(
            ops.last().unwrap(),
            &json!({"op": "delete", "table": "Load_Balancer",
                    "where": [["_uuid", "==", ["uuid", "old"]]]}),
            "the earlier layout's row goes in the same transaction"
        );

        // Now as the new layout holds them; 4001 is re-pointed from .6 to .5.
        let mut rows = base();
        rows["Load_Balancer"]["a"] = our_row(
            "10.0.0.5",
            json!(["map", [["203.0.113.10:4000", "10.0.0.5:22"]]]),
        );
        rows["Load_Balancer"]["b"] = our_row(
            "10.0.0.6",
            json!(["map", [["203.0.113.10:4001", "10.0.0.6:22"]]]),
        );
        rows["Logical_Router"]["lr1"]["load_balancer"] =
            json!(["set", [["uuid", "pf"], ["uuid", "a"], ["uuid", "b"]]]);
        rows["Logical_Switch"]["ls-int"]["load_balancer"] =
            json!(["set", [["uuid", "a"], ["uuid", "b"]]]);
        let r = replica(rows);
        let view = router_view(&r, "r1").unwrap();
        assert!(plan("r1", &view, &two).is_empty());
        let repointed = RuleSet::from_forwards([&forward(4000, 5), &{
            let mut f = forward(4001, 5);
            f.internal_ip = Ipv4Addr::new(10, 0, 0, 5);
            f
        }])
        .unwrap();
        let ops = plan("r1", &view, &repointed);
        assert_eq!(
            ops,
            [
                json!({"op": "mutate", "table": "Load_Balancer",
                       "where": [["_uuid", "==", ["uuid", "a"]]],
                       "mutations": [["vips", "insert", ["map", [["203.0.113.10:4001", "10.0.0.5:22"]]]]]}),
                json!({"op": "mutate", "table": "Logical_Router",
                       "where": [["_uuid", "==", ["uuid", "lr1"]]],
                       "mutations": [["load_balancer", "delete", ["set", [["uuid", "b"]]]]]}),
                json!({"op": "mutate", "table": "Logical_Switch",
                       "where": [["_uuid", "==", ["uuid", "ls-int"]]],
                       "mutations": [["load_balancer", "delete", ["set", [["uuid", "b"]]]]]}),
                json!({"op": "delete", "table": "Load_Balancer",
                       "where": [["_uuid", "==", ["uuid", "b"]]]}),
            ]
        );
    }

    #[test]
    fn the_views_of_every_router_from_one_index_are_each_routers_own() {
        // Two routers; r2's switch also holds r1's load balancer (someone attached it there).
        let mut rows = base();
        rows["Logical_Router"]["lr2"] = json!({"name": "neutron-r2",
            "ports": ["set", [["uuid", "int2"]]], "load_balancer": ["set", []]});
        rows["Logical_Router"]["other"] = json!({"name": "not-neutron",
            "ports": ["set", []], "load_balancer": ["set", []]});
        rows["Logical_Router_Port"]["int2"] = json!({"name": "lrp-int2",
            "gateway_chassis": ["set", []], "ha_chassis_group": ["set", []], "options": ["map", []]});
        rows["Logical_Switch_Port"]["p-int2"] = json!({"name": "z", "type": "router",
            "options": ["map", [["router-port", "lrp-int2"]]]});
        rows["Logical_Switch"]["ls-int2"] = json!({"name": "neutron-int2",
            "ports": ["uuid", "p-int2"], "load_balancer": ["set", [["uuid", "a"]]]});
        rows["Load_Balancer"]["a"] = our_row("10.0.0.5", one_vip());
        rows["Logical_Router"]["lr1"]["load_balancer"] =
            json!(["set", [["uuid", "pf"], ["uuid", "a"]]]);
        rows["Logical_Switch"]["ls-int"]["load_balancer"] = json!(["uuid", "a"]);
        let r = replica(rows);
        let views = router_views(&r);
        let mut ids: Vec<&String> = views.keys().collect();
        ids.sort();
        assert_eq!(ids, ["r1", "r2"], "only Neutron's routers");
        for id in ["r1", "r2"] {
            assert_eq!(Some(&views[id]), router_view(&r, id).as_ref(), "{id}");
        }
        let r1 = &views["r1"];
        assert_eq!(r1.uuid, "lr1");
        assert_eq!(r1.tenant_switches.keys().collect::<Vec<_>>(), ["ls-int"]);
        assert_eq!(r1.ours.len(), 1);
        assert_eq!(
            r1.elsewhere,
            [(
                "Logical_Switch",
                "ls-int2".to_string(),
                BTreeSet::from(["a".to_string()])
            )]
        );
        let r2 = &views["r2"];
        assert_eq!(r2.tenant_switches.keys().collect::<Vec<_>>(), ["ls-int2"]);
        assert!(r2.ours.is_empty() && r2.elsewhere.is_empty() && r2.gateway_ports.is_empty());
        // The plan for r1 takes its load balancer off r2's switch.
        let ops = plan("r1", r1, &rules_of(r1));
        assert_eq!(
            ops,
            [json!({"op": "mutate", "table": "Logical_Switch",
                    "where": [["_uuid", "==", ["uuid", "ls-int2"]]],
                    "mutations": [["load_balancer", "delete", ["set", [["uuid", "a"]]]]]})]
        );
    }
}
