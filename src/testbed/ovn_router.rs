//! A router as Neutron's OVN driver writes it, built with ovn-nbctl in the one-chassis
//! environment ([`super::ovn`]), for the traffic tests and the benchmark of the OVN driver.
//!
//! ```text
//!  client ns (external) ── br-ex ── neutron-<id>-ext (localnet physnet1)
//!                                        │ lrp-<id>-gw <gateway>, on the chassis
//!                                   neutron-<id>  (SNAT of the tenant subnet)
//!                                        │ lrp-<id>-int <internal gateway>
//!                  VM ns ── neutron-<id>-net (tenant switch, one logical port per VM)
//! ```
//!
//! The rows are deleted when the [`NeutronRouter`] is dropped, and before they are built (what
//! an earlier run may have left), together with PRaaS's load balancers for the router.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use super::ovn::{OvnEnv, OvnError, OvnNamespace};

/// What to build: the router's id, its gateway on the external network and its tenant subnet.
#[derive(Debug, Clone)]
pub struct RouterLayout {
    pub router_id: String,
    /// One byte that keeps this router's MAC addresses apart from other routers' in the same
    /// environment.
    pub slot: u8,
    /// The gateway address and the external network's prefix (`203.0.113.21/24`).
    pub gateway: Ipv4Net,
    /// The router's address on the tenant network and its prefix (`10.1.0.1/24`).
    pub internal: Ipv4Net,
    /// The VMs' addresses: one logical switch port each, named `<router_id>-vm<i>`.
    pub vms: Vec<Ipv4Addr>,
}

/// The northbound rows of one Neutron-like router; deleted when dropped.
pub struct NeutronRouter {
    pub layout: RouterLayout,
    env: Arc<OvnEnv>,
}

impl NeutronRouter {
    /// Builds the router in one nbctl transaction and waits until the chassis has applied it.
    pub fn build(env: &Arc<OvnEnv>, layout: RouterLayout) -> Result<NeutronRouter, OvnError> {
        let router = NeutronRouter {
            layout,
            env: env.clone(),
        };
        router.delete();
        let l = &router.layout;
        let (name, tenant, external) = (
            router.router(),
            router.tenant_switch(),
            router.external_switch(),
        );
        let id = &l.router_id;
        let (lrp_int, lrp_gw) = (format!("lrp-{id}-int"), format!("lrp-{id}-gw"));
        let (int_rp, ext_rp, localnet) = (
            format!("{id}-int-rp"),
            format!("{id}-ext-rp"),
            format!("{id}-ext-localnet"),
        );
        let (int_mac, gw_mac) = (router.mac(1), router.mac(2));
        let (int_cidr, gw_cidr) = (l.internal.to_string(), l.gateway.to_string());
        let (int_peer, ext_peer) = (
            format!("router-port={lrp_int}"),
            format!("router-port={lrp_gw}"),
        );
        let subnet = l.internal.trunc().to_string();
        let subnet_config = format!("other_config:subnet={subnet}");
        let gateway_text = l.gateway.addr().to_string();
        let vm_ports: Vec<(String, String)> = (0..l.vms.len())
            .map(|i| {
                (
                    router.vm_port(i),
                    format!("{} {}", router.vm_mac(i), l.vms[i]),
                )
            })
            .collect();
        let mut commands: Vec<Vec<&str>> = vec![
            // The tenant network, as Neutron's OVN driver writes it.
            vec!["ls-add", &tenant],
            vec!["set", "Logical_Switch", &tenant, &subnet_config],
            // The router, on the tenant network.
            vec!["lr-add", &name],
            vec!["lrp-add", &name, &lrp_int, &int_mac, &int_cidr],
            vec!["lsp-add", &tenant, &int_rp],
            vec!["lsp-set-type", &int_rp, "router"],
            vec!["lsp-set-addresses", &int_rp, "router"],
            vec!["lsp-set-options", &int_rp, &int_peer],
            // The external network: physnet1 (br-ex) through a localnet port.
            vec!["ls-add", &external],
            vec!["lsp-add", &external, &localnet],
            vec!["lsp-set-type", &localnet, "localnet"],
            vec!["lsp-set-addresses", &localnet, "unknown"],
            vec!["lsp-set-options", &localnet, "network_name=physnet1"],
            // The router's gateway on it, on the chassis; SNAT of the tenant subnet.
            vec!["lrp-add", &name, &lrp_gw, &gw_mac, &gw_cidr],
            vec!["lrp-set-gateway-chassis", &lrp_gw, &env.chassis, "1"],
            vec!["lsp-add", &external, &ext_rp],
            vec!["lsp-set-type", &ext_rp, "router"],
            vec!["lsp-set-addresses", &ext_rp, "router"],
            vec!["lsp-set-options", &ext_rp, &ext_peer],
            vec!["lr-nat-add", &name, "snat", &gateway_text, &subnet],
        ];
        for (port, addresses) in &vm_ports {
            commands.push(vec!["lsp-add", &tenant, port]);
            commands.push(vec!["lsp-set-addresses", port, addresses]);
        }
        let mut args = vec!["--wait=hv"];
        for (i, command) in commands.iter().enumerate() {
            if i > 0 {
                args.push("--");
            }
            args.extend(command);
        }
        env.nbctl(&args)?;
        Ok(router)
    }

