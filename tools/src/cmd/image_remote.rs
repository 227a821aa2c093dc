//! `rackcast image list|upload`: the server's image library.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use indicatif::ProgressBar;
use rackcast_engine::image::{hex, ImageReader};
use rackcast_engine::sched::api::ImageView;
use rackcast_engine::sched::valid_name;

use super::client::show::Table;
use super::client::{path_segment, Client, ClientArgs};
use super::util::{human_bytes, progress_bar};

/// Options of `rackcast image list`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  rackcast image list --server http://10.0.0.5:7300")]
pub struct ListArgs {
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `rackcast image upload`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  \
    rackcast image create /dev/nvme0n1 debian-12.img && rackcast image upload debian-12.img")]
pub struct UploadArgs {
    /// The image file (from `rackcast image create`).
    pub file: PathBuf,
    /// Name in the library [default: the file name without its extension].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `rackcast image list`.
pub fn list(a: &ListArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&a.client)?;
    if a.json {
        let v: serde_json::Value = client.get("/api/v1/images")?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut images: Vec<ImageView> = client.get("/api/v1/images")?;
    images.sort_by(|a, b| a.name.cmp(&b.name));
    if images.is_empty() {
        eprintln!("the image library is empty (add one with `rackcast image upload FILE`)");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", images_table(&images).render());
    Ok(ExitCode::SUCCESS)
}

/// Runs `rackcast image upload`: the file is streamed, never held in memory.
pub fn upload(a: &UploadArgs) -> anyhow::Result<ExitCode> {
    let name = match &a.name {
        Some(n) => n.clone(),
        None => default_name(&a.file)?,
    };
    check_name(&name)?;
    // Catch a raw disk or a truncated copy here, not after sending gigabytes.
    let local = ImageReader::open(&a.file).with_context(|| {
        format!(
            "{} is not a complete rackcast image (make one with `rackcast image create`)",
            a.file.display()
        )
    })?;
    let root = hex(&local.root());
    let len = local.file_len();
    drop(local);
    let client = Client::new(&a.client)?;
    let file =
        std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
    let body = Upload {
        inner: file,
        pb: progress_bar(len, "uploading"),
        said: false,
    };
    let view: ImageView = client.put_stream(
        &format!("/api/v1/images/{}", path_segment(&name)),
        body,
        len,
    )?;
    if view.root != root {
        anyhow::bail!(
            "the server stored {name} with root {} but {} has root {root}: upload it again",
            view.root,
            a.file.display()
        );
    }
    println!(
        "uploaded {} as {} ({} stored, restores {}), root {}{}",
        a.file.display(),
        view.name,
        human_bytes(view.stored_size),
        human_bytes(view.source_size),
        view.root,
        if view.signed { ", signed" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

fn images_table(images: &[ImageView]) -> Table {
    let mut t = Table::new(&["NAME", "SIZE", "STORED", "CHUNKS", "SIGNED", "ROOT"]);
    for i in images {
        t.row(vec![
            i.name.clone(),
            human_bytes(i.source_size),
            human_bytes(i.stored_size),
            i.chunks.to_string(),
            if i.signed { "yes" } else { "no" }.to_string(),
            i.root.chars().take(16).collect(),
        ]);
    }
    t
}

/// `debian-12.img` -> `debian-12`.
fn default_name(file: &Path) -> anyhow::Result<String> {
    file.file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_string)
        .filter(|s| !s.is_empty())
        .with_context(|| format!("{}: pass --name NAME", file.display()))
}

/// The server's rule for library names, checked before any byte is sent.
fn check_name(name: &str) -> anyhow::Result<()> {
    if !valid_name(name) {
        anyhow::bail!(
            "image name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', \
             not starting with '.' (pass --name NAME)"
        );
    }
    Ok(())
}

/// Reads the file for the upload; at its end, says what the wait is for.
#[derive(Debug)]
struct Upload<R> {
    inner: R,
    pb: ProgressBar,
    said: bool,
}

impl<R: Read> Read for Upload<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pb.inc(n as u64);
        if n == 0 && !buf.is_empty() && !self.said {
            self.said = true;
            self.pb.finish_and_clear();
            eprintln!(
                "sent {}; the server is verifying every chunk",
                human_bytes(self.pb.position())
            );
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            default_name(Path::new("/srv/debian-12.img")).unwrap(),
            "debian-12"
        );
        assert_eq!(default_name(Path::new("golden")).unwrap(), "golden");
        assert!(check_name("debian-12.1_x").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("../etc").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(".hidden").is_err());
    }

    #[test]
    fn table() {
        let t = images_table(&[ImageView {
            name: "deb".into(),
            root: "0123456789abcdef0123".into(),
            source_size: 1 << 30,
            stored_size: 1 << 20,
            chunks: 256,
            signed: true,
        }]);
        assert_eq!(
            t.render(),
            "NAME  SIZE      STORED    CHUNKS  SIGNED  ROOT\n\
             deb   1.00 GiB  1.00 MiB  256     yes     0123456789abcdef\n"
        );
    }

    #[test]
    fn upload_refuses_a_file_that_is_not_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        let a = UploadArgs {
            file: raw,
            name: None,
            client: ClientArgs {
                server: "http://127.0.0.1:9".into(),
                token: Some("t".into()),
                token_file: None,
                ca: None,
            },
        };
        let e = upload(&a).unwrap_err();
        assert!(
            format!("{e:#}").contains("is not a complete rackcast image"),
            "{e:#}"
        );
    }
}
