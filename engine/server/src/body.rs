//! Request bodies: how big each may be, and JSON that is refused with an
//! [`ApiErr`](super::ApiErr) (a status and a JSON message), not axum's
//! plain text. A body is read only up to its route's limit, so no request
//! makes the server hold more than that in memory. Image uploads are not
//! JSON: they are streamed to a file (see `library`), bounded by
//! `max_image_bytes`.

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::ApiErr;

/// Most bytes of a JSON request body (every route but the ones below).
pub(crate) const JSON_LIMIT: usize = 1 << 20;

/// Most bytes of a job spec: a Run Script task carries its script.
pub(crate) const JOB_SPEC_LIMIT: usize = 4 << 20;

/// Most bytes of an agent's report: output the agent held while the server
/// was away comes in one batch of up to 1 MiB, and JSON escapes a control
/// byte in six.
pub(crate) const REPORT_LIMIT: usize = 8 << 20;

/// The default `max_image_bytes`: larger than any disk image we expect
/// (compressed images of 4 TB disks), small enough to stop an endless
/// upload long before it fills a library volume of that size.
pub(crate) const DEFAULT_MAX_IMAGE_BYTES: u64 = 4 << 40;

/// A JSON body whose refusal is an [`ApiErr`].
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiErr;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiErr> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::BytesRejection(e)) => Err(bytes_refused(e)),
            Err(e) => Err(ApiErr(e.status(), e.body_text())),
        }
    }
}

/// The answer to a body that could not be read: over its limit (413, with
/// the limit named) or broken off.
pub(crate) fn bytes_refused(e: BytesRejection) -> ApiErr {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiErr(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large for this route (JSON bodies: 1 MiB, job specs: 4 MiB, \
             agent reports: 8 MiB)"
                .into(),
        )
    } else {
        ApiErr(e.status(), e.body_text())
    }
}
