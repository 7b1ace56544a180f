//! The byte streams an OVSDB connection runs over: TCP, a unix socket, or TLS over TCP, each
//! split into a reading half (for the connection's reader thread) and a writing half.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{OvsdbError, Remote};

/// The key, certificate and CA certificate of an `ssl:` remote, as Neutron's
/// `ovn_nb_private_key`, `ovn_nb_certificate` and `ovn_nb_ca_cert` name them (PEM files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub private_key: Option<PathBuf>,
    pub certificate: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("an ssl: remote needs {0} (the CA certificate that signed the server's)")]
    Missing(&'static str),
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} holds no {what}", path.display())]
    Empty { path: PathBuf, what: &'static str },
    #[error("the TLS configuration was refused")]
    Config(#[source] rustls::Error),
    #[error("{host:?} is not a valid server name")]
    ServerName { host: String },
}

pub(super) struct Halves {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
    /// Makes the reading half see end of stream, so that its thread ends.
    pub shutdown: Box<dyn Fn() + Send + Sync>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn open(remote: &Remote, tls: &TlsFiles) -> Result<Halves, OvsdbError> {
    let connect_error = |source| OvsdbError::Connect {
        remote: remote.to_string(),
        source,
    };
    match remote {
        Remote::Unix { path } => {
            let stream = UnixStream::connect(path).map_err(connect_error)?;
            split(
                stream,
                |s| s.try_clone(),
                |s| {
                    let _ = s.shutdown(Shutdown::Both);
                },
            )
            .map_err(connect_error)
        }
        Remote::Tcp { host, port } => {
            let stream = tcp(host, *port).map_err(connect_error)?;
            split(
                stream,
                |s| s.try_clone(),
                |s| {
                    let _ = s.shutdown(Shutdown::Both);
                },
            )
            .map_err(connect_error)
        }
        Remote::Ssl { host, port } => {
            let tls_error = |source| OvsdbError::Tls {
                remote: remote.to_string(),
                source,
            };
            let config = client_config(tls).map_err(tls_error)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|_| tls_error(TlsError::ServerName { host: host.clone() }))?;
            let session = rustls::ClientConnection::new(Arc::new(config), name)
                .map_err(|e| tls_error(TlsError::Config(e)))?;
            let stream = tcp(host, *port).map_err(connect_error)?;
            // The reading half holds the lock only for one read at a time: a short timeout
            // lets the writing half in between.
            stream
                .set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(connect_error)?;
            let closer = stream.try_clone().map_err(connect_error)?;
            let shared = Arc::new(Mutex::new(rustls::StreamOwned::new(session, stream)));
            Ok(Halves {
                reader: Box::new(TlsHalf(shared.clone())),
                writer: Box::new(TlsHalf(shared)),
                shutdown: Box::new(move || {
                    let _ = closer.shutdown(Shutdown::Both);
                }),
            })
        }
    }
}

/// The halves of a plain socket: clones of one descriptor.
fn split<S: Read + Write + Send + Sync + 'static>(
    stream: S,
    clone: impl Fn(&S) -> io::Result<S>,
    shutdown: fn(&S),
) -> io::Result<Halves> {
    let reader = clone(&stream)?;
    let closer = clone(&stream)?;
    Ok(Halves {
        reader: Box::new(reader),
        writer: Box::new(stream),
        shutdown: Box::new(move || shutdown(&closer)),
    })
}

fn tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    let ca = files
        .ca_cert
        .as_deref()
        .ok_or(TlsError::Missing("ovn_nb_ca_cert"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca)? {
        roots.add(cert).map_err(TlsError::Config)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Config)?
    .with_root_certificates(roots);
    match (&files.private_key, &files.certificate) {
        (Some(key), Some(cert)) => {
            let chain = certificates(cert)?;
            let pem = read_file(key)?;
            let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_slice())
                .map_err(|source| TlsError::Read {
                    path: key.clone(),
                    source,
                })?
                .ok_or_else(|| TlsError::Empty {
                    path: key.clone(),
                    what: "PEM private key",
                })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(TlsError::Config)
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        (None, Some(_)) => Err(TlsError::Missing("ovn_nb_private_key")),
        (Some(_), None) => Err(TlsError::Missing("ovn_nb_certificate")),
    }
}

/// One half of a TLS stream shared by the reader thread and the writers.
struct TlsHalf(Arc<Mutex<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>>);

impl Read for TlsHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let result = {
                let mut stream = self.0.lock().unwrap_or_else(|e| e.into_inner());
                stream.read(buf)
            };
            match result {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    // Nothing arrived within the timeout: let a writer in, then read on.
                    std::thread::yield_now();
                }
                other => return other,
            }
        }
    }
}

impl Write for TlsHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}
