//! How the CLI logs in, as the `openstack` client does, in this order:
//! 1. `--os-token` / `OS_TOKEN`: that token, with PRaaS at `--os-url`, or found in the catalog
//!    of Keystone at `OS_AUTH_URL`;
//! 2. `--os-cloud` / `OS_CLOUD`: that cloud of clouds.yaml (`OS_PASSWORD` fills in a missing
//!    password);
//! 3. an openrc's variables (`OS_AUTH_URL`, `OS_USERNAME`, `OS_PROJECT_NAME`, …, or an
//!    application credential's `OS_APPLICATION_CREDENTIAL_ID` and `_SECRET`).
//!
//! A password that is needed and not given is asked for on a terminal. With none of these, the
//! CLI says what to set: it never falls back to a cloud of its own choosing.

use super::cli::Connection;
use super::ClientError;
use crate::openstack::clouds::{self, AuthSpec, CloudConfig, CloudSpec, Credentials, Interface};

/// Asks for a secret on the terminal; `None` when there is no terminal.
pub trait Prompt {
    fn password(&self, label: &str) -> Option<String>;
}

/// The process's terminal (`/dev/tty`), with the input hidden.
pub struct Terminal;

impl Prompt for Terminal {
    fn password(&self, label: &str) -> Option<String> {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return None;
        }
        rpassword::prompt_password(format!("Password for {label}: ")).ok()
    }
}

/// How the CLI reaches PRaaS and OpenStack.
#[derive(Debug, Clone)]
pub enum Login {
    /// Credentials (or a token) Keystone knows: the catalog finds PRaaS, Neutron and Nova.
    Keystone(CloudConfig),
    /// A token alone, without Keystone: only PRaaS at its URL is reachable.
    BareToken(String),
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.clone().filter(|s| !s.is_empty())
}

/// The cloud the options and variables describe (see the module's comment).
pub fn login(c: &Connection, prompt: &dyn Prompt) -> Result<Login, ClientError> {
    if let Some(token) = non_empty(&c.os_token) {
        return match non_empty(&c.os_auth_url) {
            Some(auth_url) => {
                let spec = CloudSpec {
                    auth: AuthSpec {
                        auth_url: Some(auth_url),
                        ..Default::default()
                    },
                    ..spec_extras(c)
                };
                let mut cloud = resolve_token(&spec, token)?;
                apply_interface(&mut cloud, c)?;
                Ok(Login::Keystone(cloud))
            }
            None if non_empty(&c.os_url).is_some() => Ok(Login::BareToken(token)),
            None => Err(ClientError::Usage {
                message: "--os-token needs PRaaS's URL (--os-url or PRAAS_URL) or Keystone's \
                          (--os-auth-url or OS_AUTH_URL) to find it in the catalog"
                    .into(),
            }),
        };
    }
    let mut spec = if let Some(cloud) = non_empty(&c.os_cloud) {
        let file = super::clouds_file(c.clouds_file.as_deref())?;
        let mut spec = clouds::spec(&file, &cloud)?;
        // The openrc's password fills in a cloud kept without one, as the openstack client
        // does.
        if spec.auth.password.is_none() {
            spec.auth.password = non_empty(&c.os_password);
        }
        spec
    } else if non_empty(&c.os_auth_url).is_some() {
        from_options(c)
    } else {
        return Err(ClientError::Usage {
            message: "no credentials: set OS_CLOUD (or --os-cloud) to a cloud of clouds.yaml, \
                      source your project's openrc (OS_AUTH_URL, OS_USERNAME, OS_PROJECT_NAME, …), \
                      or give --os-token with --os-url"
                .into(),
        });
    };
    if spec.lacks_password() {
        let label = spec.user_label();
        spec.auth.password = Some(prompt.password(&label).ok_or_else(|| ClientError::Usage {
            message: format!(
                "no password for {label}: set OS_PASSWORD, or the cloud's auth.password in \
                 clouds.yaml, or run on a terminal to be asked"
            ),
        })?);
    }
    let mut cloud = spec
        .resolve()
        .map_err(|source| ClientError::Credentials { source })?;
    apply_interface(&mut cloud, c)?;
    Ok(Login::Keystone(cloud))
}

/// What an openrc's variables (or the same options) say.
fn from_options(c: &Connection) -> CloudSpec {
    let auth_type = if non_empty(&c.os_application_credential_id).is_some() {
        Some("v3applicationcredential".to_string())
    } else {
        None
    };
    CloudSpec {
        auth: AuthSpec {
            auth_url: non_empty(&c.os_auth_url),
            username: non_empty(&c.os_username),
            user_id: non_empty(&c.os_user_id),
            password: non_empty(&c.os_password),
            project_name: non_empty(&c.os_project_name),
            project_id: non_empty(&c.os_project_id),
            user_domain_name: non_empty(&c.os_user_domain_name),
            project_domain_name: non_empty(&c.os_project_domain_name),
            application_credential_id: non_empty(&c.os_application_credential_id),
            application_credential_secret: non_empty(&c.os_application_credential_secret),
            ..Default::default()
        },
        auth_type,
        ..spec_extras(c)
    }
}

