//! The mapping service: every rule a mapping obeys, whichever protocol asks.
//!
//! REST v1 and the original Proxy CLI protocol translate their requests into the types here
//! and the [`ServiceError`]s back into their own answers; neither holds a rule of its own. A
//! request is checked in this order: the caller's role, the request's own values (ranges that
//! fit together, a gateway port inside the configured range for non-admins, a short
//! description), then Neutron (through the [`RouterDirectory`]): the router exists and is the
//! caller's, it has a gateway, the port exists, is the caller's and an instance's, the address
//! is one of its fixed IPs, on a subnet attached to the router by id. Then the store claims the
//! ports, within the quota of the router's project ([`quotas`]), and one audit event is logged
//! ([`audit`]). Callers also see their routers with the ports still free on them ([`routers`]).
//!
//! The lookups of one request are made concurrently, so a create costs about one Neutron round
//! trip of latency (router facts are usually cached, see `openstack::cache`).

pub mod agents;
pub mod audit;
mod caller;
mod error;
pub mod quotas;
pub mod routers;

use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

pub use audit::Actor;
pub use caller::{Caller, RoleNames};
pub use error::ServiceError;
pub use quotas::{QuotaDetail, QuotaDetails};
pub use routers::{ProtocolPorts, RouterPorts};

use crate::model::{PortRange, Protocol, MAX_RANGE_LEN};
use crate::openstack::{FixedIp, PortInfo, RouterDirectory, RouterInfo};
use crate::store::{
    ExternalPorts, ListFilter, Mapping, MappingUpdate, MappingUsage, NewMapping, Policy, Store,
};

/// Longest description accepted.
pub const MAX_DESCRIPTION: usize = 255;

/// A mapping to create, in the service's terms (the protocols have parsed their text).
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// May be left out when exactly one router with a gateway serves the internal address.
    pub router_id: Option<String>,
    pub internal_port_id: Option<String>,
    pub internal_ip_address: Option<Ipv4Addr>,
    pub internal_ports: PortRange,
    /// `None`: allocated from the router's range.
    pub external_ports: Option<PortRange>,
    pub protocol: Protocol,
    pub description: String,
    pub allowed_cidrs: Vec<Ipv4Net>,
    pub masquerade: bool,
    /// The gateway the caller believes the router has (the original protocol sends it); a
    /// router with another gateway is refused.
    pub expected_gateway: Option<Ipv4Addr>,
}

/// Changes to a mapping; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UpdateRequest {
    pub external_ports: Option<PortRange>,
    pub internal_ports: Option<PortRange>,
    pub description: Option<String>,
    pub allowed_cidrs: Option<Vec<Ipv4Net>>,
    pub masquerade: Option<bool>,
}

/// Where a new mapping may point: an address, the subnet it is on and the port holding it, as
/// far as the directory knows them.
#[derive(Debug)]
struct Internal {
    fixed: FixedIp,
    port_id: Option<String>,
}

/// Creates, changes, deletes and lists mappings on behalf of a caller.
pub struct MappingService {
    store: Arc<Store>,
    directory: Arc<dyn RouterDirectory>,
    policy: Policy,
    /// How long an agent may stay silent and still count as alive.
    agent_down_time: std::time::Duration,
}

impl Caller {
    /// This caller as the audit trail names it.
    pub fn actor(&self) -> Actor {
        Actor::User {
            user_id: self.user_id.clone(),
            project_id: self.project_id.clone(),
        }
    }
}

fn forbidden_unless(allowed: bool, action: &'static str) -> Result<(), ServiceError> {
    if allowed {
        Ok(())
    } else {
        Err(ServiceError::Forbidden { action })
    }
}

