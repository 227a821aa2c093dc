//! The image library: `DATA/images/NAME.rcimg`. An upload is streamed to a
//! temporary file, verified (every chunk hash and the root) and only then
//! renamed into place; a corrupt upload is refused with the offset the
//! verifier names and leaves the library as it was.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::StatusCode;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::ApiErr;
use rackcast_engine::image::{hex, ImageReader};
use rackcast_engine::sched::api::ImageView;

/// Where image `name` lives.
pub(crate) fn image_path(data: &Path, name: &str) -> PathBuf {
    data.join("images").join(format!("{name}.rcimg"))
}

/// Streams `body` into the library as `name` after verifying it.
pub(crate) async fn receive(data: &Path, name: &str, body: Body) -> Result<ImageView, ApiErr> {
    if !rackcast_engine::sched::valid_name(name) {
        return Err(ApiErr(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("image name {name:?}: use letters, digits, '.', '_' or '-'"),
        ));
    }
    let tmp = data.join("images").join(format!(
        ".{name}.upload-{}",
        super::auth::random_token()
            .map_err(internal)?
            .get(..12)
            .unwrap_or("x")
    ));
    let r = write_body(&tmp, body).await;
    let r = match r {
        Ok(()) => {
            let (t, n) = (tmp.clone(), name.to_string());
            tokio::task::spawn_blocking(move || check(&t, &n))
                .await
                .map_err(|e| internal(std::io::Error::other(e)))
                .and_then(|r| r)
        }
        Err(e) => Err(e),
    };
    match r {
        Ok(view) => {
            tokio::fs::rename(&tmp, image_path(data, name))
                .await
                .map_err(internal)?;
            Ok(view)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

async fn write_body(path: &Path, body: Body) -> Result<(), ApiErr> {
    let mut f = tokio::fs::File::create(path).await.map_err(internal)?;
    let mut s = body.into_data_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| {
            ApiErr(
                StatusCode::BAD_REQUEST,
                format!("the upload broke off: {e}"),
            )
        })?;
        f.write_all(&chunk).await.map_err(internal)?;
    }
    f.sync_all().await.map_err(internal)?;
    Ok(())
}

/// Opens and fully verifies an image file.
pub(crate) fn check(path: &Path, name: &str) -> Result<ImageView, ApiErr> {
    let refuse = |e: rackcast_engine::image::ImageError| {
        ApiErr(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("image {name} refused: {e}"),
        )
    };
    let r = ImageReader::open(path).map_err(refuse)?;
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

fn internal(e: std::io::Error) -> ApiErr {
    ApiErr(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("image library: {e}"),
    )
}
