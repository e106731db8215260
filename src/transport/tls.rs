//! TLS on a listener of its own: rustls as a sans-I/O state machine, driven by the
//! reactor like any other [`Transport`].
//!
//! The reactor moves ciphertext between the socket and rustls's
//! [`ServerConnection`]; rustls turns it into the plaintext the hub reads (the same
//! wire format as the plain listener's) and the hub's output into records. Nothing
//! here blocks and nothing here knows the protocol.
//!
//! - Reading: plaintext rustls already holds first; then one `read_tls` from the socket,
//!   `process_new_packets`, and what that produced of rustls's own (the handshake's
//!   next flight, an alert) is written at once. `WouldBlock` only when the socket said
//!   so and no plaintext is left, as the reactor's edge-triggered loop needs;
//!   [`NextTurn`] after `READ_SHARE` (64 KiB) of ciphertext that produced no plaintext, so
//!   the reactor reads the rest on its next turn, after the others.
//! - Writing: the hub's bytes go through `writer()`, which encrypts them into rustls's
//!   send buffer, bounded by [`SEND_BUFFER`]: once that much ciphertext waits for the
//!   socket, [`Transport::write_vectored`] says `WouldBlock` and the hub's own output
//!   limits (a slow consumer is dropped at `max_outbuf`) apply as for a plain socket.
//! - Interest: the reactor registers every connection for both directions once
//!   (edge-triggered), so what rustls wants (`wants_read` / `wants_write`) decides
//!   what is done on each event rather than a re-registration: reading until the socket
//!   is drained, writing whenever rustls holds records.
//! - Errors: a record or handshake rustls refuses (garbage, a plaintext frame, a bad
//!   client hello) queues an alert; it is sent if the socket takes it, and the read
//!   fails, so the hub closes that connection and no other. A handshake that never
//!   finishes is closed by the hub's login timeout like any connection that does not
//!   log in. A closed connection says `close_notify` (best effort) when dropped.
//! - Reload: [`TlsWrapper`] holds the configuration in an `Arc`; SIGHUP reads the
//!   certificate and key files again and swaps it. New connections get the new
//!   certificate, open ones keep the configuration they started with. A failed
//!   reload keeps the old one and says why.
//!
//! Memory: rustls keeps a read buffer (4 KiB while idle; it shrinks back on the next
//! read after a larger record) and its send buffer empties as records leave, so an
//! idle logged-in connection costs the connection state and its keys (measured in
//! BENCHMARKS.md, "TLS").

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::transport::{NextTurn, ReloadError, Stream, Transport, Wrapper};

/// Ciphertext (or, during the handshake, plaintext) rustls may hold unsent for one
/// connection before writes are refused with `WouldBlock`.
pub const SEND_BUFFER: usize = 32 * 1024;

/// Ciphertext one read takes from the socket without producing plaintext (records
/// that carry nothing for the hub: a key update, a handshake message) before it lets
/// the other connections have a turn: a stream of such records cannot hold the loop.
const READ_SHARE: usize = 64 * 1024;

/// Why the certificate and key could not be loaded.
#[derive(Debug)]
pub enum TlsError {
    /// The certificate file could not be read, or is not PEM.
    CertFile(PathBuf, PemError),
    /// The certificate file holds no certificate.
    NoCertificate(PathBuf),
    /// The key file could not be read, or is not PEM.
    KeyFile(PathBuf, PemError),
    /// The key file holds no private key.
    NoKey(PathBuf),
    /// rustls refused the protocol versions.
    Setup(rustls::Error),
    /// rustls refused the certificate with this key (not its key, an unusable key).
    CertWithKey {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::CertFile(cert, e) => {
                write!(f, "certificate file {}: {}", cert.display(), pem_error(e))
            }
            TlsError::NoCertificate(cert) => write!(
                f,
                "certificate file {}: no certificate in it (a PEM \"BEGIN CERTIFICATE\" section)",
                cert.display()
            ),
            TlsError::KeyFile(key, e) => {
                write!(f, "key file {}: {}", key.display(), pem_error(e))
            }
            TlsError::NoKey(key) => write!(
                f,
                "key file {}: no private key in it (a PEM \"BEGIN PRIVATE KEY\", \
                 \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" section)",
                key.display()
            ),
            TlsError::Setup(e) => write!(f, "TLS setup: {e}"),
            TlsError::CertWithKey { cert, key, error } => write!(
                f,
                "certificate {} with key {}: {error}",
                cert.display(),
                key.display()
            ),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::CertFile(_, e) | TlsError::KeyFile(_, e) => Some(e),
            TlsError::Setup(e) | TlsError::CertWithKey { error: e, .. } => Some(e),
            TlsError::NoCertificate(_) | TlsError::NoKey(_) => None,
        }
    }
}