    /// The logical router, `neutron-<id>`.
    pub fn router(&self) -> String {
        format!("neutron-{}", self.layout.router_id)
    }

    /// The tenant network's logical switch.
    pub fn tenant_switch(&self) -> String {
        format!("neutron-{}-net", self.layout.router_id)
    }

    /// The external network's logical switch.
    pub fn external_switch(&self) -> String {
        format!("neutron-{}-ext", self.layout.router_id)
    }

    /// The logical switch port of VM `vm`.
    pub fn vm_port(&self, vm: usize) -> String {
        format!("{}-vm{vm}", self.layout.router_id)
    }

    /// The load balancer PRaaS writes for this router, `protocol` (`tcp`, `udp`) and VM
    /// address.
    pub fn lb(&self, protocol: &str, vm: Ipv4Addr) -> String {
        format!("praas-{}-{protocol}-{vm}", self.layout.router_id)
    }

    /// The names of PRaaS's load balancers for this router (marked with its id), sorted.
    pub fn our_lbs(&self) -> Result<Vec<String>, OvnError> {
        let out = self.env.nbctl(&[
            "--bare",
            "--columns=name",
            "find",
            "Load_Balancer",
            &format!("external_ids:\"praas:router_id\"={}", self.layout.router_id),
        ])?;
        let mut names: Vec<String> = out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        names.sort();
        Ok(names)
    }

    /// The gateway address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.layout.gateway.addr()
    }

    /// The MAC address of VM `vm`.
    pub fn vm_mac(&self, vm: usize) -> String {
        // VMs from host number 0x10 on, the router's ports below; past 255 the third byte
        // carries on.
        let host = 0x10 + vm;
        format!(
            "fa:16:3e:{:02x}:{:02x}:{:02x}",
            0x7a + (host >> 8) as u8,
            self.layout.slot,
            host as u8
        )
    }

    fn mac(&self, host: u8) -> String {
        format!("fa:16:3e:7a:{:02x}:{host:02x}", self.layout.slot)
    }

    /// The namespace of VM `vm`, bound to its logical port (and up once this returns).
    pub fn attach_vm(&self, vm: usize) -> Result<OvnNamespace, OvnError> {
        let l = &self.layout;
        let ns = OvnNamespace::vm(
            &self.env,
            &self.vm_port(vm),
            &self.vm_mac(vm),
            Ipv4Net::new(l.vms[vm], l.internal.prefix_len()).expect("the tenant prefix"),
            l.internal.addr(),
        )?;
        self.env.wait_port_up(&self.vm_port(vm))?;
        Ok(ns)
    }

    /// Deletes the router, its switches and PRaaS's load balancers for it.
    pub fn delete(&self) {
        let (router, tenant, external) =
            (self.router(), self.tenant_switch(), self.external_switch());
        let lbs = self.our_lbs().unwrap_or_default();
        let mut args: Vec<&str> = Vec::new();
        let deletions = [
            ("lr-del", &router),
            ("ls-del", &tenant),
            ("ls-del", &external),
        ]
        .into_iter()
        .chain(lbs.iter().map(|lb| ("lb-del", lb)));
        for (command, name) in deletions {
            if !args.is_empty() {
                args.push("--");
            }
            args.extend(["--if-exists", command, name.as_str()]);
        }
        if let Err(e) = self.env.nbctl(&args) {
            eprintln!("deleting the northbound rows of {router}: {e}");
        }
    }
}

impl Drop for NeutronRouter {
    fn drop(&mut self) {
        self.delete();
    }
}
