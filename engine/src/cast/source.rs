//! Frames for the sender straight from an image file.

use bytes::Bytes;

use super::sender::FrameSource;
use super::CastError;
use crate::image::ImageReader;

/// An image file as a [`FrameSource`].
#[derive(Debug)]
pub struct ImageFrames(pub ImageReader);

impl FrameSource for ImageFrames {
    fn frame(&mut self, chunk: u32) -> Result<Bytes, CastError> {
        let mut buf = Vec::new();
        self.0
            .read_frame(u64::from(chunk), &mut buf)
            .map_err(|e| CastError::Source(Box::new(e)))?;
        Ok(buf.into())
    }
}
