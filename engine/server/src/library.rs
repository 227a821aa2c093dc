//! The image library, content-addressed: the bytes of an image live in
//! `DATA/images/by-root/ROOT.rcimg` and a name points to a root (the
//! `images` table). A re-upload under a name moves the name, never the
//! bytes a running job uses (jobs pin roots when submitted). An upload is
//! streamed to a temporary file, checked against `trusted_keys` when the
//! server has any, verified (every chunk hash and the root) and only then
//! renamed into place; a refused upload leaves the library as it was.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::StatusCode;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::ApiErr;
use rackcast_engine::image::{hex, ImageReader, TrustedKey};
use rackcast_engine::sched::api::ImageView;

/// Where the image with root `root` (hex) lives.
pub(crate) fn blob_path(data: &Path, root: &str) -> PathBuf {
    data.join("images")
        .join("by-root")
        .join(format!("{root}.rcimg"))
}

/// Where image `name` lived before the library was content-addressed.
pub(crate) fn legacy_path(data: &Path, name: &str) -> PathBuf {
    data.join("images").join(format!("{name}.rcimg"))
}

/// Removes the temporary files of uploads a killed server left behind.
pub(crate) fn remove_stale_uploads(data: &Path) -> usize {
    let Ok(dir) = std::fs::read_dir(data.join("images")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with('.') && n.contains(".upload-")
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Streams `body` into the library as `name` after checking it; a body
/// past `max` bytes is refused (413) and nothing of it kept.
pub(crate) async fn receive(
    data: &Path,
    name: &str,
    body: Body,
    trusted: &[TrustedKey],
    max: u64,
) -> Result<ImageView, ApiErr> {
    if !rackcast_engine::sched::valid_name(name) {
        return Err(ApiErr(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("image name {name:?}: use letters, digits, '.', '_' or '-'"),
        ));
    }
    // A declared length over the limit is refused before a byte is read.
    if let Some(n) = axum::body::HttpBody::size_hint(&body).exact() {
        if n > max {
            return Err(too_large(max));
        }
    }
    let tmp = data.join("images").join(format!(
        ".{name}.upload-{}",
        super::auth::random_token()
            .map_err(internal)?
            .get(..12)
            .unwrap_or("x")
    ));
    let r = write_body(&tmp, body, max).await;
    let r = match r {
        Ok(()) => {
            let (t, n, k) = (tmp.clone(), name.to_string(), trusted.to_vec());
            tokio::task::spawn_blocking(move || check(&t, &n, &k))
                .await
                .map_err(|e| internal(std::io::Error::other(e)))
                .and_then(|r| r)
        }
        Err(e) => Err(e),
    };
    match r {
        Ok(view) => {
            let blob = blob_path(data, &view.root);
            if tokio::fs::try_exists(&blob).await.unwrap_or(false) {
                // The same bytes are there already (the root says so).
                let _ = tokio::fs::remove_file(&tmp).await;
            } else {
                if let Some(dir) = blob.parent() {
                    tokio::fs::create_dir_all(dir).await.map_err(internal)?;
                }
                tokio::fs::rename(&tmp, &blob).await.map_err(internal)?;
            }
            Ok(view)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

async fn write_body(path: &Path, body: Body, max: u64) -> Result<(), ApiErr> {
    let mut f = tokio::fs::File::create(path).await.map_err(internal)?;
    let mut s = body.into_data_stream();
    let mut len = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| {
            ApiErr(
                StatusCode::BAD_REQUEST,
                format!("the upload broke off: {e}"),
            )
        })?;
        len += chunk.len() as u64;
        if len > max {
            return Err(too_large(max));
        }
        f.write_all(&chunk).await.map_err(internal)?;
    }
    f.sync_all().await.map_err(internal)?;
    Ok(())
}

/// Opens an image file, checks its signature against `trusted` (when
/// there are trusted keys) and fully verifies it.
pub(crate) fn check(path: &Path, name: &str, trusted: &[TrustedKey]) -> Result<ImageView, ApiErr> {
    let refuse = |e: rackcast_engine::image::ImageError| {
        ApiErr(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("image {name} refused: {e}"),
        )
    };
    let r = ImageReader::open(path).map_err(refuse)?;
    if !trusted.is_empty() {
        let untrusted = |why: String| {
            ApiErr(
                StatusCode::FORBIDDEN,
                format!(
                    "image {name} refused: {why}; this server accepts only images signed by \
                     one of its {} trusted key(s) (trusted_keys): sign it with \
                     `rackcast image sign IMG --key KEY`",
                    trusted.len()
                ),
            )
        };
        match r.signature() {
            None => return Err(untrusted("it is not signed".into())),
            Some(sig) => {
                if !trusted.iter().any(|k| r.check_signature(k).is_ok()) {
                    return Err(untrusted(format!(
                        "it is signed by key {}, which is not trusted (or the signature is bad)",
                        hex(&sig.public_key)
                    )));
                }
            }
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    r.verify(threads, &|_| {}).map_err(refuse)?;
    Ok(view(name, &r))
}

/// The library entry of an open image.
pub(crate) fn view(name: &str, r: &ImageReader) -> ImageView {
    ImageView {
        name: name.to_string(),
        root: hex(&r.root()),
        source_size: r.index().meta.source_size,
        stored_size: r.file_len(),
        chunks: r.index().entries.len() as u64,
        signed: r.signature().is_some(),
    }
}

fn too_large(max: u64) -> ApiErr {
    ApiErr(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the image is larger than this server's max_image_bytes ({max})"),
    )
}

fn internal(e: std::io::Error) -> ApiErr {
    ApiErr(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("image library: {e}"),
    )
}