/// The external and internal ranges fit together (as many ports, or all to one) and stay
/// within the cap on one mapping's ports, whoever asks (an admin may go outside the
/// configured range, not past the cap).
fn check_ranges(external: PortRange, internal: PortRange) -> Result<(), ServiceError> {
    for (field, range) in [
        ("external_port_range", external),
        ("internal_port_range", internal),
    ] {
        if range.len() > MAX_RANGE_LEN {
            return Err(ServiceError::invalid(
                field,
                format!(
                    "{field} {range} covers {} ports, more than the limit of {MAX_RANGE_LEN}",
                    range.len()
                ),
            ));
        }
    }
    if internal.len() != 1 && internal.len() != external.len() {
        return Err(ServiceError::invalid(
            "internal_port_range",
            format!(
                "internal ports {internal} must be one port or as many as the external ports {external}"
            ),
        ));
    }
    Ok(())
}

fn check_description(description: &str) -> Result<(), ServiceError> {
    if description.chars().count() > MAX_DESCRIPTION {
        return Err(ServiceError::invalid(
            "description",
            format!("description is longer than {MAX_DESCRIPTION} characters"),
        ));
    }
    Ok(())
}

impl MappingService {
    pub fn new(store: Arc<Store>, directory: Arc<dyn RouterDirectory>, policy: Policy) -> Self {
        MappingService {
            store,
            directory,
            policy,
            agent_down_time: agents::DEFAULT_AGENT_DOWN_TIME,
        }
    }

    /// How long an agent may stay silent and still count as alive (`[praas] agent_down_time`).
    pub fn with_agent_down_time(mut self, down_time: std::time::Duration) -> Self {
        self.agent_down_time = down_time;
        self
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Non-admins may only choose external ports inside the configured range.
    fn check_in_range(&self, caller: &Caller, external: PortRange) -> Result<(), ServiceError> {
        let range = self.policy.range;
        let inside = range.contains(external.first()) && range.contains(external.last());
        if !inside && !caller.is_admin() {
            return Err(ServiceError::invalid(
                "external_port_range",
                format!("external ports {external} are outside the allowed range {range}"),
            ));
        }
        Ok(())
    }

    /// Mappings the caller may see that match `filter`. `filter.project_id` asks for one
    /// project: another project's mappings are not the caller's to see, so (unless admin)
    /// that listing is empty, as if there were none, rather than a hint that they exist.
    /// Without it, an admin sees every project's and anyone else their own.
    pub async fn list(
        &self,
        caller: &Caller,
        mut filter: ListFilter,
    ) -> Result<Vec<Mapping>, ServiceError> {
        forbidden_unless(caller.can_read(), "list mappings")?;
        filter.project_id = match filter.project_id {
            Some(p) if caller.sees(&p) => Some(p),
            Some(_) => return Ok(vec![]),
            None if caller.is_admin() => None,
            None => Some(caller.project_id.clone()),
        };
        let mut mappings = self.store.list(&filter).await?;
        self.explain_pending(&mut mappings).await?;
        Ok(mappings)
    }

    /// What the kernel counted for `mappings` (those the caller was allowed to see), by id;
    /// a mapping without counted traffic has no entry.
    pub async fn usage(
        &self,
        mappings: &[Mapping],
    ) -> Result<std::collections::HashMap<String, MappingUsage>, ServiceError> {
        let ids: Vec<&str> = mappings.iter().map(|m| m.id.as_str()).collect();
        Ok(self.store.mapping_usage(&ids).await?)
    }

    /// The caller's mapping `id`; another project's is "not found", not "forbidden", so that
    /// its existence is not revealed.
    async fn visible(&self, caller: &Caller, id: &str) -> Result<Mapping, ServiceError> {
        self.store
            .get(id)
            .await?
            .filter(|m| caller.sees(&m.project_id))
            .ok_or_else(|| ServiceError::not_found("mapping", id))
    }

    /// One mapping.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<Mapping, ServiceError> {
        forbidden_unless(caller.can_read(), "show mappings")?;
        let mut mapping = self.visible(caller, id).await?;
        self.explain_pending(std::slice::from_mut(&mut mapping))
            .await?;
        Ok(mapping)
    }

    /// Whether the caller's role may create mappings at all (asked before a request is read).
    pub fn may_create(&self, caller: &Caller) -> Result<(), ServiceError> {
        forbidden_unless(caller.can_write(), "create mappings")
    }

