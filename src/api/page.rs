//! Cursor and page pagination as one sequence of pages: both styles answer
//! `{"next": <absolute URL|null>, "results": [...]}` (page style adds `count`),
//! so following `next` covers both. A `count` that changes mid-listing marks the
//! listing unstable (records may have shifted between pages).

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use reqwest::Url;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::client::Client;
use super::pace::Priority;
use crate::error::ApiError;

/// Pages fetched and converted ahead of the writer by one listing: enough to keep
/// the writer busy across a slow response.
pub const AHEAD: usize = 4;

/// Pages fetched and not yet written, over all crawl listings at once, so memory
/// stays flat whatever the number of scopes listed side by side. At 1,000 records
/// a page is about 0.5 MiB of body (items) plus its converted records; 12 cost
/// 5 MiB more peak RSS than 6 (bench, `--datasets 10`) and neither was faster.
pub const CRAWL_PAGES_AHEAD: usize = 8;
/// The same for status-poll listings, apart, so they never wait for a crawl's pages.
pub const POLL_PAGES_AHEAD: usize = 4;

/// The pages that may be held between fetch and write; see [`CRAWL_PAGES_AHEAD`].
pub struct PageBudget {
    crawl: Arc<Semaphore>,
    poll: Arc<Semaphore>,
}

impl Default for PageBudget {
    fn default() -> Self {
        PageBudget {
            crawl: Arc::new(Semaphore::new(CRAWL_PAGES_AHEAD)),
            poll: Arc::new(Semaphore::new(POLL_PAGES_AHEAD)),
        }
    }
}

impl PageBudget {
    fn for_priority(&self, prio: Priority) -> Arc<Semaphore> {
        match prio {
            Priority::High => self.poll.clone(),
            Priority::Low => self.crawl.clone(),
        }
    }

    /// Pages held right now (fetched, not yet written), crawls and polls together.
    pub fn held(&self) -> usize {
        CRAWL_PAGES_AHEAD + POLL_PAGES_AHEAD
            - self.crawl.available_permits()
            - self.poll.available_permits()
    }
}

/// A page (converted to `T`) with its place in the [`PageBudget`], given back
/// when this is dropped: after the page is written.
pub struct Ahead<T> {
    pub value: T,
    pub held: OwnedSemaphorePermit,
}

/// One page; records stay unparsed JSON text until the diff needs them.
pub struct Page {
    body: ByteString,
    /// Where each record of `results` is in `body` (found by the one parse that
    /// finds `next`, without copying a record).
    records: Vec<Range<usize>>,
    pub count: Option<u64>,
}

impl Page {
    /// The records, as JSON texts sharing the body's buffer.
    pub fn records(&self) -> impl ExactSizeIterator<Item = ByteString> + '_ {
        self.records
            .iter()
            .map(|r| self.body.slice_ref(&self.body[r.clone()]))
    }
}

pub struct Pager {
    client: Arc<Client>,
    next: Option<Url>,
    prio: Priority,
    first_count: Option<u64>,
    /// The largest `count` announced so far.
    most_count: Option<u64>,
    /// The collection's size changed while we listed it.
    pub unstable: bool,
    /// Every page URL this listing has asked for: a `next` back to one of them
    /// is a loop (A → B → A), not a longer listing.
    visited: HashSet<Url>,
    /// Records received so far.
    received: u64,
}

/// A page may hold at most this many times the `limit` asked for (SPEC §6).
const PAGE_SLACK: u64 = 10;

impl Pager {
    pub fn new(client: Arc<Client>, first: Url, prio: Priority) -> Pager {
        Pager {
            client,
            visited: HashSet::from([first.clone()]),
            next: Some(first),
            prio,
            first_count: None,
            most_count: None,
            unstable: false,
            received: 0,
        }
    }

    pub async fn next_page(&mut self) -> Result<Option<Page>, ApiError> {
        let Some(url) = self.next.take() else {
            return Ok(None);
        };
        let fetched = self.client.fetch(&url, self.prio, parse_page).await?;
        let (page, next) = fetched.value;
        let untrusted = |message: String| ApiError::Untrusted {
            endpoint: super::client::endpoint(&url),
            message,
        };
        let limit = u64::from(self.client.page_size());
        let n = page.records.len() as u64;
        if n > limit * PAGE_SLACK {
            return Err(untrusted(format!(
                "a page of {n} records where {limit} were asked for"
            )));
        }
        self.received += n;
        match (self.first_count, page.count) {
            (None, Some(c)) => self.first_count = Some(c),
            (Some(a), Some(b)) if a != b => self.unstable = true,
            _ => {}
        }
        self.most_count = self.most_count.max(page.count);
        if let Some(count) = self.most_count.filter(|c| self.received > c + limit) {
            return Err(untrusted(format!(
                "{} records and counting, more than a page past the {count} it announced",
                self.received
            )));
        }
        if let Some(next) = next {
            let next = url.join(&next).map_err(|e| ApiError::Malformed {
                endpoint: super::client::endpoint(&url),
                message: format!("bad next link: {e}"),
            })?;
            if !self.client.is_api_host(&next) {
                return Err(ApiError::ForeignHost(super::client::endpoint(&next)));
            }
            if !self.visited.insert(next.clone()) {
                return Err(untrusted(
                    "its next link leads back to a page it already fetched".into(),
                ));
            }
            self.next = Some(next);
        }
        Ok(Some(page))
    }

