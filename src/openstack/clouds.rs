//! The service's OpenStack credentials, from a `clouds.yaml` file (the original's convention:
//! cloud `openstack`, file from `[openstack] clouds_file` or `OS_CLIENT_CONFIG_FILE`).
//!
//! Only the named file is read: a daemon must not pick up a `clouds.yaml` lying in its working
//! directory or in a home directory, as interactive clients do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::OpenStackError;

/// Which endpoint of the catalog to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interface {
    #[default]
    Public,
    Internal,
    Admin,
}

impl Interface {
    pub fn as_str(self) -> &'static str {
        match self {
            Interface::Public => "public",
            Interface::Internal => "internal",
            Interface::Admin => "admin",
        }
    }
}

/// A name or an id, with the domain a name lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    Id(String),
    Name { name: String, domain: Domain },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    Id(String),
    Name(String),
}

/// How the service logs in.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Password {
        user: Named,
        password: String,
        /// Project scope; unscoped logins cannot read Neutron.
        project: Named,
    },
    /// An application credential: by id, or by name with its user.
    ApplicationCredential {
        id: Option<String>,
        name: Option<String>,
        user: Option<Named>,
        secret: String,
    },
    /// A token obtained elsewhere (a client's `--os-token`): used as it is, its catalog read
    /// from Keystone; it cannot be renewed.
    Token { token: String },
}

impl std::fmt::Debug for Credentials {
    // Secrets stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { user, project, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .field("project", project)
                .finish_non_exhaustive(),
            Credentials::ApplicationCredential { id, name, user, .. } => f
                .debug_struct("ApplicationCredential")
                .field("id", id)
                .field("name", name)
                .field("user", user)
                .finish_non_exhaustive(),
            Credentials::Token { .. } => f.debug_struct("Token").finish_non_exhaustive(),
        }
    }
}

/// One cloud of `clouds.yaml`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudConfig {
    /// Keystone's v3 root, ending in `/v3`.
    pub auth_url: String,
    pub credentials: Credentials,
    pub region_name: Option<String>,
    pub interface: Interface,
    /// Verify TLS certificates (default true).
    pub verify: bool,
    /// Extra CA bundle (PEM) to trust.
    pub cacert: Option<PathBuf>,
}

#[derive(Deserialize)]
struct File {
    clouds: BTreeMap<String, CloudSpec>,
}

/// A cloud as written in `clouds.yaml` (or gathered from an openrc's `OS_*` variables),
/// before it is checked and resolved into a [`CloudConfig`].
#[derive(Deserialize, Default, Clone)]
pub struct CloudSpec {
    #[serde(default)]
    pub auth: AuthSpec,
    pub auth_type: Option<String>,
    pub region_name: Option<String>,
    pub interface: Option<String>,
    pub endpoint_type: Option<String>,
    pub identity_api_version: Option<serde_json::Value>,
    pub verify: Option<bool>,
    pub cacert: Option<PathBuf>,
}

/// The `auth` part of a [`CloudSpec`].
#[derive(Deserialize, Default, Clone)]
pub struct AuthSpec {
    pub auth_url: Option<String>,
    pub username: Option<String>,
    pub user_id: Option<String>,
    pub password: Option<String>,
    pub project_name: Option<String>,
    pub project_id: Option<String>,
    pub tenant_name: Option<String>,
    pub tenant_id: Option<String>,
    pub user_domain_name: Option<String>,
    pub user_domain_id: Option<String>,
    pub project_domain_name: Option<String>,
    pub project_domain_id: Option<String>,
    pub domain_name: Option<String>,
    pub domain_id: Option<String>,
    pub application_credential_id: Option<String>,
    pub application_credential_name: Option<String>,
    pub application_credential_secret: Option<String>,
}

impl CloudSpec {
    /// Whether it logs in with a password it does not have (a client may ask for it).
    pub fn lacks_password(&self) -> bool {
        matches!(
            self.auth_type.as_deref().unwrap_or("password"),
            "password" | "v3password"
        ) && self.auth.password.is_none()
    }

    /// The user, as a prompt names it.
    pub fn user_label(&self) -> String {
        let user = self
            .auth
            .username
            .clone()
            .or_else(|| self.auth.user_id.clone())
            .unwrap_or_default();
        match self
            .auth
            .project_name
            .as_ref()
            .or(self.auth.project_id.as_ref())
        {
            Some(project) => format!("{user} in project {project}"),
            None => user,
        }
    }

    /// Checks the cloud and resolves names, domains and defaults.
    pub fn resolve(&self) -> Result<CloudConfig, CloudsError> {
        resolve(self)
    }
}

