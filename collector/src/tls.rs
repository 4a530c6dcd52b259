//! TLS for the one listener: loading the PEM certificate chain and key, the reloadable
//! certificate resolver, the agents' pin (SHA-256 of the SubjectPublicKeyInfo) and the
//! `tls self-signed` certificate maker.
//!
//! Design: the server's rustls config never changes; it asks [`CertResolver`] for the certified
//! key on every handshake, and the resolver holds that key in an [`ArcSwap`]. A reload (SIGHUP,
//! [`crate::App::reload`]) swaps in the key loaded from the new files: handshakes from then on
//! present the new certificate, while established connections (agents' WebSockets included)
//! keep the session they negotiated and are not touched. The crypto provider is ring, as for the
//! agent (jsonrpsee's TLS uses ring too), so one provider is ever compiled in.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// File name of the certificate chain `tls self-signed` writes (under `DIR/tls/`).
pub const SELF_SIGNED_CERT_FILE: &str = "cert.pem";
/// File name of the private key `tls self-signed` writes (under `DIR/tls/`).
pub const SELF_SIGNED_KEY_FILE: &str = "key.pem";
/// Directory under the data directory where `tls self-signed` writes.
pub const SELF_SIGNED_DIR: &str = "tls";
/// Validity of a `tls self-signed` certificate, days.
pub const SELF_SIGNED_VALID_DAYS: i64 = 825;

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The key does not fit the certificate, or rustls refuses it.
    #[error("{cert} with {key}: {reason}")]
    Key {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        reason: String,
    },
    /// Making a certificate failed.
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    /// Writing the generated files failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The crypto provider of every TLS endpoint of vmmon.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a PEM certificate chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or SEC1)
/// and checks that they belong together.
pub fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = std::fs::read(cert_file).map_err(|source| TlsError::Read {
        path: cert_file.to_path_buf(),
        source,
    })?;
    let key_pem = std::fs::read(key_file).map_err(|source| TlsError::Read {
        path: key_file.to_path_buf(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert_file.to_path_buf(),
            what: format!("not a PEM certificate chain ({e})"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert_file.to_path_buf(),
            what: "holds no CERTIFICATE".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: key_file.to_path_buf(),
        what: format!("holds no usable PRIVATE KEY ({e})"),
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Key {
        cert: cert_file.to_path_buf(),
        key: key_file.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(certified))
}

/// The agents' pin of a certificate: base64 of the SHA-256 of its SubjectPublicKeyInfo (the
/// same value as `openssl x509 -pubkey | openssl pkey -pubin -outform der | openssl dgst
/// -sha256 -binary | base64`, and curl's `--pinnedpubkey sha256//…`).
pub fn spki_pin(cert: &CertificateDer<'_>) -> Result<String, TlsError> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert).map_err(|e| TlsError::Pem {
        path: PathBuf::new(),
        what: format!("certificate cannot be parsed ({e})"),
    })?;
    let spki = parsed.subject_public_key_info();
    Ok(base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki.as_ref())))
}

/// Hands every new handshake the certified key now in force; [`CertResolver::set`] replaces
/// it atomically (see the module comment).
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    /// A resolver serving `key`.
    pub fn new(key: Arc<CertifiedKey>) -> CertResolver {
        CertResolver {
            current: ArcSwap::new(key),
        }
    }

    /// Serves `key` to every handshake from now on.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }

    /// The certified key now in force.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The listener's rustls config: TLS 1.2 and 1.3, HTTP/1.1 (the WebSocket upgrade needs it),
/// the certificate from `resolver`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Generate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What `tls self-signed` wrote.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The certificate (PEM); agents' `--ca-file` and `curl --cacert` take this file.
    pub cert_file: PathBuf,
    /// The private key (PEM, mode 0600).
    pub key_file: PathBuf,
    /// The agents' `--pin-sha256` value.
    pub pin: String,
}

/// Makes a self-signed certificate (ECDSA P-256) for `hostnames` (DNS names or IP addresses),
/// valid from yesterday for [`SELF_SIGNED_VALID_DAYS`], and writes it and its key into
/// `dir` (created if missing). Existing files are replaced.
pub fn write_self_signed(dir: &Path, hostnames: &[String]) -> Result<SelfSigned, TlsError> {
    let (cert_pem, key_pem, pin) = self_signed(hostnames, chrono::Utc::now())?;
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let cert_file = dir.join(SELF_SIGNED_CERT_FILE);
    let key_file = dir.join(SELF_SIGNED_KEY_FILE);
    write_private(&key_file, key_pem.as_bytes())?;
    std::fs::write(&cert_file, cert_pem.as_bytes()).map_err(|source| TlsError::Write {
        path: cert_file.clone(),
        source,
    })?;
    Ok(SelfSigned {
        cert_file,
        key_file,
        pin,
    })
}

/// The PEM certificate, PEM key and pin of a new self-signed certificate.
fn self_signed(
    hostnames: &[String],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(String, String, String), TlsError> {
    use chrono::Datelike;
    let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
    if hostnames.is_empty() {
        return Err(TlsError::Generate("give at least one --hostname".into()));
    }
    let mut params = rcgen::CertificateParams::new(hostnames.to_vec()).map_err(generate)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostnames[0].clone());
    let ymd = |t: chrono::DateTime<chrono::Utc>| {
        rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8)
    };
    params.not_before = ymd(now - chrono::Duration::days(1));
    params.not_after = ymd(now + chrono::Duration::days(SELF_SIGNED_VALID_DAYS));
    let key = rcgen::KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    let pin = spki_pin(cert.der())?;
    Ok((cert.pem(), key.serialize_pem(), pin))
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests;
