//! Where an OVSDB server is, written as OVS and Neutron write it: `tcp:IP:PORT`,
//! `ssl:IP:PORT`, `unix:PATH`, several separated by commas (a clustered database's members).

use std::fmt;
use std::path::PathBuf;

use super::OvsdbError;

/// One server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    Tcp { host: String, port: u16 },
    Ssl { host: String, port: u16 },
    Unix { path: PathBuf },
}

impl Remote {
    /// Parses one remote (`tcp:127.0.0.1:6641`, `ssl:[::1]:6641`, `unix:/run/ovn/ovnnb_db.sock`).
    pub fn parse(text: &str) -> Result<Remote, OvsdbError> {
        let invalid = |reason: &str| OvsdbError::Remote {
            remote: text.to_string(),
            reason: reason.to_string(),
        };
        let text = text.trim();
        let (scheme, rest) = text
            .split_once(':')
            .ok_or_else(|| invalid("expected tcp:HOST:PORT, ssl:HOST:PORT or unix:PATH"))?;
        match scheme {
            "unix" if !rest.is_empty() => Ok(Remote::Unix {
                path: PathBuf::from(rest),
            }),
            "unix" => Err(invalid("the socket path is missing")),
            "tcp" | "ssl" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| invalid("the port is missing (HOST:PORT)"))?;
                let port: u16 = port
                    .parse()
                    .map_err(|_| invalid("the port is not a number from 1 to 65535"))?;
                if port == 0 {
                    return Err(invalid("the port is not a number from 1 to 65535"));
                }
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    return Err(invalid("the host is missing (HOST:PORT)"));
                }
                let host = host.to_string();
                Ok(if scheme == "tcp" {
                    Remote::Tcp { host, port }
                } else {
                    Remote::Ssl { host, port }
                })
            }
            "ptcp" | "pssl" | "punix" => Err(invalid(
                "that is a listening address (for the server); a client connects to tcp:, ssl: or unix:",
            )),
            _ => Err(invalid(
                "unknown scheme (expected tcp:HOST:PORT, ssl:HOST:PORT or unix:PATH)",
            )),
        }
    }

    /// Parses a comma-separated list, as `ovn_nb_connection` may hold one.
    pub fn parse_list(text: &str) -> Result<Vec<Remote>, OvsdbError> {
        let remotes = text
            .split(',')
            .filter(|part| !part.trim().is_empty())
            .map(Remote::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if remotes.is_empty() {
            return Err(OvsdbError::Remote {
                remote: text.to_string(),
                reason: "no remote given".to_string(),
            });
        }
        Ok(remotes)
    }

    pub fn is_ssl(&self) -> bool {
        matches!(self, Remote::Ssl { .. })
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remote::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Remote::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Remote::Ssl { host, port } if host.contains(':') => write!(f, "ssl:[{host}]:{port}"),
            Remote::Ssl { host, port } => write!(f, "ssl:{host}:{port}"),
            Remote::Unix { path } => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_are_read_as_ovs_writes_them() {
        assert_eq!(
            Remote::parse("tcp:127.0.0.1:6641").unwrap(),
            Remote::Tcp {
                host: "127.0.0.1".into(),
                port: 6641
            }
        );
        assert_eq!(
            Remote::parse("ssl:[2001:db8::1]:6641").unwrap(),
            Remote::Ssl {
                host: "2001:db8::1".into(),
                port: 6641
            }
        );
        assert_eq!(
            Remote::parse("unix:/run/ovn/ovnnb_db.sock").unwrap(),
            Remote::Unix {
                path: "/run/ovn/ovnnb_db.sock".into()
            }
        );
        for remote in [
            "tcp:127.0.0.1:6641",
            "ssl:[2001:db8::1]:6641",
            "unix:/run/ovn/ovnnb_db.sock",
        ] {
            assert_eq!(Remote::parse(remote).unwrap().to_string(), remote);
        }
        let list = Remote::parse_list("tcp:192.0.2.1:6641, tcp:192.0.2.2:6641,").unwrap();
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn a_bad_remote_says_what_is_wrong() {
        let message = |text: &str| Remote::parse(text).unwrap_err().to_string();
        assert!(message("127.0.0.1:6641").contains("unknown scheme"));
        assert!(message("tcp:127.0.0.1").contains("port is missing"));
        assert!(message("tcp:127.0.0.1:99999").contains("1 to 65535"));
        assert!(message("ptcp:6641").contains("listening address"));
        assert!(message("unix:").contains("path is missing"));
        assert!(Remote::parse_list(" , ").is_err());
    }
}