/// The file to read: the configured one, else `OS_CLIENT_CONFIG_FILE`.
pub fn clouds_file(configured: Option<&Path>) -> Option<PathBuf> {
    configured.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("OS_CLIENT_CONFIG_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// What is wrong with a `clouds.yaml`.
#[derive(Debug, thiserror::Error)]
pub enum CloudsError {
    #[error("cannot read the file")]
    Read(#[source] std::io::Error),
    #[error("not a clouds.yaml")]
    NotYaml(#[source] yaml_serde::Error),
    #[error("no cloud named {cloud:?} (clouds: {known})")]
    NoSuchCloud { cloud: String, known: String },
    #[error("identity_api_version {0} is not supported (only 3)")]
    IdentityVersion(String),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("an application credential given by name needs auth.username or auth.user_id")]
    CredentialNeedsUser,
    #[error("auth_type {0:?} is not supported (password, v3applicationcredential)")]
    AuthType(String),
    #[error("interface {0:?} is not public, internal or admin")]
    Interface(String),
}

/// Reads cloud `cloud` from the `clouds.yaml` at `path`.
pub fn load(path: &Path, cloud: &str) -> Result<CloudConfig, OpenStackError> {
    let failed = |source| OpenStackError::CloudsFile {
        path: path.to_path_buf(),
        source,
    };
    spec(path, cloud)?.resolve().map_err(failed)
}

/// Reads cloud `cloud` from the `clouds.yaml` at `path`, unresolved.
pub fn spec(path: &Path, cloud: &str) -> Result<CloudSpec, OpenStackError> {
    let failed = |source| OpenStackError::CloudsFile {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(CloudsError::Read(e)))?;
    parse_spec(&text, cloud).map_err(failed)
}

/// Parses `clouds.yaml` text and resolves cloud `cloud`.
pub fn parse(text: &str, cloud: &str) -> Result<CloudConfig, CloudsError> {
    parse_spec(text, cloud)?.resolve()
}

fn parse_spec(text: &str, cloud: &str) -> Result<CloudSpec, CloudsError> {
    let mut file: File = yaml_serde::from_str(text).map_err(CloudsError::NotYaml)?;
    let known: Vec<String> = file.clouds.keys().cloned().collect();
    file.clouds
        .remove(cloud)
        .ok_or_else(|| CloudsError::NoSuchCloud {
            cloud: cloud.to_string(),
            known: known.join(", "),
        })
}

fn resolve(raw: &CloudSpec) -> Result<CloudConfig, CloudsError> {
    if let Some(v) = &raw.identity_api_version {
        let v = v.to_string().trim_matches('"').to_string();
        if v != "3" && v != "3.0" {
            return Err(CloudsError::IdentityVersion(v));
        }
    }
    let a = &raw.auth;
    let auth_url = a
        .auth_url
        .as_deref()
        .ok_or(CloudsError::Missing("auth.auth_url"))?
        .trim_end_matches('/');
    let auth_url = if auth_url.ends_with("/v3") {
        auth_url.to_string()
    } else {
        format!("{auth_url}/v3")
    };
    // The domain of names: the specific key, else the generic one, else "Default".
    let domain = |name: &Option<String>, id: &Option<String>| match (id, name) {
        (Some(id), _) => Domain::Id(id.clone()),
        (None, Some(name)) => Domain::Name(name.clone()),
        (None, None) => match (&a.domain_id, &a.domain_name) {
            (Some(id), _) => Domain::Id(id.clone()),
            (None, Some(name)) => Domain::Name(name.clone()),
            (None, None) => Domain::Name("Default".into()),
        },
    };
    let user = match (&a.user_id, &a.username) {
        (Some(id), _) => Some(Named::Id(id.clone())),
        (None, Some(name)) => Some(Named::Name {
            name: name.clone(),
            domain: domain(&a.user_domain_name, &a.user_domain_id),
        }),
        (None, None) => None,
    };
    let auth_type = raw.auth_type.as_deref().unwrap_or("password");
    let credentials = match auth_type {
        "password" | "v3password" => {
            let project = match (
                a.project_id.as_ref().or(a.tenant_id.as_ref()),
                a.project_name.as_ref().or(a.tenant_name.as_ref()),
            ) {
                (Some(id), _) => Named::Id(id.clone()),
                (None, Some(name)) => Named::Name {
                    name: name.clone(),
                    domain: domain(&a.project_domain_name, &a.project_domain_id),
                },
                (None, None) => {
                    return Err(CloudsError::Missing("auth.project_name or auth.project_id"))
                }
            };
            Credentials::Password {
                user: user.ok_or(CloudsError::Missing("auth.username or auth.user_id"))?,
                password: a
                    .password
                    .clone()
                    .ok_or(CloudsError::Missing("auth.password"))?,
                project,
            }
        }
        "v3applicationcredential" | "applicationcredential" => {
            let secret = a
                .application_credential_secret
                .clone()
                .ok_or(CloudsError::Missing("auth.application_credential_secret"))?;
            if a.application_credential_id.is_none() {
                if a.application_credential_name.is_none() {
                    return Err(CloudsError::Missing(
                        "auth.application_credential_id or _name",
                    ));
                }
                if user.is_none() {
                    return Err(CloudsError::CredentialNeedsUser);
                }
            }
            Credentials::ApplicationCredential {
                id: a.application_credential_id.clone(),
                name: a.application_credential_name.clone(),
                user,
                secret,
            }
        }
        other => return Err(CloudsError::AuthType(other.to_string())),
    };
    let interface = match raw
        .interface
        .as_deref()
        .or(raw.endpoint_type.as_deref())
        .map(|s| s.trim_end_matches("URL").to_ascii_lowercase())
        .as_deref()
    {
        None | Some("public") => Interface::Public,
        Some("internal") => Interface::Internal,
        Some("admin") => Interface::Admin,
        Some(other) => return Err(CloudsError::Interface(other.to_string())),
    };
    Ok(CloudConfig {
        auth_url,
        credentials,
        region_name: raw.region_name.clone(),
        interface,
        verify: raw.verify.unwrap_or(true),
        cacert: raw.cacert.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_cloud_resolves_names_in_their_domains() {
        let c = parse(
            "clouds:\n  openstack:\n    auth:\n      auth_url: https://keystone.example:5000\n      \
             username: praas\n      password: fake\n      project_name: service\n      \
             user_domain_name: Default\n      project_domain_id: default\n    \
             region_name: RegionTwo\n    interface: internal\n    identity_api_version: 3\n",
            "openstack",
        )
        .unwrap();
        assert_eq!(c.auth_url, "https://keystone.example:5000/v3");
        assert_eq!(c.region_name.as_deref(), Some("RegionTwo"));
        assert_eq!(c.interface, Interface::Internal);
        assert!(c.verify);
        match c.credentials {
            Credentials::Password {
                user,
                password,
                project,
            } => {
                assert_eq!(
                    user,
                    Named::Name {
                        name: "praas".into(),
                        domain: Domain::Name("Default".into())
                    }
                );
                assert_eq!(password, "fake");
                assert_eq!(
                    project,
                    Named::Name {
                        name: "service".into(),
                        domain: Domain::Id("default".into())
                    }
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn application_credentials_by_id_or_by_name_with_user() {
        let by_id = parse(
            "clouds:\n  openstack:\n    auth_type: v3applicationcredential\n    auth:\n      \
             auth_url: http://127.0.0.1:5000/v3/\n      application_credential_id: abc\n      \
             application_credential_secret: fake\n",
            "openstack",
        )
        .unwrap();
        assert_eq!(by_id.auth_url, "http://127.0.0.1:5000/v3");
        assert!(matches!(
            by_id.credentials,
            Credentials::ApplicationCredential { id: Some(ref id), .. } if id == "abc"
        ));
        let by_name = parse(
            "clouds:\n  openstack:\n    auth_type: v3applicationcredential\n    auth:\n      \
             auth_url: http://127.0.0.1:5000\n      application_credential_name: praas\n      \
             username: svc\n      application_credential_secret: fake\n",
            "openstack",
        )
        .unwrap();
        assert!(matches!(
            by_name.credentials,
            Credentials::ApplicationCredential { user: Some(_), .. }
        ));
        let err = parse(
            "clouds:\n  openstack:\n    auth_type: v3applicationcredential\n    auth:\n      \
             auth_url: http://x\n      application_credential_name: praas\n      \
             application_credential_secret: fake\n",
            "openstack",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("username"), "{err}");
    }

    #[test]
    fn mistakes_are_named() {
        let missing = parse("clouds:\n  other: {}\n", "openstack")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("\"openstack\"") && missing.contains("other"),
            "{missing}"
        );
        let no_password = parse(
            "clouds:\n  openstack:\n    auth:\n      auth_url: http://x\n      username: u\n      \
             project_name: p\n",
            "openstack",
        )
        .unwrap_err()
        .to_string();
        assert!(no_password.contains("password"), "{no_password}");
        let v2 = parse(
            "clouds:\n  openstack:\n    identity_api_version: 2\n    auth:\n      auth_url: http://x\n",
            "openstack",
        )
        .unwrap_err()
        .to_string();
        assert!(v2.contains("only 3"), "{v2}");
        let token = parse(
            "clouds:\n  openstack:\n    auth_type: token\n    auth:\n      auth_url: http://x\n",
            "openstack",
        )
        .unwrap_err()
        .to_string();
        assert!(token.contains("not supported"), "{token}");
        // Secrets never reach a debug print.
        let c = parse(
            "clouds:\n  openstack:\n    auth:\n      auth_url: http://x\n      username: u\n      \
             password: hunter2\n      project_name: p\n",
            "openstack",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
