//! Step 1 of the evaluation order: read the body, bounded in size and time.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;

use crate::decision::ReasonCode;

/// Why a body could not be read; it still becomes an audited DENY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFailure {
    pub reason: ReasonCode,
    pub detail: String,
}

/// Reads the whole body, refusing more than `limit` bytes or a body slower than `timeout`.
///
/// `declared` is the Content-Length, if any: an oversized declaration is refused unread.
pub async fn read_body<B>(
    body: B,
    declared: Option<u64>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyFailure>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let too_large = || BodyFailure {
        reason: ReasonCode::RequestTooLarge,
        detail: format!("request body is larger than {limit} bytes"),
    };
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let collect = async {
        let mut body = std::pin::pin!(body);
        let mut read = Read::Nothing;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| BodyFailure {
                reason: ReasonCode::RequestParseError,
                detail: format!("request body could not be read: {err}"),
            })?;
            if let Ok(data) = frame.into_data() {
                if read.len() + data.len() > limit {
                    return Err(too_large());
                }
                read = read.push(data, declared);
            }
        }
        Ok(read.into_bytes())
    };
    tokio::time::timeout(timeout, collect)
        .await
        .unwrap_or_else(|_| {
            Err(BodyFailure {
                reason: ReasonCode::RequestParseError,
                detail: format!(
                    "request body was not received within {} ms",
                    timeout.as_millis()
                ),
            })
        })
}

/// The body so far. A body that arrives in one frame, the usual case for a request of a few
/// hundred bytes, is kept as that frame: no copy, no buffer.
enum Read {
    Nothing,
    One(Bytes),
    Many(BytesMut),
}

impl Read {
    fn len(&self) -> usize {
        match self {
            Read::Nothing => 0,
            Read::One(bytes) => bytes.len(),
            Read::Many(buf) => buf.len(),
        }
    }

    fn push(self, data: Bytes, declared: Option<u64>) -> Read {
        match self {
            Read::Nothing => Read::One(data),
            Read::One(first) => {
                let capacity = declared
                    .and_then(|n| usize::try_from(n).ok())
                    .unwrap_or(0)
                    .max(first.len() + data.len());
                let mut buf = BytesMut::with_capacity(capacity);
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&data);
                Read::Many(buf)
            }
            Read::Many(mut buf) => {
                buf.extend_from_slice(&data);
                Read::Many(buf)
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Read::Nothing => Bytes::new(),
            Read::One(bytes) => bytes,
            Read::Many(buf) => buf.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::StreamBody;
    use hyper::body::Frame;

    use super::*;

    fn frames(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = Infallible> {
        StreamBody::new(futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok::<_, Infallible>(Frame::data(Bytes::from_static(p.as_bytes()))))
                .collect::<Vec<_>>(),
        ))
    }

    async fn read(parts: &[&'static str], limit: usize) -> Result<Bytes, BodyFailure> {
        read_body(frames(parts), None, limit, Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn bodies_in_any_number_of_frames_read_whole() {
        assert_eq!(read(&[], 10).await.unwrap(), "");
        assert_eq!(read(&["abc"], 10).await.unwrap(), "abc");
        assert_eq!(read(&["ab", "", "c"], 10).await.unwrap(), "abc");
        assert_eq!(read(&["a", "b", "c", "defg"], 10).await.unwrap(), "abcdefg");
        assert_eq!(read(&["abcde", "fghij"], 10).await.unwrap(), "abcdefghij");
    }

    #[tokio::test]
    async fn the_limit_holds_for_one_frame_and_for_many() {
        for parts in [
            &["abcdefghijk"][..],
            &["abcdef", "ghijk"][..],
            &["a"; 11][..],
        ] {
            let failure = read(parts, 10).await.unwrap_err();
            assert_eq!(failure.reason, ReasonCode::RequestTooLarge, "{parts:?}");
        }
        let declared = read_body(frames(&["a"]), Some(11), 10, Duration::from_secs(5)).await;
        assert_eq!(declared.unwrap_err().reason, ReasonCode::RequestTooLarge);
    }
}