    /// Checks and stores a new mapping.
    pub async fn create(
        &self,
        caller: &Caller,
        req: CreateRequest,
    ) -> Result<Mapping, ServiceError> {
        self.may_create(caller)?;
        check_description(&req.description)?;
        match req.external_ports {
            Some(ext) => {
                check_ranges(ext, req.internal_ports)?;
                self.check_in_range(caller, ext)?;
            }
            None => check_ranges(req.internal_ports, req.internal_ports)?,
        }
        // The port and the router are looked up at once; the port's answer decides first.
        let (candidates, router) = match req.router_id.as_deref() {
            Some(id) => {
                let (candidates, router) = tokio::join!(
                    self.internal_candidates(caller, &req),
                    self.router(caller, id)
                );
                (candidates?, Some(router?))
            }
            None => (self.internal_candidates(caller, &req).await?, None),
        };
        let router = match router {
            Some(router) => router,
            None => self.router_serving(caller, &candidates).await?,
        };
        let internal = self.reached(&router, candidates)?;
        let gateway = router.gateway_ip.ok_or_else(|| ServiceError::NoGateway {
            router_id: router.id.clone(),
        })?;
        if let Some(expected) = req.expected_gateway.filter(|e| *e != gateway) {
            return Err(ServiceError::invalid(
                "gateway",
                format!("gateway {expected} is not the router's gateway ({gateway})"),
            ));
        }
        let new = NewMapping {
            project_id: router
                .project_id
                .clone()
                .unwrap_or_else(|| caller.project_id.clone()),
            router_id: router.id.clone(),
            distributed: router.distributed,
            external_ip_address: gateway,
            protocol: req.protocol,
            external_ports: match req.external_ports {
                Some(ext) => ExternalPorts::Explicit(ext),
                None => ExternalPorts::Allocate {
                    len: req.internal_ports.len(),
                },
            },
            internal_ip_address: internal.fixed.ip,
            internal_port_id: internal.port_id,
            internal_ports: req.internal_ports,
            description: req.description,
            allowed_cidrs: req.allowed_cidrs,
            masquerade: req.masquerade,
        };
        let mapping = self.store.create(new, &self.policy).await?;
        audit::created(&caller.actor(), &mapping);
        Ok(mapping)
    }

    /// Changes a mapping's ports, description, allowed sources or masquerading, once Neutron
    /// still agrees with what it points at.
    pub async fn update(
        &self,
        caller: &Caller,
        id: &str,
        req: UpdateRequest,
    ) -> Result<Mapping, ServiceError> {
        let current = self.visible(caller, id).await?;
        forbidden_unless(caller.can_write(), "change mappings")?;
        self.still_mappable(&current).await?;
        let external = req.external_ports.unwrap_or(current.external_ports);
        let internal = req.internal_ports.unwrap_or(current.internal_ports);
        check_ranges(external, internal)?;
        if let Some(ext) = req.external_ports {
            self.check_in_range(caller, ext)?;
        }
        if let Some(d) = &req.description {
            check_description(d)?;
        }
        let update = MappingUpdate {
            external_ports: req.external_ports,
            internal_ports: req.internal_ports,
            description: req.description,
            allowed_cidrs: req.allowed_cidrs,
            masquerade: req.masquerade,
            ..Default::default()
        };
        let mapping = self.store.update(id, &update).await?;
        audit::updated(&caller.actor(), &current, &mapping, None);
        Ok(mapping)
    }

    /// Deletes a mapping; its rules and connections go with it. Returns what was deleted
    /// (`None`: someone else deleted it meanwhile, which is gone all the same).
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<Option<Mapping>, ServiceError> {
        self.visible(caller, id).await?;
        forbidden_unless(caller.can_write(), "delete mappings")?;
        let deleted = self.store.delete(id).await?;
        if let Some(m) = &deleted {
            audit::deleted(&caller.actor(), m, None);
        }
        Ok(deleted)
    }

    /// The router `id`, if the caller may see it.
    async fn router(&self, caller: &Caller, id: &str) -> Result<RouterInfo, ServiceError> {
        self.directory
            .router(id)
            .await?
            .filter(|r| r.project_id.as_deref().is_none_or(|p| caller.sees(p)))
            .ok_or_else(|| ServiceError::not_found("router", id))
    }

