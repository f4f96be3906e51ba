//! The v1 REST endpoints the mirror reads, as URLs. Listing URLs carry `limit`
//! (the configured page size); `next` links are followed as the server gives them.

use reqwest::Url;

use super::client::Client;

fn list(c: &Client, segments: &[&str], extra: &[(&str, &str)]) -> Url {
    let limit = c.page_size().to_string();
    let mut query = extra.to_vec();
    query.push(("limit", &limit));
    c.url(segments, &query)
}

/// User-owned datasets (page style).
pub fn datasets_of_user(c: &Client, owner: &str) -> Url {
    list(c, &["datasets", owner, "list"], &[])
}

/// Organization-owned datasets (page style).
pub fn datasets_of_org(c: &Client, org: &str) -> Url {
    list(c, &["organizations", org, "datasets"], &[])
}

/// Sequences across several datasets of one owner in one listing (page style).
pub fn sequences_across(c: &Client, owner: &str, slugs: &[String]) -> Url {
    list(
        c,
        &["datasets", owner, "sequences"],
        &[("dataset__slug__in", &slugs.join(","))],
    )
}

/// Sequences of one dataset (cursor style).
pub fn sequences_of(c: &Client, owner: &str, slug: &str) -> Url {
    list(c, &["datasets", owner, slug, "sequences"], &[])
}

pub fn sequence(c: &Client, owner: &str, slug: &str, uid: &str) -> Url {
    c.url(&["datasets", owner, slug, "sequences", uid], &[])
}

/// Items of one dataset (cursor style).
pub fn items_of(c: &Client, owner: &str, slug: &str) -> Url {
    list(c, &["datasets", owner, slug, "items"], &[])
}

pub fn item(c: &Client, owner: &str, slug: &str, uid: &str) -> Url {
    c.url(&["datasets", owner, slug, "items", uid], &[])
}

/// There is no documented GET for one dataset; its item listing answers 404 when
/// the owner or dataset does not exist, which is what a deletion check needs.
pub fn dataset_probe(c: &Client, owner: &str, slug: &str) -> Url {
    c.url(&["datasets", owner, slug, "items"], &[("limit", "1")])
}

/// Slices of a user or organization (page style).
pub fn slices_of(c: &Client, owner: &str) -> Url {
    list(c, &["slices", owner, "list"], &[])
}

pub fn slice(c: &Client, owner: &str, slug: &str) -> Url {
    c.url(&["slices", owner, slug], &[])
}

/// Items of one slice (cursor style).
pub fn slice_items(c: &Client, owner: &str, slug: &str) -> Url {
    list(c, &["slices", owner, slug, "items", "list"], &[])
}

pub fn exports(c: &Client) -> Url {
    list(c, &["exports"], &[])
}

pub fn export(c: &Client, uid: &str) -> Url {
    c.url(&["exports", uid], &[])
}
