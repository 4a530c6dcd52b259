//! Tests of the TLS material: self-signed round trip, pins, bad files, the resolver swap.

use super::*;

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

#[test]
fn self_signed_files_load_and_pin_matches() {
    let dir = tempfile::tempdir().unwrap();
    let made = write_self_signed(dir.path(), &names(&["collector.example", "127.0.0.1"])).unwrap();
    let key = load_certified_key(&made.cert_file, &made.key_file).unwrap();
    assert_eq!(spki_pin(&key.cert[0]).unwrap(), made.pin);
    // base64 of 32 bytes.
    assert_eq!(made.pin.len(), 44);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&made.key_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn pin_is_the_sha256_of_the_spki() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(names(&["a.example"]))
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let expected = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(
        rcgen::PublicKeyData::subject_public_key_info(&key),
    ));
    assert_eq!(spki_pin(cert.der()).unwrap(), expected);
}

#[test]
fn bad_files_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_self_signed(&dir.path().join("a"), &names(&["a.example"])).unwrap();
    let b = write_self_signed(&dir.path().join("b"), &names(&["b.example"])).unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let cases: &[(&Path, &Path, &str)] = &[
        (&a.cert_file, &b.key_file, "with"),
        (&empty, &a.key_file, "holds no CERTIFICATE"),
        (&a.cert_file, &empty, "no usable PRIVATE KEY"),
        (Path::new("/nonexistent/c.pem"), &a.key_file, "cannot read"),
        // The key where the certificate should be.
        (&a.key_file, &a.key_file, "holds no CERTIFICATE"),
    ];
    for (cert, key, want) in cases {
        let err = load_certified_key(cert, key).unwrap_err().to_string();
        assert!(err.contains(want), "{cert:?} {key:?}: {err}");
    }
}

#[test]
fn resolver_serves_the_key_set_last() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_self_signed(&dir.path().join("a"), &names(&["a.example"])).unwrap();
    let b = write_self_signed(&dir.path().join("b"), &names(&["b.example"])).unwrap();
    let ka = load_certified_key(&a.cert_file, &a.key_file).unwrap();
    let kb = load_certified_key(&b.cert_file, &b.key_file).unwrap();
    let resolver = CertResolver::new(ka.clone());
    assert_eq!(resolver.current().cert, ka.cert);
    resolver.set(kb.clone());
    assert_eq!(resolver.current().cert, kb.cert);
    assert!(server_config(Arc::new(resolver)).is_ok());
}

#[test]
fn self_signed_needs_a_hostname() {
    assert!(self_signed(&[], chrono::Utc::now()).is_err());
}
