//! sushy-tools' Redfish emulator over libvirt's `test:///default` (one
//! running domain, in the emulator's memory), from the venv that
//! `scripts/deps.sh test` makes.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_tcp_port, self_signed, Proc, PASSWORD, READY, USER};

/// A running sushy-emulator.
#[derive(Debug)]
pub struct Sushy {
    pub port: u16,
    /// Its certificate (None: plain HTTP).
    cert: Option<rustls::pki_types::CertificateDer<'static>>,
    login: bool,
    proc: Proc,
    dir: tempfile::TempDir,
}

impl Sushy {
    /// sushy-emulator on test:///default, over HTTPS with its own
    /// self-signed certificate and basic auth (`secure`), or plain HTTP
    /// without login. None (printed) when sushy-tools is not installed.
    pub fn start(secure: bool) -> Option<Sushy> {
        Sushy::start_on(secure, "test:///default")
    }

    /// The same in front of the libvirt daemon at `libvirt_uri`.
    pub fn start_on(secure: bool, libvirt_uri: &str) -> Option<Sushy> {
        let venv = std::env::var_os("RACKCAST_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/cache/rackcast/venv".into());
        let exe = venv.join("bin/sushy-emulator");
        if !exe.is_file() {
            eprintln!(
                "SKIP: {} missing (scripts/deps.sh test installs sushy-tools there; RACKCAST_VENV moves it)",
                exe.display()
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_tcp_port();
        let mut conf = format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n\
             SUSHY_EMULATOR_LISTEN_PORT = {port}\n\
             SUSHY_EMULATOR_LIBVIRT_URI = '{libvirt_uri}'\n\
             SUSHY_EMULATOR_STATE_DIR = '{}'\n",
            d.join("state").display()
        );
        let mut cert = None;
        if secure {
            let (ck, pem, key) = self_signed();
            fs::write(d.join("cert.pem"), pem).unwrap();
            fs::write(d.join("key.pem"), key).unwrap();
            fs::write(d.join("htpasswd"), htpasswd(&venv)).unwrap();
            conf += &format!(
                "SUSHY_EMULATOR_SSL_CERT = '{0}/cert.pem'\n\
                 SUSHY_EMULATOR_SSL_KEY = '{0}/key.pem'\n\
                 SUSHY_EMULATOR_AUTH_FILE = '{0}/htpasswd'\n",
                d.display()
            );
            cert = Some(ck.cert.der().clone());
        }
        fs::write(d.join("sushy.conf"), conf).unwrap();
        let log = d.join("sushy.log");
        let mut cmd = Command::new(&exe);
        cmd.arg("--config")
            .arg(d.join("sushy.conf"))
            .env("TMPDIR", d)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(d.join("sushy.err")).unwrap());
        // The environment would override the config file.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SUSHY_") {
                cmd.env_remove(k);
            }
        }
        let proc = Proc(cmd.spawn().unwrap());
        let mut s = Sushy {
            port,
            cert,
            login: secure,
            proc,
            dir,
        };
        s.wait_ready();
        Some(s)
    }

    /// Polls the service root (exempt from auth) until it answers.
    fn wait_ready(&mut self) {
        let start = Instant::now();
        let err = self.dir.path().join("sushy.err");
        while start.elapsed() < READY {
            self.proc.check_alive("sushy-emulator", &err);
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.agent().get(&self.url("/redfish/v1/")).call().is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "sushy-emulator not ready after {READY:?}: {}",
            fs::read_to_string(err).unwrap_or_default()
        );
    }

    /// Its address, as `--bmc` takes it.
    pub fn addr(&self) -> String {
        format!("redfish://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.cert.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// A client that trusts this emulator's certificate and nothing else.
    #[allow(deprecated)]
    fn agent(&self) -> ureq::Agent {
        let mut b = ureq::AgentBuilder::new().timeout(Duration::from_secs(5));
        if let Some(ck) = &self.cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ck.clone()).unwrap();
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            b = b.tls_config(Arc::new(tls));
        }
        b.build()
    }

    /// `GET path` straight from the emulator, as JSON.
    pub fn get(&self, path: &str) -> Value {
        let mut req = self.agent().get(&self.url(path));
        if self.login {
            req = req.set(
                "Authorization",
                &format!("Basic {}", b64(&format!("{USER}:{PASSWORD}"))),
            );
        }
        serde_json::from_str(&req.call().unwrap().into_string().unwrap()).unwrap()
    }

    /// `POST path` with a JSON body straight to the emulator (what someone
    /// at the BMC's own console would do).
    pub fn post(&self, path: &str, body: Value) {
        let mut req = self.agent().post(&self.url(path));
        if self.login {
            req = req.set(
                "Authorization",
                &format!("Basic {}", b64(&format!("{USER}:{PASSWORD}"))),
            );
        }
        req.send_json(body).unwrap();
    }

    /// The path of its only system.
    pub fn system(&self) -> String {
        self.get("/redfish/v1/Systems")["Members"][0]["@odata.id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// An htpasswd line with a cheap bcrypt hash (the only kind sushy takes;
/// cost 4 keeps each request fast). The password goes through stdin, not
/// the command line.
fn htpasswd(venv: &Path) -> String {
    use std::io::Write;
    let mut c = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import sys, bcrypt; print(bcrypt.hashpw(sys.stdin.buffer.read(), bcrypt.gensalt(rounds=4)).decode())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(PASSWORD.as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "bcrypt");
    format!("{USER}:{}", String::from_utf8(out.stdout).unwrap().trim())
}

/// base64 for the tests' own basic auth header.
fn b64(s: &str) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.as_bytes().chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= c.len() {
                ABC[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}