    /// The one router with a gateway, among the caller's, that serves the candidates: the
    /// routers with an interface on their subnets where those are known by id (their facts
    /// read at once, usually from the cache), else those the directory finds for the address.
    async fn router_serving(
        &self,
        caller: &Caller,
        candidates: &[Internal],
    ) -> Result<RouterInfo, ServiceError> {
        let ip = candidates[0].fixed.ip;
        let subnets: Vec<String> = candidates
            .iter()
            .filter_map(|c| c.fixed.subnet_id.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let on_subnets = match subnets.is_empty() {
            true => None,
            false => self.directory.routers_on_subnets(&subnets).await?,
        };
        let mut found: Vec<RouterInfo> = match on_subnets {
            Some(ids) => {
                let routers = ids.iter().map(|id| self.directory.router(id));
                futures_util::future::try_join_all(routers)
                    .await?
                    .into_iter()
                    .flatten()
                    .filter(|r| r.gateway_ip.is_some())
                    .collect()
            }
            None => {
                self.directory
                    .routers_serving(ip, caller.port_scope())
                    .await?
            }
        };
        found.retain(|r| r.project_id.as_deref().is_none_or(|p| caller.sees(p)));
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(ServiceError::invalid(
                "router_id",
                format!("no router with a gateway serves {ip}; give router_id"),
            )),
            n => Err(ServiceError::invalid(
                "router_id",
                format!("{n} routers serve {ip}; give router_id"),
            )),
        }
    }

    /// The one candidate `router` reaches; the router must have a gateway.
    fn reached(
        &self,
        router: &RouterInfo,
        mut candidates: Vec<Internal>,
    ) -> Result<Internal, ServiceError> {
        if router.gateway_ip.is_none() {
            return Err(ServiceError::NoGateway {
                router_id: router.id.clone(),
            });
        }
        let ip = candidates[0].fixed.ip;
        candidates.retain(|c| router.reaches(&c.fixed));
        match candidates.len() {
            1 => Ok(candidates.remove(0)),
            0 => Err(ServiceError::invalid(
                "internal_ip_address",
                format!("{ip} is not on a subnet attached to router {}", router.id),
            )),
            _ => Err(ServiceError::invalid(
                "internal_port_id",
                format!(
                    "several of your ports hold {ip} on subnets of router {}; give internal_port_id",
                    router.id
                ),
            )),
        }
    }

    /// The caller's port `id`, if it may see it.
    async fn port(&self, caller: &Caller, id: &str) -> Result<PortInfo, ServiceError> {
        self.directory
            .port(id)
            .await?
            .filter(|p| {
                p.project_id
                    .as_deref()
                    .is_none_or(|owner| caller.sees(owner))
            })
            .ok_or_else(|| ServiceError::not_found("port", id))
    }

