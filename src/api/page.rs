//! Pagination as one sequence of pages. Both v1 styles answer
//! `{"next": <absolute URL|null>, "results": [...]}` (page style adds `count`),
//! so following `next` covers both. The JSON:API service answers
//! `{"data": [...], "meta": {"count"}, "links": {"next"}}` and is paged by
//! number, or by key for an incremental listing ([`Paging`]). A `count` that
//! changes mid-listing marks the listing unstable (records may have shifted
//! between pages).

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use futures_util::StreamExt;
use reqwest::Url;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::client::Client;
use super::jsonapi;
use super::pace::Priority;
use crate::error::ApiError;
use crate::sync::diff::Head;

/// Pages fetched and converted ahead of the writer by one listing: enough to keep
/// the writer busy across a slow response.
pub const AHEAD: usize = 4;

/// Pages fetched and not yet written, over all crawl listings at once, so memory
/// stays flat whatever the number of scopes listed side by side. At 1,000 records
/// a page is about 0.5 MiB of body (items) plus its converted records; 12 cost
/// 5 MiB more peak RSS than 6 (bench, `--datasets 10`) and neither was faster.
pub const CRAWL_PAGES_AHEAD: usize = 6;
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

/// How a listing finds its next page.
pub enum Paging {
    /// v1: the server's `next` link.
    Next,
    /// JSON:API: `page[number]` + 1 while pages are full (SPEC §8).
    Number,
    /// JSON:API incremental: each request asks for what changed since the last
    /// `updated_at` received, so a record updated mid-listing (which moves to
    /// the end) cannot push another past a page boundary unseen.
    Keyed(Keyed),
}

/// The state of an incremental listing paged by key.
#[derive(Default)]
pub struct Keyed {
    /// The current request's bound, as sent and as an instant.
    bound: String,
    at: i128,
    /// Ids received whose `updated_at` is the bound: a later page that
    /// returns them again (it starts at that instant) drops them.
    at_bound: HashSet<String>,
    /// Full pages in a row of nothing but records it already had.
    stale_pages: u32,
}

impl Keyed {
    pub fn new(bound: &str) -> Keyed {
        Keyed {
            bound: bound.to_string(),
            at: crate::time::instant(bound).unwrap_or(i128::MIN),
            at_bound: HashSet::new(),
            stale_pages: 0,
        }
    }
}

pub struct Pager {
    client: Arc<Client>,
    paging: Paging,
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
    /// The scope's last complete size, which a listing without `count` may
    /// outrun only so far ([`Pager::allowance`]).
    last_size: Option<u64>,
    /// A listing by number: the page size the server answers with, learnt
    /// from its first page (it may cap `page[size]` below what was asked).
    size: Option<u64>,
    /// Why the listing is incomplete, given after its last page (which is
    /// written: its records are good, the listing as a whole is not).
    incomplete: Option<ApiError>,
}

/// A page may hold at most this many times the `limit` asked for (SPEC §6).
const PAGE_SLACK: u64 = 10;

impl Pager {
    pub fn new(client: Arc<Client>, first: Url, prio: Priority) -> Pager {
        Pager::paged(client, first, prio, Paging::Next)
    }

    pub fn paged(client: Arc<Client>, first: Url, prio: Priority, paging: Paging) -> Pager {
        Pager {
            client,
            paging,
            visited: HashSet::from([first.clone()]),
            next: Some(first),
            prio,
            first_count: None,
            most_count: None,
            unstable: false,
            received: 0,
            last_size: None,
            size: None,
            incomplete: None,
        }
    }

    pub async fn next_page(&mut self) -> Result<Option<Page>, ApiError> {
        if let Some(incomplete) = self.incomplete.take() {
            return Err(incomplete);
        }
        let Some(url) = self.next.take() else {
            return Ok(None);
        };
        let fetched = fetch(&self.client, &url, self.prio, &self.paging).await?;
        self.accept(url, fetched).map(Some)
    }