/// Reads a certificate chain and its private key (PEM files) into a server
/// configuration: TLS 1.2 and 1.3, ring as the crypto provider, no client
/// certificates. The chain's first certificate is the server's; the key may be PKCS#8,
/// PKCS#1 (RSA) or SEC1 (EC), and must belong to that certificate.
pub fn load_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::CertFile(cert.to_path_buf(), e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        PemError::NoItemsFound => TlsError::NoKey(key.to_path_buf()),
        e => TlsError::KeyFile(key.to_path_buf(), e),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|error| TlsError::CertWithKey {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            error,
        })?;
    Ok(Arc::new(config))
}

/// A PEM file's failure in words: unreadable, or not PEM.
fn pem_error(e: &PemError) -> String {
    match e {
        PemError::Io(e) => format!("cannot read it: {e}"),
        e => format!("not valid PEM: {e}"),
    }
}

/// The TLS listener's wrapper: the configuration new connections get, and where it
/// came from (for SIGHUP).
pub struct TlsWrapper {
    cert: PathBuf,
    key: PathBuf,
    config: Arc<ServerConfig>,
}

impl TlsWrapper {
    /// Loads the certificate chain and key (see [`load_config`]).
    pub fn new(cert: &Path, key: &Path) -> Result<TlsWrapper, TlsError> {
        Ok(TlsWrapper {
            config: load_config(cert, key)?,
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
    }

    /// A TLS connection over `sock` with the current configuration.
    pub fn connection(&self, sock: TcpStream) -> io::Result<TlsTransport> {
        let mut tls = ServerConnection::new(self.config.clone()).map_err(io::Error::other)?;
        tls.set_buffer_limit(Some(SEND_BUFFER));
        Ok(TlsTransport { sock, tls })
    }
}

impl Wrapper for TlsWrapper {
    fn name(&self) -> &str {
        "TLS"
    }

    fn wrap(&mut self, sock: TcpStream, _peer: SocketAddr) -> io::Result<Box<dyn Transport>> {
        Ok(Box::new(self.connection(sock)?))
    }

    fn reload(&mut self) -> Result<(), ReloadError> {
        self.config = load_config(&self.cert, &self.key)?;
        Ok(())
    }
}

/// One TLS connection: the socket and rustls's state for it. A [`Transport`] for the
/// chat protocol itself, and a [`Stream`] for the web transport (HTTPS).
pub struct TlsTransport {
    sock: TcpStream,
    tls: ServerConnection,
}

impl TlsTransport {
    /// Writes the records rustls holds until they are out or the socket is full;
    /// returns whether they are all out.
    fn send_pending(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

impl Transport for TlsTransport {
    fn socket(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut taken = 0;
        loop {
            // Plaintext already decrypted first: the socket may have nothing more.
            match self.tls.reader().read(buf) {
                // 0: the peer said close_notify.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket ended without close_notify: closed all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if taken >= READ_SHARE {
                // Its share for now, and nothing for the hub: read again next turn.
                return Err(NextTurn::error());
            }
            match self.tls.read_tls(&mut self.sock) {
                // 0, the end of the stream: processed below, then the reader says
                // which kind.
                Ok(n) => taken += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // rustls queued an alert that says why: send it if the socket takes it.
                let _ = self.send_pending();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("TLS: {e}"),
                ));
            }
            // The handshake's next flight (or a key update's answer) goes out now.
            self.send_pending()?;
        }
    }

    fn write_vectored(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        // Make room first: what the socket takes now need not wait in rustls.
        self.send_pending()?;
        let n = self.tls.writer().write_vectored(iov)?;
        if n == 0 && iov.iter().any(|s| !s.is_empty()) {
            // SEND_BUFFER of records wait for the socket: backpressure for the hub.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<bool> {
        self.send_pending()
    }
}

/// The plaintext, for a transport that runs over TLS (the web listener's HTTPS).
impl Stream for TlsTransport {
    const TLS: bool = true;

    fn socket(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Transport::read(self, buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_pending()?;
        let n = self.tls.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<bool> {
        self.send_pending()
    }

    /// `close_notify`; what the socket does not take now goes out with the next flush.
    fn shutdown_write(&mut self) {
        self.tls.send_close_notify();
        let _ = self.send_pending();
    }
}

impl Drop for TlsTransport {
    /// The connection is being closed (by the hub, or at shutdown): say `close_notify`
    /// so the peer knows the stream was not cut short. Best effort, never blocking.
    fn drop(&mut self) {
        self.tls.send_close_notify();
        let _ = self.send_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_empty_files_say_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();

        let e = load_config(&missing, &missing).unwrap_err();
        assert!(matches!(e, TlsError::CertFile(..)), "{e:?}");
        let text = e.to_string();
        let want = format!("certificate file {}: cannot read it: ", missing.display());
        assert!(text.starts_with(&want), "{text}");
        assert!(std::error::Error::source(&e).is_some());

        let e = load_config(&empty, &empty).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "certificate file {}: no certificate in it (a PEM \"BEGIN CERTIFICATE\" section)",
                empty.display()
            )
        );
        assert!(std::error::Error::source(&e).is_none());
    }
}
