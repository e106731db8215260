//! TLS clients on rustls, trusting only a CA made at run time (`pki.rs`); the server
//! started with a TLS listener; and what a TLS port may answer a client that speaks
//! no TLS.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion,
};

use super::ServerProc;
use super::pki::Pki;

/// A TLS client session over TCP.
pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A client configuration trusting only the CA in `ca`, speaking `versions`
/// (`rustls::DEFAULT_VERSIONS`: TLS 1.3 and 1.2).
pub fn client_config(
    ca: &Path,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Connects to `addr` as `localhost` and completes the handshake; the error says why
/// it failed.
pub fn try_connect(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Result<Tls, String> {
    let tcp = super::connect(addr);
    let conn = ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// Connects to `addr` trusting the CA in `ca`; the handshake must succeed.
pub fn connect(addr: SocketAddr, ca: &Path) -> Tls {
    try_connect(addr, client_config(ca, rustls::DEFAULT_VERSIONS)).expect("TLS handshake")
}

/// The server's flags for the listener `flag` (`--tls-listen`, `--web-tls-listen`) on
/// a free loopback port, with `p`'s certificate and key.
pub fn listen_args(flag: &str, p: &Pki) -> Vec<String> {
    vec![
        flag.into(),
        "127.0.0.1:0".into(),
        "--tls-cert".into(),
        p.cert.display().to_string(),
        "--tls-key".into(),
        p.key.display().to_string(),
    ]
}

/// The server with the listener `flag` (see [`listen_args`]) besides the plain one,
/// and `extra`; returns it and the address that listener logged as `name` ("TLS",
/// "HTTPS").
pub fn start(
    data: &Path,
    flag: &str,
    name: &str,
    p: &Pki,
    extra: &[&str],
) -> (ServerProc, SocketAddr) {
    let mut args = listen_args(flag, p);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ServerProc::start_listener(data, &args, name)
}

/// Whether `b` is nothing or TLS alert records only (content type 21).
pub fn alerts_only(mut b: &[u8]) -> bool {
    while b.len() >= 5 {
        let len = u16::from_be_bytes([b[3], b[4]]) as usize;
        if b[0] != 21 || b.len() < 5 + len {
            return false;
        }
        b = &b[5 + len..];
    }
    b.is_empty()
}