    /// The pages a listing by number can ask for side by side, once its first
    /// page said how many there are: 2 to the last by `count` (at the size the
    /// server answers with), when the first was full. Asked once, after the
    /// first page; the next page after them is found as usual (the collection
    /// may have grown meanwhile). Lazy: whatever the count says, only the
    /// pages in flight exist (SPEC §6).
    fn plan(&mut self) -> Option<impl Iterator<Item = Url> + Send + 'static> {
        let (Paging::Number, Some(count), Some(next)) =
            (&self.paging, self.first_count, &self.next)
        else {
            return None;
        };
        let last = count.div_ceil(self.server_size());
        if jsonapi::page_number(next) != 2 || last < 2 {
            return None;
        }
        let next = self.next.take()?;
        Some((2..=last).map(move |n| jsonapi::with_page(&next, n)))
    }

    /// The page size the server answers with (a listing by number), else the one asked for.
    fn server_size(&self) -> u64 {
        self.size
            .unwrap_or(u64::from(self.client.page_size()))
            .max(1)
    }

    /// Checks a fetched page against the listing so far and finds the next one.
    fn accept(&mut self, url: Url, fetched: (Page, Option<String>)) -> Result<Page, ApiError> {
        let (mut page, next) = fetched;
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
        self.received = self.received.saturating_add(n);
        if !matches!(self.paging, Paging::Next) && self.size.is_none() {
            // a first page shorter than asked while the count says there is
            // more: the server caps page[size], so pages are of its size
            self.size = Some(match page.count {
                Some(c) if 0 < n && n < limit && n < c => n,
                _ => limit,
            });
        }
        // a page is full at the server's size, or when its links name a next one
        let full =
            n > 0 && (n >= self.server_size() || next.as_ref().is_some_and(|l| !l.is_empty()));
        if let Paging::Keyed(k) = &mut self.paging {
            // the count is of what changed since a moving bound: nothing to
            // compare; the collection's size bounds it instead
            let next = k.next(&url, &mut page, full)?;
            if let Some(last) = self.last_size {
                self.within_allowance(&url, last)?;
            }
            self.next = self.follow(&url, next)?;
            return Ok(page);
        }
        match (self.first_count, page.count) {
            (None, Some(c)) => self.first_count = Some(c),
            // records created meanwhile land after a listing sorted by creation;
            // only a count that shrank can have moved one past a page unseen
            (Some(_), Some(b)) if Some(b) < self.most_count => self.unstable = true,
            _ => {}
        }
        self.most_count = self.most_count.max(page.count);
        if let (None, Some(last)) = (self.most_count, self.last_size) {
            self.within_allowance(&url, last)?;
        }
        if let Some(count) = self
            .most_count
            .filter(|c| self.received > c.saturating_add(limit))
        {
            return Err(untrusted(format!(
                "{} records and counting, more than a page past the {count} it announced",
                self.received
            )));
        }
        // the page's links say there is no next page: the server's own end
        let links_end = next.is_none();
        let next = match (&self.paging, next) {
            // a short page is the last, unless its links name a next one; so
            // is one whose links name no next page
            (Paging::Number, Some(link)) if full => {
                if !link.is_empty() {
                    self.link(&url, &link)?;
                }
                // the link only says there is one; the page asked for is ours
                let number = jsonapi::page_number(&url).saturating_add(1);
                Some(jsonapi::with_page(&url, number))
            }
            (Paging::Next, Some(link)) => Some(self.link(&url, &link)?),
            _ => None,
        };
        if next.is_none() && !links_end {
            self.incomplete = self.ended(&url).err();
        }
        self.next = self.follow(&url, next)?;
        Ok(page)
    }

    /// At the last page of a listing by number that gives no links (a short
    /// page ended it): one that ends short of the count it announced, and did
    /// not change under it, missed records (a page the server did not give):
    /// it is incomplete (SPEC §6). A listing that followed the server's own
    /// `links.next` to their end is complete whatever its count said.
    fn ended(&self, url: &Url) -> Result<(), ApiError> {
        match (&self.paging, self.first_count) {
            (Paging::Number, Some(count)) if !self.unstable && self.received < count => {
                Err(ApiError::Untrusted {
                    endpoint: super::client::endpoint(url),
                    message: format!(
                        "it ended at {} records, short of the {count} it announced",
                        self.received
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// A listing past its allowance from the scope's last size ends incomplete.
    fn within_allowance(&self, url: &Url, last: u64) -> Result<(), ApiError> {
        match self.received > self.allowance(last) {
            true => Err(ApiError::TooLong {
                endpoint: super::client::endpoint(url),
                received: self.received,
                last,
            }),
            false => Ok(()),
        }
    }

    /// A `next` link of the page at `url`, if it is one and leads to the API's host.
    fn link(&self, url: &Url, link: &str) -> Result<Url, ApiError> {
        let link = url.join(link).map_err(|e| ApiError::Malformed {
            endpoint: super::client::endpoint(url),
            message: format!("bad next link: {e}"),
        })?;
        match self.client.is_api_host(&link) {
            true => Ok(link),
            false => Err(ApiError::ForeignHost(super::client::endpoint(&link))),
        }
    }

    /// The scope's last complete size (`sync_state.records`), for a listing
    /// whose pages carry no `count` to hold it to.
    pub fn last_size(mut self, last: Option<u64>) -> Pager {
        self.last_size = last;
        self
    }

    /// How many records a listing without `count` may return: ten times its
    /// last complete size, and at least a hundred pages more than it.
    fn allowance(&self, last: u64) -> u64 {
        let limit = u64::from(self.client.page_size());
        last.saturating_mul(10)
            .max(last.saturating_add(limit.saturating_mul(100)))
    }

    /// Takes `next` as the next page, unless this listing asked for it already.
    fn follow(&mut self, url: &Url, next: Option<Url>) -> Result<Option<Url>, ApiError> {
        match next {
            Some(next) if !self.visited.insert(next.clone()) => Err(ApiError::Untrusted {
                endpoint: super::client::endpoint(url),
                message: "its next link leads back to a page it already fetched".into(),
            }),
            next => Ok(next),
        }
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
                // a listing by number knows its pages after the first: side by
                // side, each with its place in the budget taken in order, so
                // the rate, not the round trip, sets the pace
                let Some(planned) = self.plan() else {
                    continue;
                };
                let (client, prio, paging) = (self.client.clone(), self.prio, Paging::Number);
                let pages = futures_util::stream::iter(planned)
                    .then(|url| {
                        let budget = budget.clone();
                        async move { (url, budget.acquire_owned().await) }
                    })
                    .map(|(url, held)| {
                        let client = client.clone();
                        let paging = &paging;
                        async move {
                            let fetched = fetch(&client, &url, prio, paging).await;
                            (url, fetched, held)
                        }
                    })
                    .buffered(self.client.concurrency());
                let mut pages = std::pin::pin!(pages);
                while let Some((url, fetched, held)) = pages.next().await {
                    let Ok(held) = held else {
                        return true;
                    };
                    let page = fetched.and_then(|f| self.accept(url, f));
                    let end = match &page {
                        Ok(p) => (p.records.len() as u64) < self.server_size(),
                        Err(_) => true,
                    };
                    if raw_tx.send(page.map(|p| (p, held))).await.is_err() || end {
                        // a short page ends it, as one after another would
                        if end {
                            self.next = None;
                        }
                        if let Some(incomplete) = self.incomplete.take() {
                            let _ = raw_tx.send(Err(incomplete)).await;
                        }
                        return self.unstable;
                    }
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

impl Keyed {
    /// Checks a page against the filter its request sent, drops the records
    /// received already at the bound's instant, and gives the next request:
    /// from the last `updated_at` of the page, page 1 (or, when the whole page
    /// shares the one instant, the next page of that instant). None after a
    /// page that was not full.
    fn next(&mut self, url: &Url, page: &mut Page, full: bool) -> Result<Option<Url>, ApiError> {
        let ignored = |message: String| ApiError::FilterIgnored {
            endpoint: super::client::endpoint(url),
            message,
        };
        let mut keep = Vec::with_capacity(page.records.len());
        let mut last: Option<(i128, String)> = None;
        let (mut all_same, mut first_t) = (true, None);
        let mut ids_at_last = Vec::new();
        for range in &page.records {
            let text = &page.body[range.clone()];
            let Ok(head) = Head::parse_jsonapi(text, &[]) else {
                // skipped and counted by the listing
                keep.push(range.clone());
                continue;
            };
            let Some(t) = head.updated_at.as_deref().and_then(crate::time::instant) else {
                return Err(ignored(format!(
                    "record {} has no readable updated_at to page by",
                    head.uid
                )));
            };
            if t < self.at {
                return Err(ignored(format!(
                    "record {} was updated at {}, before the {} asked for",
                    head.uid,
                    head.updated_at.as_deref().unwrap_or_default(),
                    self.bound
                )));
            }
            let id = head.uid.into_owned();
            // a page all of one instant counts the records it drops too
            all_same &= first_t.get_or_insert(t) == &t;
            if t == self.at && self.at_bound.contains(&id) {
                continue;
            }
            if last.as_ref().is_some_and(|(l, _)| *l != t) {
                ids_at_last.clear();
            }
            ids_at_last.push(id);
            last = Some((t, head.updated_at.unwrap_or_default().into_owned()));
            keep.push(range.clone());
        }
        page.records = keep;
        if !full {
            return Ok(None);
        }
        let number = jsonapi::page_number(url);
        let Some((t, text)) = last else {
            // a full page of what it already had (the instant's records shifted
            // under its page numbers): the instant's next page, a few times
            self.stale_pages += 1;
            if self.stale_pages > 3 {
                return Err(ApiError::Untrusted {
                    endpoint: super::client::endpoint(url),
                    message: "page after page of records it had already returned".into(),
                });
            }
            return Ok(Some(jsonapi::with_page(url, number.saturating_add(1))));
        };
        self.stale_pages = 0;
        let next_number = if t == self.at {
            // every record of the page at the bound: the next page of that instant
            number.saturating_add(1)
        } else {
            self.at_bound.clear();
            self.bound = text;
            self.at = t;
            // a page all of one instant: page 1 from that instant would be this one
            if all_same { 2 } else { 1 }
        };
        self.at_bound.extend(ids_at_last);
        let url = jsonapi::with_param(url, jsonapi::SINCE, &self.bound);
        Ok(Some(jsonapi::with_page(&url, next_number)))
    }
}

/// A JSON:API document's `data` (the records, unparsed), `meta.count`, and
/// whether its `links` name a next page: `Some` of the link when they do, or
/// when there are no links (only a short page ends such a listing).
pub fn parse_document(body: &Bytes) -> Result<(Page, Option<String>), String> {
    #[derive(Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        data: Vec<&'a RawValue>,
        #[serde(default)]
        meta: Value,
        #[serde(default)]
        links: Value,
    }
    let body = ByteString::try_from(body.clone()).map_err(|e| format!("not JSON: {e}"))?;
    let doc: Doc = serde_json::from_str(&body).map_err(|e| format!("not a JSON:API list: {e}"))?;
    let next = match &doc.links {
        Value::Null => Some(String::new()),
        Value::Object(links) => match links.get("next") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            // JSON:API 1.1: a link may be an object with `href`
            Some(Value::Object(o)) => o.get("href").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        },
        _ => return Err("`links` is not an object".into()),
    };
    let count = doc.meta.get("count").and_then(Value::as_u64);
    Ok((Page::new(&body, &doc.data, count), next))
}

impl Page {
    /// A page of `body` whose records are `values`, parsed from it.
    fn new(body: &ByteString, values: &[&RawValue], count: Option<u64>) -> Page {
        let base = body.as_ptr() as usize;
        let records = values
            .iter()
            .map(|r| {
                let start = r.get().as_ptr() as usize - base;
                start..start + r.get().len()
            })
            .collect();
        Page {
            body: body.clone(),
            records,
            count,
        }
    }
}

/// One page of a listing, parsed as its paging style answers.
async fn fetch(
    client: &Client,
    url: &Url,
    prio: Priority,
    paging: &Paging,
) -> Result<(Page, Option<String>), ApiError> {
    let fetched = match paging {
        Paging::Next => client.fetch(url, prio, parse_page).await?,
        _ => client.fetch(url, prio, parse_document).await?,
    };
    Ok(fetched.value)
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
    Ok((Page::new(&body, &results, count), next))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A JSON:API page of (id, updated_at) records.
    fn doc(recs: &[(&str, &str)]) -> Page {
        let data: Vec<Value> = recs
            .iter()
            .map(|(id, t)| serde_json::json!({"type": "x", "id": id, "attributes": {"updated_at": t}}))
            .collect();
        let body = serde_json::json!({"data": data, "meta": {"count": 99}}).to_string();
        parse_document(&Bytes::from(body)).unwrap().0
    }

    fn ids(p: &Page) -> Vec<String> {
        p.records()
            .map(|r| Head::parse_jsonapi(&r, &[]).unwrap().uid.into_owned())
            .collect()
    }

    #[test]
    fn a_listing_by_key_moves_on_from_its_last_record_and_checks_the_filter() {
        let t = |s: u32| format!("2026-12-01T10:00:{s:02}Z");
        let first = jsonapi::with_param(
            &Url::parse("http://h/jsonapi/x?page%5Bnumber%5D=1&page%5Bsize%5D=3").unwrap(),
            jsonapi::SINCE,
            &t(0),
        );
        let mut k = Keyed::new(&t(0));
        // a full page: the next request starts at its last record's time, page 1
        let mut p = doc(&[("a", &t(1)), ("b", &t(2)), ("c", &t(2))]);
        let next = k.next(&first, &mut p, true).unwrap().unwrap();
        assert_eq!(ids(&p), ["a", "b", "c"]);
        let pairs: HashMap<String, String> = next.query_pairs().into_owned().collect();
        assert_eq!(
            (
                pairs[jsonapi::SINCE].as_str(),
                pairs["page[number]"].as_str()
            ),
            (t(2).as_str(), "1")
        );
        // that page repeats what it had at that instant: dropped
        let mut p = doc(&[("b", &t(2)), ("c", &t(2)), ("d", &t(3))]);
        let next = k.next(&next, &mut p, true).unwrap().unwrap();
        assert_eq!(ids(&p), ["d"]);
        // a whole page of one instant: that instant's next page
        let mut p = doc(&[("e", &t(3)), ("f", &t(3)), ("g", &t(3))]);
        let next = k.next(&next, &mut p, true).unwrap().unwrap();
        assert_eq!(jsonapi::page_number(&next), 2);
        // a short page ends it
        let mut p = doc(&[("h", &t(4))]);
        assert!(k.next(&next, &mut p, false).unwrap().is_none());
        // a record older than the bound: the filter was ignored
        let mut k = Keyed::new(&t(5));
        let mut p = doc(&[("a", &t(1))]);
        let e = k.next(&first, &mut p, false).unwrap_err();
        assert!(matches!(e, ApiError::FilterIgnored { .. }), "{e}");
        // page after page of what it had: not forever
        let mut k = Keyed::new(&t(0));
        let mut p = doc(&[("a", &t(0)), ("b", &t(0))]);
        let mut url = k.next(&first, &mut p, true).unwrap().unwrap();
        let mut ended = None;
        for _ in 0..6 {
            let mut p = doc(&[("a", &t(0)), ("b", &t(0))]);
            match k.next(&url, &mut p, true) {
                Ok(Some(u)) => url = u,
                other => {
                    ended = Some(other.map(|_| ()));
                    break;
                }
            }
        }
        assert!(
            matches!(ended, Some(Err(ApiError::Untrusted { .. }))),
            "{ended:?}"
        );
    }

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

    /// Any JSON of the shapes a page has (and many it should not): keys from
    /// both services' documents, values of every type, nested.
    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let key = prop::sample::select(vec![
            "data",
            "results",
            "meta",
            "count",
            "links",
            "next",
            "href",
            "uid",
            "id",
            "status",
            "attributes",
            "relationships",
            "updated_at",
            "slug",
            "is_sequence",
            "dataset_uid",
            "project_id",
            "note_feed",
            "x",
        ]);
        let time = prop::sample::select(vec![
            "2026-12-01T10:00:00Z",
            "2099-01-01T00:00:00.123456789+14:00",
            "0000-01-01T00:00:00-23:59",
            "9999-12-31T23:59:60.9999999999Z",
            "2026-13-01T10:00:00Z",
            "2026-12-01T10:00:0\u{e9}",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            time.prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..8).prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        /// Whatever a server answers, the page parsers, the record heads and
        /// paging by key give an answer or an error, and never panic.
        #[test]
        fn no_page_a_server_sends_makes_the_parsers_panic(doc in arb_json(), junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let text = doc.to_string();
            let url = Url::parse("http://h/jsonapi/x?page%5Bnumber%5D=18446744073709551615&page%5Bsize%5D=2").unwrap();
            for body in [Bytes::from(text.clone()), Bytes::from(junk)] {
                let _ = parse_page(&body);
                if let Ok((mut page, _)) = parse_document(&body) {
                    for r in page.records() {
                        let _ = Head::parse(&r, true, crate::config::Resource::Datasets.spec().fields);
                        let _ = Head::parse_jsonapi(&r, &["project_id", "note_feed_id", "updated_at"]);
                    }
                    let mut keyed = Keyed::new("2026-12-01T00:00:00Z");
                    let _ = keyed.next(&url, &mut page, true);
                }
            }
            for r in [&doc, &doc["data"], &doc["results"]] {
                let text = r.to_string();
                let _ = Head::parse(&text, true, crate::config::Resource::Exports.spec().fields);
                let _ = crate::time::instant(r.as_str().unwrap_or_default());
            }
        }
    }
}