/// The region and CA bundle of the options.
fn spec_extras(c: &Connection) -> CloudSpec {
    CloudSpec {
        region_name: non_empty(&c.os_region_name),
        cacert: c.os_cacert.clone(),
        ..Default::default()
    }
}

/// A cloud that logs in with `token`: the spec gives Keystone's URL.
fn resolve_token(spec: &CloudSpec, token: String) -> Result<CloudConfig, ClientError> {
    // Resolving needs credentials of some kind; any will do, they are replaced.
    let mut with_secret = spec.clone();
    with_secret.auth_type = Some("v3applicationcredential".into());
    with_secret.auth.application_credential_id = Some("token".into());
    with_secret.auth.application_credential_secret = Some("token".into());
    let mut cloud = with_secret
        .resolve()
        .map_err(|source| ClientError::Credentials { source })?;
    cloud.credentials = Credentials::Token { token };
    Ok(cloud)
}

/// `--os-interface` over the cloud's own.
fn apply_interface(cloud: &mut CloudConfig, c: &Connection) -> Result<(), ClientError> {
    if let Some(i) = non_empty(&c.os_interface) {
        cloud.interface = match i.trim_end_matches("URL").to_ascii_lowercase().as_str() {
            "public" => Interface::Public,
            "internal" => Interface::Internal,
            "admin" => Interface::Admin,
            _ => {
                return Err(ClientError::Usage {
                    message: format!("--os-interface {i:?} is not public, internal or admin"),
                })
            }
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoTerminal;
    impl Prompt for NoTerminal {
        fn password(&self, _: &str) -> Option<String> {
            None
        }
    }

    struct Typed(&'static str);
    impl Prompt for Typed {
        fn password(&self, _: &str) -> Option<String> {
            Some(self.0.into())
        }
    }

    fn openrc() -> Connection {
        Connection {
            os_auth_url: Some("http://keystone.example:5000".into()),
            os_username: Some("alice".into()),
            os_project_name: Some("shop".into()),
            os_user_domain_name: Some("Default".into()),
            os_project_domain_name: Some("Default".into()),
            ..Default::default()
        }
    }

    #[test]
    fn nothing_configured_says_what_to_set() {
        let err = login(&Connection::default(), &NoTerminal).unwrap_err();
        assert!(matches!(err, ClientError::Usage { .. }));
        let message = err.to_string();
        for hint in ["OS_CLOUD", "openrc", "--os-token"] {
            assert!(message.contains(hint), "{message}");
        }
    }

    #[test]
    fn an_openrc_without_a_password_asks_on_a_terminal_and_says_what_to_set_without_one() {
        let err = login(&openrc(), &NoTerminal).unwrap_err().to_string();
        assert!(
            err.contains("no password for alice in project shop"),
            "{err}"
        );
        assert!(err.contains("OS_PASSWORD"), "{err}");
        let Login::Keystone(cloud) = login(&openrc(), &Typed("s3cret")).unwrap() else {
            panic!("not a Keystone login");
        };
        assert_eq!(cloud.auth_url, "http://keystone.example:5000/v3");
        match cloud.credentials {
            Credentials::Password { password, .. } => assert_eq!(password, "s3cret"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_application_credential_from_the_environment() {
        let c = Connection {
            os_auth_url: Some("http://keystone.example:5000/v3".into()),
            os_application_credential_id: Some("ac1".into()),
            os_application_credential_secret: Some("secret".into()),
            os_interface: Some("internal".into()),
            ..Default::default()
        };
        let Login::Keystone(cloud) = login(&c, &NoTerminal).unwrap() else {
            panic!("not a Keystone login");
        };
        assert!(matches!(
            cloud.credentials,
            Credentials::ApplicationCredential { id: Some(ref id), .. } if id == "ac1"
        ));
        assert_eq!(cloud.interface, Interface::Internal);
    }

    #[test]
    fn a_token_needs_a_url_to_go_to() {
        let token = Connection {
            os_token: Some("gAAAA".into()),
            ..Default::default()
        };
        let err = login(&token, &NoTerminal).unwrap_err().to_string();
        assert!(
            err.contains("--os-url") && err.contains("OS_AUTH_URL"),
            "{err}"
        );
        let bare = Connection {
            os_url: Some("http://praas.example:3000".into()),
            ..token.clone()
        };
        assert!(matches!(
            login(&bare, &NoTerminal).unwrap(),
            Login::BareToken(t) if t == "gAAAA"
        ));
        let with_keystone = Connection {
            os_auth_url: Some("http://keystone.example:5000".into()),
            ..token
        };
        let Login::Keystone(cloud) = login(&with_keystone, &NoTerminal).unwrap() else {
            panic!("not a Keystone login");
        };
        assert!(matches!(cloud.credentials, Credentials::Token { ref token } if token == "gAAAA"));
    }
}
