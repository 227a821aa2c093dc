//! IPMI v2 over LAN (RMCP+) through `ipmitool`, as Ironic's and MAAS's
//! drivers do: one `ipmitool -I lanplus ... chassis ...` child per action.
//! The password reaches the child only through `IPMI_PASSWORD` (`-E`), so
//! no process list shows it. Each trait call, children included, is
//! bounded by the configured timeout; a child still running then is killed.

use std::io::{ErrorKind, Read};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{Bmc, BmcAddr, BmcConfig, BmcError, BootDevice, Credentials, PowerOp, PowerState};

mod output;

use output::{outcome, parse_status};

/// The driver of one IPMI BMC.
pub(crate) struct Ipmi {
    host: String,
    port: u16,
    login: Credentials,
    timeout: Duration,
}

/// RMCP+ cipher suite 3 (HMAC-SHA1, AES-128): what ipmi_sim and most BMCs
/// accept. Without `-C`, ipmitool 1.8.19 first asks the BMC for its suites
/// and waits ~10 s when it does not answer.
const CIPHER_SUITE: &str = "3";
/// One second per try, two retries: a BMC that does not answer costs about
/// 6 s, below any sensible timeout.
const RETRY_SECS: &str = "1";
const RETRIES: &str = "2";
/// How often a cycle checks that the machine is off before powering it on.
const OFF_POLL: Duration = Duration::from_millis(500);
/// How often a running child is checked against the deadline.
const POLL: Duration = Duration::from_millis(10);

impl Ipmi {
    pub(crate) fn new(cfg: &BmcConfig) -> Result<Ipmi, BmcError> {
        let BmcAddr::Ipmi { host, port } = &cfg.addr else {
            unreachable!("connect dispatches on the address")
        };
        let login = cfg.credentials.clone().ok_or_else(|| {
            BmcError::Unsupported(format!(
                "IPMI BMC {}: no login given (a user and its password)",
                cfg.addr
            ))
        })?;
        Ok(Ipmi {
            host: host.clone(),
            port: port.unwrap_or(623),
            login,
            timeout: cfg.timeout,
        })
    }

    /// The `ipmitool` child for `args` (`chassis ...`): the password in
    /// its environment only, stdin closed so it can never prompt. `-v`
    /// makes it say why a session failed (a refused login or no answer).
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ipmitool");
        c.args(["-I", "lanplus", "-C", CIPHER_SUITE, "-H", &self.host])
            .args(["-p", &self.port.to_string(), "-U", &self.login.user, "-E"])
            .args(["-N", RETRY_SECS, "-R", RETRIES, "-v"])
            .args(args)
            .env("IPMI_PASSWORD", &self.login.password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs `ipmitool ... args` before `deadline`; its stdout.
    fn run(&self, args: &[&str], deadline: Instant) -> Result<String, BmcError> {
        let what = args.join(" ");
        let mut child = self.command(args).spawn().map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                BmcError::Unsupported(
                    "ipmitool is not installed: install the Debian package ipmitool".into(),
                )
            } else {
                BmcError::Unsupported(format!("cannot run ipmitool: {e}"))
            }
        })?;
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let code = match wait_until(&mut child, deadline) {
            Some(code) => code,
            None => {
                return Err(BmcError::Unreachable(format!(
                    "{what}: no answer from {}:{} within {:?}",
                    self.host, self.port, self.timeout
                )))
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        let stderr = crate::hide(&stderr, &self.login.password);
        outcome(&what, code, stdout, &stderr)
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    fn status(&self, deadline: Instant) -> Result<PowerState, BmcError> {
        let out = self.run(&["chassis", "power", "status"], deadline)?;
        parse_status(&out)
    }
}

impl std::fmt::Debug for Ipmi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipmi")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("login", &self.login)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Bmc for Ipmi {
    fn power(&self, op: PowerOp) -> Result<(), BmcError> {
        let deadline = self.deadline();
        match op {
            PowerOp::On => self.run(&["chassis", "power", "on"], deadline).map(drop),
            PowerOp::Off => self.run(&["chassis", "power", "off"], deadline).map(drop),
            // Off, then on, as Ironic's ipmitool driver reboots: `chassis
            // power cycle` is optional in the IPMI specification (virtualbmc
            // answers "invalid data field"), refused by many BMCs while off
            // (0xD5), and a warm cycle may skip a boot device applied only at
            // power-on.
            PowerOp::Cycle => {
                if self.status(deadline)? != PowerState::Off {
                    self.run(&["chassis", "power", "off"], deadline)?;
                    while self.status(deadline)? != PowerState::Off {
                        if Instant::now() + OFF_POLL >= deadline {
                            return Err(BmcError::Unreachable(format!(
                                "{}:{} did not power off within {:?}",
                                self.host, self.port, self.timeout
                            )));
                        }
                        thread::sleep(OFF_POLL);
                    }
                }
                self.run(&["chassis", "power", "on"], deadline).map(drop)
            }
        }
    }

    fn state(&self) -> Result<PowerState, BmcError> {
        self.status(self.deadline())
    }

    fn boot_once(&self, dev: BootDevice) -> Result<(), BmcError> {
        let dev = match dev {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
        };
        // No `persistent`: the flag holds for the next boot only (and the
        // BMC drops it 60 s after it was set).
        self.run(
            &["chassis", "bootdev", dev, "options=efiboot"],
            self.deadline(),
        )
        .map(drop)
    }
}

/// Reads a child's pipe to its end on a thread, so a chatty child never
/// blocks on a full pipe while we wait for it.
fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = pipe {
            let _ = p.take(1 << 20).read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// The child's exit code (-1 when a signal ended it), or None when it was
/// still running at `deadline` (then it is killed and reaped).
fn wait_until(child: &mut Child, deadline: Instant) -> Option<i32> {
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st.code().unwrap_or(-1)),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipmi() -> Ipmi {
        Ipmi::new(&BmcConfig {
            addr: "ipmi://10.0.0.6:6230".parse().unwrap(),
            credentials: Some(Credentials {
                user: "admin".into(),
                password: "pw-s3cret".into(),
            }),
            insecure: false,
            mac: [0; 6],
            wol_from: None,
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    #[test]
    fn the_password_goes_through_the_environment_only() {
        let i = ipmi();
        let c = i.command(&["chassis", "power", "status"]);
        let args: Vec<_> = c.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "-I", "lanplus", "-C", "3", "-H", "10.0.0.6", "-p", "6230", "-U", "admin", "-E",
                "-N", "1", "-R", "2", "-v", "chassis", "power", "status"
            ]
        );
        assert!(!args.iter().any(|a| a.contains("pw-s3cret")));
        let envs: Vec<_> = c.get_envs().collect();
        assert_eq!(
            envs,
            [(
                std::ffi::OsStr::new("IPMI_PASSWORD"),
                Some(std::ffi::OsStr::new("pw-s3cret"))
            )]
        );
        assert!(!format!("{i:?}").contains("pw-s3cret"));
    }

    #[test]
    fn an_ipmi_bmc_needs_a_login() {
        let e = Ipmi::new(&BmcConfig {
            credentials: None,
            ..ipmi_cfg()
        })
        .unwrap_err();
        assert!(e.to_string().contains("no login"), "{e}");
    }

    fn ipmi_cfg() -> BmcConfig {
        BmcConfig {
            addr: "ipmi://h".parse().unwrap(),
            credentials: None,
            insecure: false,
            mac: [0; 6],
            wol_from: None,
            timeout: Duration::from_secs(1),
        }
    }
}