    /// The internal addresses a new mapping may point at (the router then picks the one it
    /// reaches). Where ports are known (Neutron), the port must exist and be the caller's
    /// (another project's is "not found") and an instance's, the address must be one of its
    /// fixed IPs, and an address given alone must be a fixed IP of one of the caller's ports:
    /// a mapping never reaches an address its project does not own.
    async fn internal_candidates(
        &self,
        caller: &Caller,
        req: &CreateRequest,
    ) -> Result<Vec<Internal>, ServiceError> {
        let knows_ports = self.directory.knows_ports();
        let unknown_subnet = |ip| FixedIp {
            ip,
            subnet_id: None,
        };
        match (req.internal_ip_address, &req.internal_port_id) {
            (ip, Some(port_id)) if knows_ports => {
                let port = self.port(caller, port_id).await?;
                if let Some(why) = port.not_mappable() {
                    return Err(ServiceError::invalid("internal_port_id", why));
                }
                let fixed = match (ip, port.fixed_ips.as_slice()) {
                    (Some(ip), _) => port.fixed_ip(ip).cloned().ok_or_else(|| {
                        ServiceError::invalid(
                            "internal_ip_address",
                            format!("{ip} is not a fixed address of port {port_id}"),
                        )
                    })?,
                    (None, [one]) => one.clone(),
                    (None, []) => {
                        return Err(ServiceError::invalid(
                            "internal_port_id",
                            format!("port {port_id} has no IPv4 address"),
                        ))
                    }
                    (None, _) => {
                        return Err(ServiceError::invalid(
                            "internal_ip_address",
                            format!(
                            "port {port_id} has several IPv4 addresses; give internal_ip_address"
                        ),
                        ))
                    }
                };
                Ok(vec![Internal {
                    fixed,
                    port_id: Some(port.id),
                }])
            }
            (Some(ip), Some(port_id)) => Ok(vec![Internal {
                fixed: unknown_subnet(ip),
                port_id: Some(port_id.clone()),
            }]),
            (None, Some(port_id)) => Err(ServiceError::invalid(
                "internal_ip_address",
                format!("port {port_id} is unknown here; give internal_ip_address"),
            )),
            (Some(ip), None) if knows_ports => {
                let owned: Vec<Internal> = self
                    .directory
                    .ports_with_address(ip, caller.port_scope())
                    .await?
                    .into_iter()
                    .filter(|p| p.not_mappable().is_none())
                    .filter_map(|p| {
                        Some(Internal {
                            fixed: p.fixed_ip(ip)?.clone(),
                            port_id: Some(p.id),
                        })
                    })
                    .collect();
                if owned.is_empty() {
                    return Err(ServiceError::invalid(
                        "internal_ip_address",
                        format!(
                            "{ip} is not a fixed address of an instance's port of your project"
                        ),
                    ));
                }
                Ok(owned)
            }
            (Some(ip), None) => Ok(vec![Internal {
                fixed: unknown_subnet(ip),
                port_id: None,
            }]),
            (None, None) => Err(ServiceError::invalid(
                "internal_ip_address",
                "internal_ip_address or internal_port_id is required",
            )),
        }
    }

    /// Before a change: Neutron must still agree to what the mapping points at (its router,
    /// with a gateway; its port, an instance's, still holding the address on a subnet of the
    /// router), else the change is refused and the mapping left as it is (the monitor brings
    /// it up to date). The router and the port are read at once.
    async fn still_mappable(&self, m: &Mapping) -> Result<(), ServiceError> {
        let port_id = m
            .internal_port_id
            .as_deref()
            .filter(|_| self.directory.knows_ports());
        let (router, port) = tokio::join!(self.directory.router(&m.router_id), async {
            match port_id {
                Some(id) => self.directory.port(id).await.map(Some),
                None => Ok(None),
            }
        });
        let router = match router? {
            None => {
                return Err(ServiceError::RouterGone {
                    router_id: m.router_id.clone(),
                })
            }
            Some(r) if r.gateway_ip.is_none() => {
                return Err(ServiceError::NoGateway {
                    router_id: m.router_id.clone(),
                })
            }
            Some(r) => r,
        };
        let mut fixed = FixedIp {
            ip: m.internal_ip_address,
            subnet_id: None,
        };
        if let Some(port_id) = port_id {
            let Some(port) = port?.flatten() else {
                return Err(ServiceError::PortGone {
                    port_id: port_id.to_string(),
                    reason: format!("port {port_id} no longer exists"),
                });
            };
            let held = port.fixed_ip(m.internal_ip_address).cloned();
            match (port.not_mappable(), held) {
                (Some(reason), _) => {
                    return Err(ServiceError::PortGone {
                        port_id: port_id.to_string(),
                        reason,
                    })
                }
                (None, None) => {
                    return Err(ServiceError::AddressChanged {
                        port_id: port_id.to_string(),
                        ip: m.internal_ip_address,
                    })
                }
                (None, Some(f)) => fixed = f,
            }
        }
        if !router.reaches(&fixed) {
            return Err(ServiceError::AddressUnreachable {
                ip: m.internal_ip_address,
                router_id: m.router_id.clone(),
            });
        }
        Ok(())
    }
}
