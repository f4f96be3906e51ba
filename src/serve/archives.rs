//! `/archives/{uid}`: a downloaded export archive, with `Range` (one range, 206)
//! and its SHA-256 as the `ETag`.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::contract;
use crate::store::sqlite::replica::Replica;

const CHUNK: usize = 256 * 1024;

pub async fn serve(replica: &Replica, uid: &str, headers: &HeaderMap) -> Response {
    let found = match replica.archive(uid.to_string()).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!("serve: reading the mirror: {e:#}");
            return plain(StatusCode::SERVICE_UNAVAILABLE, Body::empty());
        }
    };
    let opened = match found {
        Some(a) => tokio::fs::File::open(&a.path).await.map(|f| (f, a)),
        None => Err(std::io::ErrorKind::NotFound.into()),
    };
    let Ok((mut file, archive)) = opened else {
        let (status, body) = contract::not_found();
        return plain(status, Body::from(body));
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(_) => return plain(StatusCode::SERVICE_UNAVAILABLE, Body::empty()),
    };
    let etag = format!("\"{}\"", archive.sha256);
    if super::not_modified(headers, &etag) {
        let mut r = plain(StatusCode::NOT_MODIFIED, Body::empty());
        r.headers_mut().insert(header::ETAG, value(&etag));
        return r;
    }
    let range = headers
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .map(|r| range(r, len));
    let (status, start, end) = match range {
        None | Some(Range::Ignored) => (StatusCode::OK, 0, len),
        Some(Range::Bytes(a, b)) => (StatusCode::PARTIAL_CONTENT, a, b),
        Some(Range::Unsatisfiable) => {
            let mut r = plain(StatusCode::RANGE_NOT_SATISFIABLE, Body::empty());
            r.headers_mut()
                .insert(header::CONTENT_RANGE, value(&format!("bytes */{len}")));
            return r;
        }
    };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, Body::empty());
    }
    let body = futures_util::stream::unfold((file, end - start), |(mut f, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0; CHUNK.min(left as usize)];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), (f, left - n as u64)))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    });
    let mut r = plain(status, Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, value(&(end - start).to_string()));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, value(&etag));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            value(&format!("bytes {start}-{}/{len}", end - 1)),
        );
    }
    r
}

fn plain(status: StatusCode, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("ASCII header value")
}

#[derive(Debug, PartialEq)]
enum Range {
    /// `[start, end)`.
    Bytes(u64, u64),
    Unsatisfiable,
    /// Not one byte range: the whole file is answered (RFC 9110 allows it).
    Ignored,
}

fn range(header: &str, len: u64) -> Range {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Range::Ignored;
    };
    if spec.contains(',') {
        return Range::Ignored;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Range::Ignored;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        // the last n bytes
        (true, false) => match num(b) {
            Some(0) => return Range::Unsatisfiable,
            Some(n) => (len.saturating_sub(n), len),
            None => return Range::Ignored,
        },
        (false, _) => match (
            num(a),
            if b.is_empty() {
                Some(u64::MAX - 1)
            } else {
                num(b)
            },
        ) {
            (Some(s), Some(e)) if s <= e => (s, e.saturating_add(1).min(len)),
            _ => return Range::Ignored,
        },
        (true, true) => return Range::Ignored,
    };
    if start >= len {
        return Range::Unsatisfiable;
    }
    Range::Bytes(start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges_as_rfc_9110_reads_them() {
        assert_eq!(range("bytes=0-9", 100), Range::Bytes(0, 10));
        assert_eq!(range("bytes=90-", 100), Range::Bytes(90, 100));
        assert_eq!(range("bytes=-10", 100), Range::Bytes(90, 100));
        assert_eq!(range("bytes=-1000", 100), Range::Bytes(0, 100));
        assert_eq!(range("bytes=50-5000", 100), Range::Bytes(50, 100));
        assert_eq!(range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=0-1,5-6", 100), Range::Ignored);
        assert_eq!(range("bytes=9-2", 100), Range::Ignored);
        assert_eq!(range("items=0-1", 100), Range::Ignored);
        assert_eq!(range("bytes=x-", 100), Range::Ignored);
    }
}
