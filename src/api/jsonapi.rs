//! The JSON:API service's endpoints as URLs, its documents, and its times
//! (SPEC §8). The client, its pacing, retries and key discipline are the v1
//! ones ([`Client`]); only the shape of a listing differs.

use reqwest::Url;

use super::client::Client;

/// `filter[updated_at__gte]`: where an incremental listing starts.
pub const SINCE: &str = "filter[updated_at__gte]";
const PAGE_NUMBER: &str = "page[number]";

fn list(c: &Client, path: &str, project: Option<&str>, extra: &[(&str, &str)]) -> Url {
    let size = c.page_size().to_string();
    let mut query: Vec<(&str, &str)> = extra.to_vec();
    query.extend([(PAGE_NUMBER, "1"), ("page[size]", &size), ("count", "true")]);
    if let Some(p) = project {
        query.push(("filter[project_id]", p));
    }
    c.url_exact(&[path], &query)
}

/// A full listing, oldest first, so records created during it land after it.
pub fn full(c: &Client, path: &str, project: Option<&str>) -> Url {
    list(c, path, project, &[("sort", "created_at,id")])
}

/// An incremental listing of what changed since `bound`, by `updated_at`.
pub fn since(c: &Client, path: &str, project: Option<&str>, bound: &str) -> Url {
    list(
        c,
        path,
        project,
        &[(SINCE, bound), ("sort", "updated_at,id")],
    )
}

/// One record and the collection's size: the count probe.
pub fn probe(c: &Client, path: &str, project: Option<&str>) -> Url {
    let mut query = vec![(PAGE_NUMBER, "1"), ("page[size]", "1"), ("count", "true")];
    if let Some(p) = project {
        query.push(("filter[project_id]", p));
    }
    c.url_exact(&[path], &query)
}

/// `GET /{collection}/{id}`: the deletion check.
pub fn show(c: &Client, path: &str, id: &str) -> Url {
    c.url_exact(&[path, id], &[])
}

/// `url` with `key` set to `value` (added if missing), the other pairs kept in order.
pub fn with_param(url: &Url, key: &str, value: &str) -> Url {
    let mut pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    match pairs.iter_mut().find(|(k, _)| k == key) {
        Some(pair) => pair.1 = value.to_string(),
        None => pairs.push((key.to_string(), value.to_string())),
    }
    let mut out = url.clone();
    out.query_pairs_mut().clear().extend_pairs(pairs);
    out
}

/// The page number a listing URL asks for.
pub fn page_number(url: &Url) -> u64 {
    url.query_pairs()
        .find(|(k, _)| k == PAGE_NUMBER)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(1)
}

pub fn with_page(url: &Url, n: u64) -> Url {
    with_param(url, PAGE_NUMBER, &n.to_string())
}

/// A JSON:API error document's messages (`title: detail`, joined), if it is one.
pub fn error_text(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let errors = v.get("errors")?.as_array()?;
    let texts: Vec<String> = errors
        .iter()
        .filter_map(|e| {
            let field = |k: &str| e.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
            match (field("title"), field("detail")) {
                (Some(t), Some(d)) => Some(format!("{t}: {d}")),
                (Some(t), None) => Some(t.to_string()),
                (None, Some(d)) => Some(d.to_string()),
                (None, None) => None,
            }
        })
        .collect();
    (!texts.is_empty()).then(|| texts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_documents_read_as_text() {
        let doc = br#"{"errors":[{"status":"400","title":"Invalid filter","detail":"updated_at__gte is not allowed"}]}"#;
        assert_eq!(
            error_text(doc).as_deref(),
            Some("Invalid filter: updated_at__gte is not allowed")
        );
        assert_eq!(error_text(br#"{"detail":"x"}"#), None);
    }

    #[test]
    fn params_are_replaced_in_place() {
        let u = Url::parse("http://h/x?page%5Bnumber%5D=1&page%5Bsize%5D=5&sort=a").unwrap();
        let u2 = with_page(&u, 3);
        assert_eq!(page_number(&u2), 3);
        assert_eq!(
            u2.query(),
            Some("page%5Bnumber%5D=3&page%5Bsize%5D=5&sort=a")
        );
    }
}
