//! Fixed router and port facts, for tests, benchmarks and the demo.

use std::net::Ipv4Addr;

use crate::openstack::{DirectoryError, PortInfo, RouterDirectory, RouterInfo, RouterSummary};

/// Fixed facts, for tests and demos.
#[derive(Debug, Clone, Default)]
pub struct StaticDirectory {
    pub routers: Vec<RouterInfo>,
    /// `None`: this directory knows no ports (as the namespace directory).
    pub ports: Option<Vec<PortInfo>>,
}

#[async_trait::async_trait]
impl RouterDirectory for StaticDirectory {
    async fn router(&self, id: &str) -> Result<Option<RouterInfo>, DirectoryError> {
        Ok(self.routers.iter().find(|r| r.id == id).cloned())
    }

    /// As Neutron, in id order; a router without an owner is everyone's (as a namespace's).
    async fn routers_of(
        &self,
        project_id: Option<&str>,
    ) -> Result<Vec<RouterSummary>, DirectoryError> {
        let mut routers: Vec<RouterSummary> = self
            .routers
            .iter()
            .filter(|r| {
                project_id.is_none_or(|want| r.project_id.as_deref().is_none_or(|p| p == want))
            })
            .cloned()
            .map(RouterSummary::from)
            .collect();
        routers.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Ok(routers)
    }

    async fn routers_serving(
        &self,
        ip: Ipv4Addr,
        _project_id: Option<&str>,
    ) -> Result<Vec<RouterInfo>, DirectoryError> {
        Ok(self
            .routers
            .iter()
            .filter(|r| r.gateway_ip.is_some() && r.serves(ip))
            .cloned()
            .collect())
    }

    /// As Neutron: known where ports (and so subnet ids) are.
    async fn routers_on_subnets(
        &self,
        subnet_ids: &[String],
    ) -> Result<Option<Vec<String>>, DirectoryError> {
        if self.ports.is_none() {
            return Ok(None);
        }
        Ok(Some(
            self.routers
                .iter()
                .filter(|r| r.subnet_ids.iter().any(|s| subnet_ids.contains(s)))
                .map(|r| r.id.clone())
                .collect(),
        ))
    }

    fn knows_ports(&self) -> bool {
        self.ports.is_some()
    }

    async fn port(&self, id: &str) -> Result<Option<PortInfo>, DirectoryError> {
        Ok(self.ports.iter().flatten().find(|p| p.id == id).cloned())
    }

    async fn ports_with_address(
        &self,
        ip: Ipv4Addr,
        project_id: Option<&str>,
    ) -> Result<Vec<PortInfo>, DirectoryError> {
        Ok(self
            .ports
            .iter()
            .flatten()
            .filter(|p| p.fixed_ip(ip).is_some())
            .filter(|p| project_id.is_none_or(|want| p.project_id.as_deref() == Some(want)))
            .cloned()
            .collect())
    }
}
