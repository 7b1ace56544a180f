//! Who is calling, and what the policy lets them do.
//!
//! Policy, as Neutron's port forwarding has it: the admin role may do everything and see every
//! project; a member of a project may create, change and delete its mappings; a reader may
//! list and show them. Role names are configurable. The API decides who the caller is (a
//! Keystone token, or noauth headers); the service decides what they may do.

/// The names of the roles the policy knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleNames {
    pub admin: String,
    pub member: String,
    pub reader: String,
}

impl Default for RoleNames {
    fn default() -> Self {
        RoleNames {
            admin: "admin".into(),
            member: "member".into(),
            reader: "reader".into(),
        }
    }
}

/// The caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub project_id: String,
    pub user_id: Option<String>,
    pub roles: Vec<String>,
    admin: bool,
    member: bool,
    reader: bool,
}

impl Caller {
    pub fn new(
        project_id: String,
        user_id: Option<String>,
        roles: Vec<String>,
        names: &RoleNames,
    ) -> Self {
        let has = |name: &str| roles.iter().any(|r| r.eq_ignore_ascii_case(name));
        let (admin, member, reader) = (has(&names.admin), has(&names.member), has(&names.reader));
        Caller {
            project_id,
            user_id,
            roles,
            admin,
            member,
            reader,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.admin
    }

    pub fn can_write(&self) -> bool {
        self.admin || self.member
    }

    pub fn can_read(&self) -> bool {
        self.can_write() || self.reader
    }

    /// Whether the caller may see mappings, routers and ports of `project_id`.
    pub fn sees(&self, project_id: &str) -> bool {
        self.admin || self.project_id == project_id
    }

    /// The project whose ports may be mapped: the caller's own, or any for an admin.
    pub fn port_scope(&self) -> Option<&str> {
        (!self.admin).then_some(self.project_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(roles: &[&str], names: &RoleNames) -> Caller {
        Caller::new(
            "p1".into(),
            None,
            roles.iter().map(|r| r.to_string()).collect(),
            names,
        )
    }

    #[test]
    fn the_policy_follows_the_configured_role_names() {
        let names = RoleNames {
            admin: "cloud-admin".into(),
            member: "_member_".into(),
            reader: "observer".into(),
        };
        let member = caller(&["_member_"], &names);
        assert!(member.can_write() && member.can_read() && !member.is_admin());
        let reader = caller(&["observer"], &names);
        assert!(reader.can_read() && !reader.can_write());
        // The default names mean nothing once others are configured.
        let stranger = caller(&["admin", "member", "reader"], &names);
        assert!(!stranger.can_read() && !stranger.is_admin());
        let admin = caller(&["Cloud-Admin"], &names);
        assert!(admin.is_admin() && admin.sees("p2") && admin.port_scope().is_none());
        assert_eq!(member.port_scope(), Some("p1"));
        assert!(!member.sees("p2"));
    }
}
