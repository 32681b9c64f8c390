//! TLS for the webhook listener (rustls, TLS 1.2 and 1.3, ring): the certificate chain and key — and, for mutual
//! TLS, the CA the clients' certificates must chain to — read from PEM files at start, and read again when one
//! of them changes, so a renewed certificate is served without a restart. A change that does not load (a key
//! that does not match its certificate because only one of the two was replaced yet, a broken file) is logged and
//! the configuration in use is kept.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::WebhookTls;

/// PEM files larger than this are refused (a certificate chain is a few KiB; this stops a path naming a device
/// or a huge file from being read whole).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why the TLS configuration could not be built. Messages name the file, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{}`: {message}", path.display())]
    Read { path: PathBuf, message: String },
    #[error("`{}` holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("`{}` holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {message}", path.display())]
    NoKey { path: PathBuf, message: String },
    #[error("client CA `{}`: {message}", path.display())]
    ClientCa { path: PathBuf, message: String },
    #[error("certificate `{}` and key `{}` are not usable together: {message}", cert.display(), key.display())]
    Rejected { cert: PathBuf, key: PathBuf, message: String },
}

/// What a file looked like when it was last read: modification time, size and inode (a symlink swap, as
/// Kubernetes does for mounted secrets, changes the inode).
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

/// The listener's TLS: the files, and the acceptor built from them last.
pub struct ServerTls {
    files: WebhookTls,
    /// The acceptor in use and the stamp of the files it was built from (or of the last failed attempt, so a
    /// broken file is reported once, not at every check).
    current: Mutex<(TlsAcceptor, Stamp)>,
}

impl ServerTls {
    /// Reads the files and builds the configuration; any problem is an error (RUNE does not start without it).
    pub fn load(files: &WebhookTls) -> Result<ServerTls, TlsError> {
        let stamp = stamp(files);
        let acceptor = build(files)?;
        Ok(ServerTls { files: files.clone(), current: Mutex::new((acceptor, stamp)) })
    }

    /// The acceptor for a new connection (cheap: a shared configuration).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).0.clone()
    }

    /// Builds the configuration again when a file changed since the last attempt: `Ok(true)` when the new one is
    /// now in use, `Ok(false)` when nothing changed, `Err` when the change did not load (the old one stays).
    /// Blocking file I/O: call it off the runtime.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        if self.current.lock().unwrap_or_else(PoisonError::into_inner).1 == now {
            return Ok(false);
        }
        let built = build(&self.files);
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.1 = now;
        current.0 = built?;
        Ok(true)
    }

    /// Checks the files every `every` until `stop`, logging each reload and each failed one.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let tls = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || tls.reload_if_changed()).await {
                Ok(Ok(true)) => {
                    tracing::info!(cert_file = %self.files.cert_file.display(), "webhook TLS: certificate reloaded");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "webhook TLS: changed files did not load; still serving the previous certificate")
                }
                Err(e) => tracing::error!(error = %e, "webhook TLS: reload task failed"),
            }
        }
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("files", &self.files).finish_non_exhaustive()
    }
}

fn stamp(files: &WebhookTls) -> Stamp {
    [Some(&files.cert_file), Some(&files.key_file), files.client_ca_file.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino())))
        .collect()
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let error = |message: String| TlsError::Read { path: path.to_owned(), message };
    let file = std::fs::File::open(path).map_err(|e| error(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes).map_err(|e| error(e.to_string()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(error(format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(bytes)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Read { path: path.to_owned(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// The rustls configuration: ring (named, see Cargo.toml), the safe default versions, HTTP/1.1 by ALPN.
fn build(files: &WebhookTls) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates(&files.cert_file)?;
    let key = PrivateKeyDer::from_pem_slice(&read_pem(&files.key_file)?)
        .map_err(|e| TlsError::NoKey { path: files.key_file.clone(), message: e.to_string() })?;
    let rejected =
        |message: String| TlsError::Rejected { cert: files.cert_file.clone(), key: files.key_file.clone(), message };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| rejected(e.to_string()))?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, &provider)?),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| rejected(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn client_verifier(
    ca: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let error = |message: String| TlsError::ClientCa { path: ca.to_owned(), message };
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca)? {
        roots.add(cert).map_err(|e| error(e.to_string()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| error(e.to_string()))
}

#[cfg(test)]
#[path = "../../tests/support/pki.rs"]
pub(crate) mod test_pki;

#[cfg(test)]
mod tests {
    use super::test_pki::TestPki;
    use super::*;

    fn files(cert: PathBuf, key: PathBuf, client_ca_file: Option<PathBuf>) -> WebhookTls {
        WebhookTls { cert_file: cert, key_file: key, client_ca_file }
    }

    #[test]
    fn broken_files_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pki = TestPki::new(dir.path(), "t");
        let (cert, key) = pki.issue("server", true);
        let (_, other_key) = pki.issue("other", true);
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap_or_else(|e| panic!("{e}"));
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; 2 * 1024 * 1024]).unwrap_or_else(|e| panic!("{e}"));
        assert!(ServerTls::load(&files(cert.clone(), key.clone(), None)).is_ok());
        assert!(ServerTls::load(&files(cert.clone(), key.clone(), Some(pki.ca_file()))).is_ok());
        let cases = [
            (files(empty.clone(), key.clone(), None), "holds no PEM certificate"),
            (files(cert.clone(), empty.clone(), None), "holds no PEM private key"),
            (files(cert.clone(), other_key, None), "not usable together"),
            (files(big.clone(), key.clone(), None), "larger than"),
            (files(cert.clone(), key.clone(), Some(empty.clone())), "empty.pem` holds no PEM certificate"),
            (files(dir.path().join("missing.pem"), key.clone(), None), "cannot read"),
        ];
        for (files, expected) in cases {
            let e = ServerTls::load(&files).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(expected), "{files:?}: {e}");
            assert!(!e.contains("BEGIN"), "no key material in errors: {e}");
        }
    }
}
