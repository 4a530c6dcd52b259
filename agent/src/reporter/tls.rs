//! How the agent trusts the collector: `wss://` verified against the system roots or a CA file,
//! optionally pinned to the collector's public key; plain `ws://` only to loopback unless the
//! config explicitly allows it; and a plain-words reason for every refused handshake.
//!
//! Design: jsonrpsee takes a ready rustls `ClientConfig` (`with_custom_cert_store`), so the
//! agent always builds its own: a [`PinnedVerifier`] that first runs the normal WebPKI checks
//! (chain to a trusted root, validity period, host name) with either the platform's roots
//! (`rustls-platform-verifier`) or the roots of `ca_file`, and then, when a pin is set, compares
//! the SHA-256 of the end-entity certificate's SubjectPublicKeyInfo. A pin never replaces
//! verification: it narrows it to one key, so a CA that issues a rogue certificate for the
//! collector's name still fails.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use jsonrpsee::client_transport::ws::WsHandshakeError;
use jsonrpsee::core::client::Error as ClientError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// SHA-256 of a SubjectPublicKeyInfo: what `--pin-sha256` names (base64 on the command line).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pin(pub [u8; 32]);

impl Pin {
    /// Parses base64 (standard alphabet, as `vmmon-collector tls self-signed` prints it and
    /// `openssl … | base64` makes it), with or without curl's `sha256//` prefix.
    pub fn parse(text: &str) -> Result<Pin, String> {
        let b64 = text.trim();
        let b64 = b64.strip_prefix("sha256//").unwrap_or(b64);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("pin_sha256 {text:?} is not base64 ({e})"))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "pin_sha256 {text:?} holds {} bytes; a SHA-256 pin holds 32",
                b.len()
            )
        })?;
        Ok(Pin(bytes))
    }

    /// The pin of a DER certificate's public key.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Result<Pin, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
        Ok(Pin(Sha256::digest(
            parsed.subject_public_key_info().as_ref(),
        )
        .into()))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({self})")
    }
}

/// The collector presented a key other than the pinned one (a [`CertificateError::Other`]).
#[derive(Debug, thiserror::Error)]
#[error("pin mismatch: the collector's public key has pin {got}, but pin_sha256 is {want}")]
pub struct PinMismatch {
    /// Pin of the key the collector presented.
    pub got: Pin,
    /// The configured pin.
    pub want: Pin,
}

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file cannot be read.
    #[error("cannot read ca_file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("ca_file {path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Rustls(String),
}

/// Verifies as `inner` does, then checks the pin (see the module comment).
#[derive(Debug)]
pub struct PinnedVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    pin: Option<Pin>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let Some(want) = self.pin else {
            return Ok(verified);
        };
        let got = Pin::of_certificate(end_entity)?;
        if got != want {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch { got, want })),
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client settings for `wss://`: roots from `ca_file` (PEM, one or more CA
/// certificates) or else the platform's, and the optional pin.
pub fn client_config(
    ca_file: Option<&Path>,
    pin: Option<Pin>,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let provider = provider();
    let inner: Arc<dyn ServerCertVerifier> = match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsSetupError::Pem {
                    path: path.to_path_buf(),
                    what: format!("not PEM certificates ({e})"),
                })?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsSetupError::Pem {
                    path: path.to_path_buf(),
                    what: "holds no usable CA CERTIFICATE".into(),
                });
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        }
        None => Arc::new(rustls_platform_verifier::Verifier::new().with_provider(provider.clone())),
    };
    let verifier = Arc::new(PinnedVerifier { inner, pin });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Why a plain `ws://` URL must not be used: it leads off this machine and the config does not
/// allow plaintext. `None` for `wss://`, loopback targets, or when allowed.
pub fn plaintext_refusal(url: &str, allow_plaintext: bool) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    if parsed.scheme() != "ws" || allow_plaintext {
        return None;
    }
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    (!loopback).then(|| {
        format!(
            "collector URL {url:?} is plain ws:// to a non-loopback host: the agent token and \
             every sample would cross the network unencrypted, and anyone on the path could \
             push commands; use wss:// (see README, TLS), or set allow_plaintext = true \
             (--allow-plaintext) on a network you trust"
        )
    })
}

/// When `err` is a refused TLS handshake, says why in plain words (for the log).
pub fn refusal_reason(err: &ClientError) -> Option<String> {
    let tls = find_rustls_error(err)?;
    let what = match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "the collector's certificate is not signed by a trusted CA (check ca_file / \
                 --ca-file, or the system roots)"
                    .to_string()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the collector's certificate has expired".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the collector's certificate is not valid yet (check both clocks)".to_string()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the collector's certificate is not valid for the host name in the collector URL"
                    .to_string()
            }
            CertificateError::Other(other) => match other.0.downcast_ref::<PinMismatch>() {
                Some(p) => p.to_string(),
                None => format!("the collector's certificate was refused: {other}"),
            },
            other => format!("the collector's certificate was refused: {other:?}"),
        },
        other => format!("the TLS handshake failed: {other}"),
    };
    Some(format!("{what} ({tls})"))
}

fn find_rustls_error(err: &ClientError) -> Option<&rustls::Error> {
    // `Transport` is `#[error(transparent)]`: its `source()` skips the boxed error itself.
    let mut cur: Option<&(dyn std::error::Error + 'static)> = match err {
        ClientError::Transport(inner) => Some(inner.as_ref()),
        other => Some(other),
    };
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // tokio-rustls reports a refused handshake as an I/O error around the rustls one, and
        // jsonrpsee's `WsHandshakeError::Io` holds that I/O error without naming it as source.
        let io = match e.downcast_ref::<WsHandshakeError>() {
            Some(WsHandshakeError::Io(io)) => Some(io),
            _ => e.downcast_ref::<std::io::Error>(),
        };
        if let Some(r) = io
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests;
