//! Certificates for tests, made by the `openssl` command line tool (scripts/test.sh installs it when absent): a
//! CA, server certificates for 127.0.0.1 signed by it, client certificates for mutual TLS; and a rustls client.
//! Shared by the integration tests and the library's own (`src/sources/tls.rs` includes this file).
#![allow(dead_code)] // the benches include the support module too, and use none of this

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA in a folder; each issued certificate and key lands next to it as `<name>.crt` / `<name>.key`.
pub struct TestPki {
    dir: PathBuf,
    name: String,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl (install it: scripts/test.sh does): {e}"));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestPki {
    /// A new CA `<name>-ca` in `dir`.
    pub fn new(dir: &Path, name: &str) -> TestPki {
        let key = format!("{name}-ca.key");
        let crt = format!("{name}-ca.crt");
        let subject = format!("/CN={name} test CA");
        openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &key]);
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &key,
                "-out",
                &crt,
                "-days",
                "2",
                "-subj",
                &subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
        );
        TestPki { dir: dir.to_owned(), name: name.to_owned() }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.crt", self.name))
    }

    /// Issues `<file>.crt` and `<file>.key`: a server certificate for IP 127.0.0.1, or a client certificate.
    pub fn issue(&self, file: &str, server: bool) -> (PathBuf, PathBuf) {
        let dir = &self.dir;
        let (key, csr, crt, ext) =
            (format!("{file}.key"), format!("{file}.csr"), format!("{file}.crt"), format!("{file}.ext"));
        let extensions = if server {
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        } else {
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
        };
        std::fs::write(dir.join(&ext), extensions).unwrap_or_else(|e| panic!("{e}"));
        openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &key]);
        openssl(dir, &["req", "-new", "-key", &key, "-out", &csr, "-subj", &format!("/CN={file}")]);
        let (ca_crt, ca_key) = (format!("{}-ca.crt", self.name), format!("{}-ca.key", self.name));
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        (dir.join(crt), dir.join(key))
    }
}

/// A client configuration trusting `ca`, presenting `identity` (certificate, key files) when given.
pub fn client(ca: &Path, identity: Option<(&Path, &Path)>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap_or_else(|e| panic!("{e}")) {
        roots.add(cert.unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .unwrap_or_else(|e| panic!("{e}"))
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_else(|e| panic!("{e}"));
            let key = PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| panic!("{e}"));
            builder.with_client_auth_cert(certs, key).unwrap_or_else(|e| panic!("{e}"))
        }
    };
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}
