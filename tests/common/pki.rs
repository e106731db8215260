//! Certificates for the TLS tests, generated at run time and never committed: a root
//! CA, an intermediate CA, and a server certificate for `localhost` and `127.0.0.1`
//! signed by the intermediate, written as PEM files. Shared by the server's TLS tests
//! and the client's (`client/tests/` includes this file by path).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// How the server's private key is written.
#[derive(Clone, Copy, Debug)]
pub enum KeyFormat {
    /// `BEGIN PRIVATE KEY` (what rcgen writes).
    Pkcs8,
    /// `BEGIN EC PRIVATE KEY`.
    Sec1,
}

/// One generated set of files.
pub struct Pki {
    /// The root CA's certificate: what a client trusts.
    pub ca: PathBuf,
    /// The server's chain: its certificate, then the intermediate CA's.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

impl Pki {
    /// The files a server is given, `<dir>/live-cert.pem` and `live-key.pem`, holding
    /// `from`'s certificate and key until [`Pki::install`] replaces them (a renewal),
    /// with `from`'s CA.
    pub fn live(dir: &Path, from: &Pki) -> Pki {
        let live = Pki {
            ca: from.ca.clone(),
            cert: dir.join("live-cert.pem"),
            key: dir.join("live-key.pem"),
        };
        live.install(from);
        live
    }

    /// Replaces this set's certificate and key files with `from`'s, each in one step.
    pub fn install(&self, from: &Pki) {
        replace(&from.cert, &self.cert);
        replace(&from.key, &self.key);
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// Generates a root CA, an intermediate and a server certificate for localhost and
/// 127.0.0.1, and writes `<name>-ca.pem`, `<name>-cert.pem` (chain) and
/// `<name>-key.pem` into `dir`.
pub fn make(dir: &Path, name: &str, format: KeyFormat) -> Pki {
    make_for(dir, name, format, &["localhost", "127.0.0.1"])
}

/// Like [`make`], the server certificate for `names` (host names or addresses).
pub fn make_for(dir: &Path, name: &str, format: KeyFormat, names: &[&str]) -> Pki {
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params(&format!("{name} test root"));
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let root = Issuer::new(root_params, root_key);

    let mid_key = KeyPair::generate().unwrap();
    let mid_params = ca_params(&format!("{name} test intermediate"));
    let mid_cert = mid_params.signed_by(&mid_key, &root).unwrap();
    let mid = Issuer::new(mid_params, mid_key);

    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    let cert = params.signed_by(&key, &mid).unwrap();

    let files = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&files.ca, root_cert.pem()).unwrap();
    std::fs::write(&files.cert, cert.pem() + &mid_cert.pem()).unwrap();
    let key_pem = match format {
        KeyFormat::Pkcs8 => key.serialize_pem(),
        KeyFormat::Sec1 => pem("EC PRIVATE KEY", pkcs8_inner(&key.serialize_der())),
    };
    std::fs::write(&files.key, key_pem).unwrap();
    files
}

/// Replaces `to`'s file with `from`'s in one step (as a certificate renewal does), so
/// a reader never sees half a file.
pub fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// The private key inside a PKCS#8 `PrivateKeyInfo` (DER): for an EC key, its SEC1
/// `ECPrivateKey`; for an RSA key, its PKCS#1 `RSAPrivateKey`.
pub fn pkcs8_inner(der: &[u8]) -> &[u8] {
    // SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING privateKey, ... }
    let (_, body) = tlv(der, 0x30);
    let (rest, _) = tlv(body, 0x02);
    let (rest, _) = tlv(rest, 0x30);
    tlv(rest, 0x04).1
}

/// One DER element of tag `tag` at the start of `b`: (what follows it, its content).
fn tlv(b: &[u8], tag: u8) -> (&[u8], &[u8]) {
    assert_eq!(b[0], tag, "unexpected DER tag");
    let (len, head) = match b[1] {
        n if n < 0x80 => (n as usize, 2),
        n => {
            let k = (n & 0x7f) as usize;
            let len = b[2..2 + k].iter().fold(0usize, |a, &x| a << 8 | x as usize);
            (len, 2 + k)
        }
    };
    (&b[head + len..], &b[head..head + len])
}

/// PEM-encodes `der` under `label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().fold(0u32, |a, &x| a << 8 | x as u32) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out + &format!("-----END {label}-----\n")
}
