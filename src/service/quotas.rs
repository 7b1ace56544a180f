//! Quotas as callers see them, with Neutron's policy for its quota API: an admin shows, sets
//! and resets any project's quota and lists the projects that have their own; a project's
//! members and readers see their own project's limits and usage; anyone else is refused.
//!
//! The limits themselves are enforced by the store, in the transaction of the write
//! ([`crate::store::quota`]): a mapping counts against its router's project, whoever creates it.

use super::{audit, forbidden_unless, Caller, MappingService, ServiceError};
use crate::model::{Limit, Resource};
use crate::store::{QuotaChange, Quotas};

/// Longest project id a quota may be set for (the database's column).
pub const MAX_PROJECT_ID: usize = 64;

/// One resource of a project: what it holds against its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaDetail {
    pub used: u64,
    pub limit: Limit,
    /// Held for requests in progress; always 0 (usage is counted inside each write), kept for
    /// the shape of Neutron's answer.
    pub reserved: u64,
}

/// A project's usage and limits, by resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaDetails {
    pub mappings: QuotaDetail,
    pub external_ports: QuotaDetail,
}

impl MappingService {
    /// A reader or member of `project_id`, or an admin.
    fn may_see_quota(&self, caller: &Caller, project_id: &str) -> Result<(), ServiceError> {
        forbidden_unless(caller.can_read(), "see quotas")?;
        forbidden_unless(caller.sees(project_id), "see another project's quota")
    }

    /// The limits that apply to `project_id`.
    pub async fn quota(&self, caller: &Caller, project_id: &str) -> Result<Quotas, ServiceError> {
        self.may_see_quota(caller, project_id)?;
        Ok(self.store.quotas_of(project_id).await?)
    }

    /// The limits of projects that have none of their own (`[quota]`).
    pub fn default_quota(&self, caller: &Caller, project_id: &str) -> Result<Quotas, ServiceError> {
        self.may_see_quota(caller, project_id)?;
        Ok(self.store.quota_defaults())
    }

    /// What `project_id` holds, against its limits.
    pub async fn quota_details(
        &self,
        caller: &Caller,
        project_id: &str,
    ) -> Result<QuotaDetails, ServiceError> {
        self.may_see_quota(caller, project_id)?;
        let (quotas, used) = tokio::try_join!(
            self.store.quotas_of(project_id),
            self.store.usage(project_id)
        )?;
        let detail = |r: Resource| QuotaDetail {
            used: used.get(r),
            limit: quotas.get(r),
            reserved: 0,
        };
        Ok(QuotaDetails {
            mappings: detail(Resource::Mappings),
            external_ports: detail(Resource::ExternalPorts),
        })
    }

    /// The projects that have limits of their own, with the limits that apply to them (admins
    /// only).
    pub async fn quotas(&self, caller: &Caller) -> Result<Vec<(String, Quotas)>, ServiceError> {
        forbidden_unless(caller.is_admin(), "list quotas")?;
        Ok(self.store.projects_with_own_quotas().await?)
    }

    /// Whether the caller may set quotas at all (asked before a request is read).
    pub fn may_set_quota(&self, caller: &Caller) -> Result<(), ServiceError> {
        forbidden_unless(caller.is_admin(), "set quotas")
    }

    /// Gives `project_id` limits of its own (admins only); returns the limits that now apply.
    /// A limit below what the project holds removes nothing; it refuses what would add to it.
    pub async fn set_quota(
        &self,
        caller: &Caller,
        project_id: &str,
        change: QuotaChange,
    ) -> Result<Quotas, ServiceError> {
        self.may_set_quota(caller)?;
        check_project_id(project_id)?;
        if change == QuotaChange::default() {
            return Err(ServiceError::invalid(
                "quota",
                "the quota to set names no resource; give mappings, external_ports or both",
            ));
        }
        let before = self.store.quotas_of(project_id).await?;
        let after = self.store.set_quotas(project_id, &change).await?;
        audit::quota_changed(&caller.actor(), project_id, &before, &after, false);
        Ok(after)
    }

    /// Forgets `project_id`'s own limits, so that the defaults apply again (admins only).
    pub async fn reset_quota(&self, caller: &Caller, project_id: &str) -> Result<(), ServiceError> {
        forbidden_unless(caller.is_admin(), "reset quotas")?;
        let before = self.store.quotas_of(project_id).await?;
        if self.store.reset_quotas(project_id).await? {
            let after = self.store.quota_defaults();
            audit::quota_changed(&caller.actor(), project_id, &before, &after, true);
        }
        Ok(())
    }
}

fn check_project_id(project_id: &str) -> Result<(), ServiceError> {
    if project_id.is_empty() || project_id.chars().count() > MAX_PROJECT_ID {
        return Err(ServiceError::invalid(
            "project_id",
            format!("project_id must be 1 to {MAX_PROJECT_ID} characters long"),
        ));
    }
    Ok(())
}
