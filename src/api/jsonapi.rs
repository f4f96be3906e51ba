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

/// An RFC 3339 time as nanoseconds since 1970, whatever its precision and
/// offset (`2026-12-01T10:00:00Z`, `…00.123456+01:00`), so times written in
/// different forms compare correctly. None if it is not one.
pub fn instant(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() {
            return None;
        }
        let mut nine = digits.chars().take(9).collect::<String>();
        while nine.len() < 9 {
            nine.push('0');
        }
        nanos = nine.parse().ok()?;
    }
    let offset_secs = match &s[i..] {
        "Z" | "z" | "" => 0,
        off if off.len() == 6 && (off.starts_with('+') || off.starts_with('-')) => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let sign = if off.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // days from civil (Howard Hinnant's algorithm)
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
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
    fn times_in_any_form_compare() {
        let z = instant("2026-12-01T10:00:00Z").unwrap();
        assert_eq!(instant("2026-12-01T11:00:00+01:00"), Some(z));
        assert_eq!(instant("2026-12-01T10:00:00.000000Z"), Some(z));
        assert_eq!(instant("2026-12-01 10:00:00"), Some(z));
        assert_eq!(instant("2026-12-01T10:00:00.5Z"), Some(z + 500_000_000));
        assert!(instant("2026-12-01T09:59:59.999999Z").unwrap() < z);
        assert_eq!(instant("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-12-01T10:00:00+1",
        ] {
            assert_eq!(instant(bad), None, "{bad}");
        }
    }

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
