//! OpenIPMI's `ipmi_sim` on a loopback UDP port, with a `chassis_control`
//! script that keeps the power and boot device in files and logs each
//! call (the notes in /work/notes are the recipe).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_udp_port, tool, Proc, PASSWORD, READY, USER};

/// A running ipmi_sim whose chassis is two files, `power` (0 or 1) and
/// `boot`, and whose every chassis call lands in `calls.log`.
#[derive(Debug)]
pub struct IpmiSim {
    pub port: u16,
    dir: tempfile::TempDir,
    _proc: Proc,
}

const CHASSIS_SH: &str = r#"#!/bin/sh
dir=$1; shift; op=$1; shift
[ -f "$dir/power" ] || echo 0 > "$dir/power"
[ -f "$dir/boot" ]  || echo default > "$dir/boot"
echo "$op $*" >> "$dir/calls.log"
case "$op" in
get)
  for n in "$@"; do
    case "$n" in
      power) echo "power:$(cat "$dir/power")" ;;
      boot)  echo "boot:$(cat "$dir/boot")" ;;
    esac
  done ;;
set)
  while [ $# -ge 2 ]; do
    n=$1; v=$2; shift 2
    case "$n" in
      power)    echo "$v" > "$dir/power" ;;
      boot)     echo "$v" > "$dir/boot" ;;
      shutdown) echo 0 > "$dir/power" ;;
      reset|identify) : ;;
    esac
  done ;;
*) exit 1 ;;
esac
exit 0
"#;

const SIM_EMU: &str = "mc_setbmc 0x20\n\
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
mc_enable 0x20\n";

impl IpmiSim {
    /// None (printed) when ipmi_sim or ipmitool is missing.
    pub fn start() -> Option<IpmiSim> {
        let sim = tool("ipmi_sim", "openipmi")?;
        tool("ipmitool", "ipmitool")?;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_udp_port();
        let script = d.join("chassis.sh");
        fs::write(&script, CHASSIS_SH).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(d.join("chassis")).unwrap();
        fs::create_dir(d.join("state")).unwrap();
        let lan = format!(
            "name \"rackcast-sim\"\n\
             set_working_mc 0x20\n\
             startlan 1\n\
             \taddr 127.0.0.1 {port}\n\
             \tpriv_limit admin\n\
             \tallowed_auths_callback none md2 md5 straight\n\
             \tallowed_auths_user none md2 md5 straight\n\
             \tallowed_auths_operator none md2 md5 straight\n\
             \tallowed_auths_admin none md2 md5 straight\n\
             \tguid a123456789abcdefa123456789abcdef\n\
             endlan\n\
             chassis_control \"{} {}\"\n\
             user 2 true \"{USER}\" \"{PASSWORD}\" admin 10 none md2 md5 straight\n",
            script.display(),
            d.join("chassis").display()
        );
        fs::write(d.join("lan.conf"), lan).unwrap();
        fs::write(d.join("sim.emu"), SIM_EMU).unwrap();
        let err = d.join("sim.err");
        let proc = Proc(
            Command::new(sim)
                .arg("-n")
                .arg("-c")
                .arg(d.join("lan.conf"))
                .arg("-f")
                .arg(d.join("sim.emu"))
                .arg("-s")
                .arg(d.join("state"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&err).unwrap())
                .spawn()
                .unwrap(),
        );
        let mut s = IpmiSim {
            port,
            dir,
            _proc: proc,
        };
        s.wait_ready(&err);
        Some(s)
    }

    /// UDP has no connect to wait for: polls `chassis power status`.
    fn wait_ready(&mut self, err: &Path) {
        let start = Instant::now();
        while start.elapsed() < READY {
            self._proc.check_alive("ipmi_sim", err);
            let ok = Command::new("ipmitool")
                .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .args(["-U", USER, "-E", "-N", "1", "-R", "1"])
                .args(["chassis", "power", "status"])
                .env("IPMI_PASSWORD", PASSWORD)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "ipmi_sim not ready after {READY:?}: {}",
            fs::read_to_string(err).unwrap_or_default()
        );
    }

    /// Its address, as `--bmc` takes it.
    pub fn addr(&self) -> String {
        format!("ipmi://127.0.0.1:{}", self.port)
    }

    /// The chassis script's calls so far, e.g. "set boot pxe".
    pub fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("chassis/calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The chassis file `name` ("power", "boot"), trimmed.
    pub fn file(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join("chassis").join(name))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}
