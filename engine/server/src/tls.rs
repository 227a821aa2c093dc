//! HTTPS for the operator and agent APIs. With `tls_cert` and `tls_key`
//! configured, those serve. Without them the server keeps its own CA in
//! `DATA/tls/` (made on first start: `ca.pem`, and `ca.key` mode 0600) and
//! issues itself a fresh certificate at every start, naming the addresses
//! it is reached by; clients trust `ca.pem` (`--ca`, `RACKCAST_CA`,
//! `rackcast env build --server-ca`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why HTTPS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key file holds nothing usable.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Making a certificate failed.
    #[error("making a certificate")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate and key.
    #[error("the certificate and key")]
    Rustls(#[from] rustls::Error),
}

/// The subject of the server's own CA: kept the same at every start, so a
/// certificate issued today chains to the `ca.pem` written on first start.
const CA_NAME: &str = "rackcast server CA";

/// Where the generated CA certificate lives.
pub fn ca_path(data: &Path) -> PathBuf {
    data.join("tls").join("ca.pem")
}

/// The rustls configuration the APIs serve with: the configured
/// certificate, or one issued now by the data directory's CA for `names`
/// (IP addresses and DNS names).
pub(crate) fn server_config(
    data: &Path,
    configured: Option<(&Path, &Path)>,
    names: &[String],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (chain, key) = match configured {
        Some((cert, key)) => load(cert, key)?,
        None => issue(data, names)?,
    };
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(cfg))
}

/// ring: the provider ureq (the agent's and the CLI's client) is built
/// with, so every binary carries one crypto library. rustls 0.23.48 marks it
/// deprecated for lacking post-quantum key exchange; aws-lc-rs would add a
/// C and assembler build to every binary, the agent's too.
#[allow(deprecated)]
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let pem = |path: &Path, what: String| TlsError::Pem {
        path: path.to_path_buf(),
        what,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem(cert, "no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
    Ok((chain, key))
}

/// Makes the data directory's CA unless it is there, and returns the path of
/// its certificate: what `rackcast server --make-ca` runs, so environments
/// can be built with `--server-ca` before the server first starts.
pub fn make_ca(data: &Path) -> Result<PathBuf, TlsError> {
    load_or_make_ca(data).map(|(_, path)| path)
}

fn load_or_make_ca(data: &Path) -> Result<(KeyPair, PathBuf), TlsError> {
    // The data directory is private (0700) from its first file on, and the
    // CA key stays 0600 even if copied in wider.
    crate::datadir::prepare(data).map_err(file_err(data))?;
    let dir = data.join("tls");
    std::fs::create_dir_all(&dir).map_err(file_err(&dir))?;
    let (ca_pem, ca_key_path) = (ca_path(data), dir.join("ca.key"));
    crate::datadir::restrict(&ca_key_path, 0o600).map_err(file_err(&ca_key_path))?;
    let key = match std::fs::read_to_string(&ca_key_path) {
        Ok(text) if ca_pem.exists() => KeyPair::from_pem(&text)?,
        _ => {
            let key = KeyPair::generate()?;
            let ca = ca_params()?.self_signed(&key)?;
            write_private(&ca_key_path, &key.serialize_pem())?;
            std::fs::write(&ca_pem, ca.pem()).map_err(file_err(&ca_pem))?;
            tracing::info!("made a CA for this server: {}", ca_pem.display());
            key
        }
    };
    Ok((key, ca_pem))
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError {
    let path = path.to_path_buf();
    move |source| TlsError::File { path, source }
}

/// Loads the data directory's CA (making it on first start) and issues a
/// server certificate for `names`.
fn issue(
    data: &Path,
    names: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let dir = data.join("tls");
    let (ca_key, ca_pem) = load_or_make_ca(data)?;
    // The same subject and key as the stored CA certificate: what a
    // certificate's issuer is checked against.
    let ca = ca_params()?.self_signed(&ca_key)?;
    let ca_der = CertificateDer::from_pem_file(&ca_pem).map_err(|e| TlsError::Pem {
        path: ca_pem.clone(),
        what: e.to_string(),
    })?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "rackcast server");
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::Pem {
        path: dir.join("(generated key)"),
        what: e.to_string(),
    })?;
    Ok((vec![cert.der().clone(), ca_der], key))
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, CA_NAME);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    let err = |source| TlsError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

/// The names a generated certificate carries: loopback, this host's name,
/// the listening addresses (unless unspecified), the public URL's host and
/// any configured extras.
pub(crate) fn names_for(
    listens: &[std::net::SocketAddr],
    public_url: Option<&str>,
    extra: &[String],
) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(h.trim().to_string());
    }
    for l in listens {
        if !l.ip().is_unspecified() {
            names.push(l.ip().to_string());
        }
    }
    if let Some(host) = public_url.and_then(url_host) {
        names.push(host);
    }
    names.extend(extra.iter().cloned());
    names.retain(|n| !n.is_empty());
    names.sort();
    names.dedup();
    names
}

/// The host of `scheme://host[:port][/path]` (IPv6 without brackets).
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    Some(host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_loopback_listen_and_public_url() {
        let n = names_for(
            &[
                "10.0.0.1:7300".parse().unwrap(),
                "0.0.0.0:7301".parse().unwrap(),
            ],
            Some("https://deploy.example:7300/x"),
            &["10.9.9.9".into()],
        );
        for want in [
            "localhost",
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "deploy.example",
            "10.9.9.9",
        ] {
            assert!(n.iter().any(|x| x == want), "{want} missing from {n:?}");
        }
        assert!(!n.iter().any(|x| x == "0.0.0.0"), "{n:?}");
        assert_eq!(
            url_host("https://[fd00::1]:7300").as_deref(),
            Some("fd00::1")
        );
    }

    #[test]
    fn the_ca_is_made_once_and_later_certificates_chain_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["127.0.0.1".to_string()];
        server_config(dir.path(), None, &names).unwrap();
        let first = std::fs::read(ca_path(dir.path())).unwrap();
        let key = dir.path().join("tls/ca.key");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "ca.key mode {mode:o}");
        let (chain, _) = issue(dir.path(), &names).unwrap();
        assert_eq!(
            std::fs::read(ca_path(dir.path())).unwrap(),
            first,
            "the CA changed"
        );
        // The leaf verifies against the stored CA.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca_path(dir.path())).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        let other = rustls::pki_types::ServerName::try_from("10.1.2.3").unwrap();
        assert!(verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &other,
                &[],
                rustls::pki_types::UnixTime::now()
            )
            .is_err());
    }
}
