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
        let mut buf = BytesMut::with_capacity(declared.map_or(4096, |n| n as usize));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| BodyFailure {
                reason: ReasonCode::RequestParseError,
                detail: format!("request body could not be read: {err}"),
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
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