    /// Fetches pages ahead on a task of their own and turns each into `T` on a
    /// second one (up to `AHEAD` waiting), so the next request goes out while this
    /// page is converted and the one before is written. Each page first takes a
    /// place in the client's [`PageBudget`], which it keeps until it is written.
    pub fn prefetch<T: Send + 'static>(
        mut self,
        mut convert: impl FnMut(Page) -> T + Send + 'static,
    ) -> PageStream<T> {
        type Raw = Result<(Page, OwnedSemaphorePermit), ApiError>;
        let (raw_tx, mut raw_rx) = mpsc::channel::<Raw>(2);
        let budget = self.client.pages.for_priority(self.prio);
        let fetcher = tokio::spawn(async move {
            loop {
                let Ok(held) = budget.clone().acquire_owned().await else {
                    return true;
                };
                let page = self.next_page().await;
                let last = !matches!(page, Ok(Some(_)));
                if let Some(page) = page.transpose()
                    && raw_tx.send(page.map(|p| (p, held))).await.is_err()
                {
                    return self.unstable;
                }
                if last {
                    return self.unstable;
                }
            }
        });
        let (tx, rx) = mpsc::channel(AHEAD);
        let converter = tokio::spawn(async move {
            while let Some(page) = raw_rx.recv().await {
                let page = page.map(|(p, held)| Ahead {
                    value: convert(p),
                    held,
                });
                if tx.send(page).await.is_err() {
                    return;
                }
            }
        });
        PageStream {
            rx,
            fetcher,
            converter,
        }
    }
}

pub struct PageStream<T> {
    rx: mpsc::Receiver<Result<Ahead<T>, ApiError>>,
    fetcher: tokio::task::JoinHandle<bool>,
    converter: tokio::task::JoinHandle<()>,
}

impl<T> PageStream<T> {
    pub async fn next(&mut self) -> Option<Result<Ahead<T>, ApiError>> {
        self.rx.recv().await
    }

    /// A page that is already waiting, if any.
    pub fn ready(&mut self) -> Option<Result<Ahead<T>, ApiError>> {
        self.rx.try_recv().ok()
    }

    /// After the last page: whether the listing saw its collection change size.
    pub async fn finish(mut self) -> bool {
        (&mut self.fetcher).await.unwrap_or(true)
    }
}

impl<T> Drop for PageStream<T> {
    fn drop(&mut self) {
        self.fetcher.abort();
        self.converter.abort();
    }
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    results: Vec<&'a RawValue>,
    #[serde(default)]
    next: Value,
    #[serde(default)]
    count: Value,
}

fn parse_page(body: &Bytes) -> Result<(Page, Option<String>), String> {
    let body = ByteString::try_from(body.clone()).map_err(|e| format!("not JSON: {e}"))?;
    let (results, count, next) = match body.trim_start().as_bytes().first() {
        Some(b'[') => {
            let all: Vec<&RawValue> =
                serde_json::from_str(&body).map_err(|e| format!("not JSON: {e}"))?;
            (all, None, None)
        }
        Some(b'{') => {
            let b: Body = serde_json::from_str(&body).map_err(|e| format!("not a page: {e}"))?;
            let next = match b.next {
                Value::String(s) if !s.is_empty() => Some(s),
                Value::String(_) | Value::Null => None,
                _ => return Err("`next` is neither a URL nor null".into()),
            };
            (b.results, b.count.as_u64(), next)
        }
        _ => return Err("a page must be an object with `results`".into()),
    };
    let base = body.as_ptr() as usize;
    let records = results
        .iter()
        .map(|r| {
            let start = r.get().as_ptr() as usize - base;
            start..start + r.get().len()
        })
        .collect();
    Ok((
        Page {
            body: body.clone(),
            records,
            count,
        },
        next,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_styles_parse() {
        let parse = |b: &'static [u8]| parse_page(&Bytes::from_static(b));
        let (p, next) = parse(
            br#"{"count":3,"next":"https://h/x?page=2","previous":null,"results":[{"uid":"a"}]}"#,
        )
        .unwrap();
        assert_eq!(
            (p.records().len(), p.count, next.as_deref()),
            (1, Some(3), Some("https://h/x?page=2"))
        );
        assert_eq!(p.records().next().as_deref(), Some(r#"{"uid":"a"}"#));
        let (p, next) = parse(br#"{"next":null,"previous":null,"results":[],"extra":1}"#).unwrap();
        assert_eq!((p.records().len(), p.count, next), (0, None, None));
        assert!(parse(b"{\"detail\":\"x\"}").is_err());
        assert!(parse(br#"{"results":[],"next":5}"#).is_err());
        assert!(parse(br#"{"results":{"uid":"a"},"next":null}"#).is_err());
        let (p, _) = parse(b" [{\"uid\":\"a\"},\n {\"uid\":\"b\"}] ").unwrap();
        assert_eq!(p.records().len(), 2);
        assert!(parse(b"<html>").is_err());
    }
}
