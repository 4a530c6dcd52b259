//! Tests of the reload: a new certificate is swapped in, TLS on/off needs a restart.

use super::*;
use crate::config::TlsSettings;

fn tls(dir: &std::path::Path, name: &str) -> TlsSettings {
    let made =
        crate::tls::write_self_signed(&dir.join(name), &[format!("{name}.example")]).unwrap();
    TlsSettings {
        certified: crate::tls::load_certified_key(&made.cert_file, &made.key_file).unwrap(),
        cert_file: made.cert_file,
        key_file: made.key_file,
    }
}

#[tokio::test]
async fn reload_swaps_the_certificate_but_not_tls_on_or_off() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (tls(dir.path(), "a"), tls(dir.path(), "b"));
    let with = |t: Option<TlsSettings>| CollectorConfig {
        data_dir: dir.path().to_path_buf(),
        tls: t,
        ..CollectorConfig::default()
    };
    let app = App::new(with(Some(a.clone())), Store::open(dir.path()).unwrap());
    let resolver = app.tls().unwrap();
    assert_eq!(resolver.current().cert, a.certified.cert);

    assert!(app.reload(with(Some(b.clone()))).is_empty());
    assert_eq!(resolver.current().cert, b.certified.cert);

    assert_eq!(app.reload(with(None)), vec!["tls_cert_file"]);
    assert_eq!(resolver.current().cert, b.certified.cert);
    assert!(app.settings().config.tls.is_some(), "TLS stays on");

    let plain_dir = tempfile::tempdir().unwrap();
    let plain = App::new(
        CollectorConfig {
            data_dir: plain_dir.path().to_path_buf(),
            ..CollectorConfig::default()
        },
        Store::open(plain_dir.path()).unwrap(),
    );
    let on = CollectorConfig {
        data_dir: plain_dir.path().to_path_buf(),
        tls: Some(a),
        ..CollectorConfig::default()
    };
    assert_eq!(plain.reload(on), vec!["tls_cert_file"]);
    assert!(plain.tls().is_none() && plain.settings().config.tls.is_none());
}
