//! TLS for the client (`--tls`): the server's certificate is verified for the host
//! name in `--server HOST:PORT`, against the system's trusted roots or against the
//! one CA given with `--tls-ca`. A certificate that does not verify ends the attempt
//! with a sentence that says why; there is no way to skip the check.
//!
//! Roots come from rustls-native-certs: the system's own store (on Linux the
//! ca-certificates bundle, or `SSL_CERT_FILE` / `SSL_CERT_DIR`), which the system
//! keeps current and where an administrator adds a company CA, rather than a list
//! compiled into the binary (webpki-roots) that ages with it.
//!
//! The connection is used from two threads, as the plain one is: the menu thread
//! writes, the reader thread reads. One rustls `ClientConnection` behind a mutex
//! serves both; the socket is read without the lock held (a blocking read must not
//! hold up a write), and records are written under a second lock taken first, so
//! that they reach the socket in the order they were sealed.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore};

/// How long the handshake may take.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// The client's TLS settings: trust only the CA in `ca`, or the system's roots.
pub fn config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "--tls-ca {}: no certificate in it (a PEM \"BEGIN CERTIFICATE\" section)",
                    path.display()
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(format!(
                    "--tls: no trusted root certificates found on this system{why}; install \
                     the system's CA certificates (ca-certificates), or name the server's CA \
                     with --tls-ca"
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The host part of `HOST:PORT` (`[v6]:PORT` too), as the certificate must name it.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Runs the handshake on a connected socket; the error is a sentence for the user
/// (kind `InvalidData`).
pub fn connect(
    sock: TcpStream,
    cfg: Arc<ClientConfig>,
    host: &str,
) -> io::Result<(TlsWriter, TlsReader)> {
    let name = ServerName::try_from(host.to_string()).map_err(|_| {
        refused(format!(
            "{host:?} is not a host name or address a certificate can name"
        ))
    })?;
    let mut conn = ClientConnection::new(cfg, name).map_err(|e| refused(e.to_string()))?;
    let mut hs = sock.try_clone()?;
    hs.set_read_timeout(Some(HANDSHAKE_WAIT))?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut hs) {
            return Err(handshake_error(e, host));
        }
    }
    hs.set_read_timeout(None)?;
    // The menu thread may write a long message at once: no limit on what waits.
    conn.set_buffer_limit(None);
    let shared = Arc::new(Shared {
        conn: Mutex::new(conn),
        out: Mutex::new(sock.try_clone()?),
    });
    Ok((
        TlsWriter {
            shared: shared.clone(),
        },
        TlsReader {
            shared,
            sock,
            buf: vec![0; 32 * 1024].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
        },
    ))
}

fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Says why a handshake failed, in words a user can act on.
fn handshake_error(e: io::Error, host: &str) -> io::Error {
    let Some(tls) = e.get_ref().and_then(|x| x.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                refused("the server did not complete a TLS handshake in time".into())
            }
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => refused(
                "the server closed the connection during the TLS handshake \
                 (is this its TLS port?)"
                    .into(),
            ),
            _ => e,
        };
    };
    let why = match tls {
        rustls::Error::InvalidCertificate(c) => {
            let what = match c {
                CertificateError::UnknownIssuer => "is not signed by an authority this client \
                    trusts (a private or self-signed CA? name it with --tls-ca)"
                    .to_string(),
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    format!("is not valid for {host}")
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "has expired".to_string()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "is not valid yet".to_string()
                }
                // A self-signed certificate made as a CA (openssl's default).
                CertificateError::Other(o) if format!("{o:?}").contains("CaUsedAsEndEntity") => {
                    "is a CA certificate, not a server's (a self-signed certificate \
                     needs basicConstraints CA:FALSE: see the README)"
                        .to_string()
                }
                other => format!("was refused ({other})"),
            };
            format!("the server's certificate {what}; not connected")
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the server did not answer in TLS (is this its plain port?)".to_string()
        }
        other => format!("the TLS handshake failed: {other}"),
    };
    refused(why)
}

struct Shared {
    conn: Mutex<ClientConnection>,
    /// The socket records are written to; taken before `conn` by whoever writes.
    out: Mutex<TcpStream>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Seals `plain` (if any) and writes every record rustls holds, in order.
    fn send(&self, plain: &[u8], close: bool) -> io::Result<()> {
        let mut out = lock(&self.out);
        let mut records = Vec::new();
        {
            let mut conn = lock(&self.conn);
            if !plain.is_empty() {
                conn.writer().write_all(plain)?;
            }
            if close {
                conn.send_close_notify();
            }
            while conn.wants_write() {
                conn.write_tls(&mut records)?;
            }
        }
        out.write_all(&records)
    }
}

/// The menu thread's half: plaintext in, records out to the socket.
pub struct TlsWriter {
    shared: Arc<Shared>,
}

impl TlsWriter {
    /// Says `close_notify`: nothing more will be written.
    pub fn close(&mut self) -> io::Result<()> {
        self.shared.send(&[], true)
    }
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.shared.send(buf, false)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reader thread's half: blocking reads of the socket, plaintext out.
pub struct TlsReader {
    shared: Arc<Shared>,
    sock: TcpStream,
    /// Ciphertext read but not yet handed to rustls (it takes a record or so at a
    /// time while plaintext waits).
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
}

impl Read for TlsReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut conn = lock(&self.shared.conn);
            match conn.reader().read(out) {
                // 0: the server said close_notify.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Closed without close_notify: closed all the same for a chat client.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.start < self.end || self.eof {
                let mut data = &self.buf[self.start..self.end];
                let before = data.len();
                conn.read_tls(&mut data)?;
                self.start += before - data.len();
                let processed = conn.process_new_packets();
                let answer = conn.wants_write();
                drop(conn);
                if let Err(e) = processed {
                    // rustls queued an alert saying why: send it, best effort.
                    let _ = self.shared.send(&[], false);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                if answer {
                    self.shared.send(&[], false)?;
                }
                continue;
            }
            drop(conn);
            let n = self.sock.read(&mut self.buf)?;
            self.start = 0;
            self.end = n;
            self.eof = n == 0;
        }
    }
}
