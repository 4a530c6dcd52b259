//! Tests of the agent's TLS decisions: pins, plaintext refusal, pinned verification, and the
//! words logged for each refused handshake.

use super::*;

fn cert(names: &[&str]) -> (CertificateDer<'static>, Pin) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let pin = Pin(Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)).into());
    (cert.der().clone(), pin)
}

#[test]
fn pins_parse_with_or_without_prefix() {
    let good = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    assert_eq!(Pin::parse(&good).unwrap(), Pin([7; 32]));
    assert_eq!(
        Pin::parse(&format!("sha256//{good}")).unwrap(),
        Pin([7; 32])
    );
    assert_eq!(Pin::parse(&good).unwrap().to_string(), good);
    let short = base64::engine::general_purpose::STANDARD.encode([7u8; 20]);
    for (bad, want) in [
        ("not base64!", "not base64"),
        (short.as_str(), "holds 20 bytes"),
    ] {
        let err = Pin::parse(bad).unwrap_err();
        assert!(err.contains(want), "{bad}: {err}");
    }
}

#[test]
fn plaintext_only_to_loopback_unless_allowed() {
    let cases = [
        ("ws://127.0.0.1:8086/rpc", false, false),
        ("ws://127.3.4.5:8086/rpc", false, false),
        ("ws://localhost:8086/rpc", false, false),
        ("ws://[::1]:8086/rpc", false, false),
        ("wss://collector.example:8086/rpc", false, false),
        ("ws://collector.example:8086/rpc", false, true),
        ("ws://10.0.0.5:8086/rpc", false, true),
        ("ws://10.0.0.5:8086/rpc", true, false),
    ];
    for (url, allow, refused) in cases {
        let got = plaintext_refusal(url, allow);
        assert_eq!(got.is_some(), refused, "{url} allow={allow}: {got:?}");
        if let Some(why) = got {
            assert!(why.contains("unencrypted") && why.contains("allow_plaintext"));
        }
    }
}

/// Accepts every certificate (stands in for the WebPKI checks).
#[derive(Debug)]
struct AcceptAll;

impl ServerCertVerifier for AcceptAll {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Vec::new()
    }
}

#[test]
fn pinned_verifier_checks_the_key_after_verification() {
    let (der, pin) = cert(&["a.example"]);
    let name = ServerName::try_from("a.example").unwrap();
    let verify = |pin| {
        PinnedVerifier {
            inner: Arc::new(AcceptAll),
            pin,
        }
        .verify_server_cert(&der, &[], &name, &[], UnixTime::now())
    };
    assert!(verify(None).is_ok());
    assert!(verify(Some(pin)).is_ok());
    let err = verify(Some(Pin([0; 32]))).unwrap_err();
    let client_err = ClientError::Transport(Box::new(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        err,
    )));
    let why = refusal_reason(&client_err).unwrap();
    assert!(
        why.contains("pin mismatch") && why.contains(&pin.to_string()),
        "{why}"
    );
}

#[test]
fn refusals_are_explained() {
    let cases = [
        (
            CertificateError::UnknownIssuer,
            "not signed by a trusted CA",
        ),
        (CertificateError::Expired, "has expired"),
        (CertificateError::NotValidYet, "not valid yet"),
        (
            CertificateError::NotValidForName,
            "not valid for the host name",
        ),
    ];
    for (cert_err, want) in cases {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(cert_err),
        );
        // As jsonrpsee's ws-client reports it.
        let err = ClientError::Transport(Box::new(WsHandshakeError::Io(io)));
        let why = refusal_reason(&err).unwrap();
        assert!(why.contains(want), "{why}");
    }
    let plain = ClientError::Transport(Box::new(std::io::Error::other("connection refused")));
    assert!(refusal_reason(&plain).is_none());
}

#[test]
fn ca_file_problems_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err = client_config(Some(&empty), None).unwrap_err().to_string();
    assert!(err.contains("no usable CA"), "{err}");
    let err = client_config(Some(&dir.path().join("missing.pem")), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read ca_file"), "{err}");
    let (der, _) = cert(&["a.example"]);
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::engine::general_purpose::STANDARD.encode(der.as_ref())
    );
    let good = dir.path().join("ca.pem");
    std::fs::write(&good, pem).unwrap();
    assert!(client_config(Some(&good), None).is_ok());
    assert!(client_config(None, Some(Pin([1; 32]))).is_ok());
}
