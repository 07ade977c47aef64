//! Length-prefixed framing of [`Frame`]s over any byte stream.
//!
//! Wire layout of one frame:
//!
//! ```text
//! +----------------------+-------------------------------------------+
//! | length: u32 (BE)     | body: bincode(Frame), `length` bytes      |
//! +----------------------+-------------------------------------------+
//! ```
//!
//! bincode uses its default options (little-endian varints); byte payloads
//! are serialised as one length plus raw bytes (`serde_bytes`). A length of 0
//! or above [`MAX_FRAME_BYTES`] is rejected before anything is allocated, and
//! a body that does not decode is rejected: both end the connection.

use bincode::Options;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::message::{Frame, MAX_FRAME_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("Connection I/O failed")]
    Io(#[from] std::io::Error),
    #[error("Frame length {len} is outside 1..={max}")]
    BadLength { len: usize, max: usize },
    #[error("Frame body does not decode")]
    Decode(#[source] bincode::Error),
    #[error("Frame does not encode")]
    Encode(#[source] bincode::Error),
}

fn options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_FRAME_BYTES as u64)
}

/// Encodes `frame` with its length prefix, appending to `out`.
pub fn encode_into(frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = options()
        .serialized_size(frame)
        .map_err(FrameError::Encode)?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(FrameError::BadLength {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    out.reserve(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    options()
        .serialize_into(&mut *out, frame)
        .map_err(FrameError::Encode)
}

/// Writes one frame (no flush).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), FrameError> {
    let mut buf = Vec::new();
    encode_into(frame, &mut buf)?;
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame. `Ok(None)` is a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Frame>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(FrameError::BadLength {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    let frame = options()
        .deserialize(buf.as_slice())
        .map_err(FrameError::Decode)?;
    Ok(Some(frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Body, ExecRequest};
    use serde_bytes::ByteBuf;

    #[tokio::test]
    async fn frames_round_trip_and_bad_lengths_are_rejected() {
        let frames = vec![
            Frame::new(1, Body::Exec(ExecRequest::shell("echo hi"))),
            Frame::new(3, Body::Data(ByteBuf::from(vec![0u8, 255, 10, 13]))),
            Frame::new(0, Body::Credit(65536)),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            encode_into(f, &mut wire).unwrap();
        }
        let mut r = wire.as_slice();
        let mut buf = Vec::new();
        for f in &frames {
            assert_eq!(
                read_frame(&mut r, &mut buf).await.unwrap().as_ref(),
                Some(f)
            );
        }
        assert!(read_frame(&mut r, &mut buf).await.unwrap().is_none());

        let huge = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
        let err = read_frame(&mut huge.as_slice(), &mut buf)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::BadLength { .. }), "{err}");

        let mut garbage = 3u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        let err = read_frame(&mut garbage.as_slice(), &mut buf)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
    }
}
