//! The outbox: events appended in the transaction of the change that caused them,
//! and read back in detection order.

use super::sqlite::events::*;
use crate::config::Resource;
use serde_json::{Value, json};

/// One change, as the diff saw it.
pub struct NewEvent<'a> {
    pub resource: Resource,
    /// `created`, `updated`, `status_changed`, `deleted`, …
    pub action: &'a str,
    pub uid: &'a str,
    pub owner: Option<&'a str>,
    pub dataset_slug: Option<&'a str>,
    pub old_status: Option<&'a str>,
    pub new_status: Option<&'a str>,
    pub object: &'a Value,
    /// For `export.downloaded` / `export.download_failed`: path, bytes, sha256 or error.
    pub download: Option<Value>,
    /// The (owner, dataset slug) a record had before it moved to this one.
    pub moved_from: Option<(Option<&'a str>, Option<&'a str>)>,
    /// (old, new) workflow step of an entry (`data.old_wf_step`, `data.new_wf_step`).
    pub steps: Option<(Option<&'a str>, Option<&'a str>)>,
}

impl<'a> NewEvent<'a> {
    /// A record's `deleted` event: its scope and last status, as stored.
    pub fn deleted(
        resource: Resource,
        uid: &'a str,
        scope: (Option<&'a str>, Option<&'a str>),
        old_status: Option<&'a str>,
        object: &'a Value,
    ) -> NewEvent<'a> {
        NewEvent {
            resource,
            action: "deleted",
            uid,
            owner: scope.0,
            dataset_slug: scope.1,
            old_status,
            new_status: None,
            object,
            download: None,
            moved_from: None,
            steps: None,
        }
    }

    /// `export.downloaded` / `export.download_failed`, with `detail` (path,
    /// bytes, sha256 or error) and the export as stored.
    pub fn download(
        uid: &'a str,
        action: &'a str,
        status: Option<&'a str>,
        object: &'a Value,
        detail: Value,
    ) -> NewEvent<'a> {
        NewEvent {
            resource: Resource::Exports,
            action,
            uid,
            owner: None,
            dataset_slug: None,
            old_status: None,
            new_status: status,
            object,
            download: Some(detail),
            moved_from: None,
            steps: None,
        }
    }
}

/// An event as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub seq: i64,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub uid: String,
    pub owner: Option<String>,
    pub dataset_slug: Option<String>,
    pub old_status: Option<String>,
    pub new_status: Option<String>,
    pub created_at: String,
    /// The SPEC §4 document, as delivered to sinks.
    #[serde(skip)]
    pub payload: String,
}

/// An event as both backends store it: (public id `evt_` + ULID, type, the
/// SPEC §4 document).
pub fn document(ev: &NewEvent, now: &str) -> (String, String, Value) {
    let id = format!("evt_{}", ulid::Ulid::new());
    let kind = format!("{}.{}", ev.resource.singular(), ev.action);
    let mut payload = json!({
        "id": id,
        "type": kind,
        "timestamp": now,
        "data": {
            "resource": ev.resource.singular(),
            "uid": ev.uid,
            "owner": ev.owner,
            "dataset_slug": ev.dataset_slug,
            "old_status": ev.old_status,
            "new_status": ev.new_status,
            "object": ev.object,
        }
    });
    if let Some(d) = &ev.download {
        payload["data"]["download"] = d.clone();
    }
    without_signed_queries(&mut payload["data"]);
    if let Some((owner, slug)) = ev.moved_from {
        payload["data"]["old_owner"] = json!(owner);
        payload["data"]["old_dataset_slug"] = json!(slug);
    }
    if let Some((old, new)) = ev.steps {
        payload["data"]["old_wf_step"] = json!(old);
        payload["data"]["new_wf_step"] = json!(new);
    }
    (id, kind, payload)
}

/// Cuts the query from every http(s) link in `v` (SPEC §6): a storage link's
/// query is its signature, a credential that must not reach a log, a webhook
/// or Slack. The mirror's `raw` keeps the link whole for the downloader.
fn without_signed_queries(v: &mut Value) {
    match v {
        Value::String(s) if s.starts_with("http") && s.contains('?') => {
            if let Ok(mut url) = url::Url::parse(s)
                && matches!(url.scheme(), "http" | "https")
            {
                url.set_query(None);
                url.set_fragment(None);
                *s = url.to_string();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(without_signed_queries),
        Value::Object(fields) => fields.values_mut().for_each(without_signed_queries),
        _ => {}
    }
}

impl super::Store {
    /// Up to `limit` events after `after` whose type matches `glob`.
    pub async fn events_after(
        &self,
        after: i64,
        glob: &str,
        limit: u32,
    ) -> super::Result<Vec<Event>> {
        if let Some(pg) = self.pg() {
            return pg.events_after(after, glob, limit).await;
        }
        let g = glob.to_string();
        Ok(self.read(move |c| list(c, after, &g, limit)).await?)
    }

    /// The sequence number `--since` names (an event id or a number).
    pub async fn seq_of(&self, since: &str) -> super::Result<Option<i64>> {
        if let Some(pg) = self.pg() {
            return pg.seq_of(since).await;
        }
        let s = since.to_string();
        Ok(self.read(move |c| seq_of(c, &s)).await?)
    }
}

/// A human line for an event, e.g. `sequence johndoe/batch-001/seq_017: labeling_2d → customer_review`
/// (the record's key, slug or name when it has one, else its uid).
pub fn describe(e: &Event) -> String {
    let payload: Value = serde_json::from_str(&e.payload).unwrap_or(Value::Null);
    let object = &payload["data"]["object"];
    if object.get("attributes").is_some() {
        return describe_jsonapi(e, &payload);
    }
    let label = ["key", "slug", "name"]
        .iter()
        .find_map(|k| object.get(k).and_then(Value::as_str))
        .unwrap_or(&e.uid);
    let place: String = [e.owner.as_deref(), e.dataset_slug.as_deref()]
        .into_iter()
        .flatten()
        .map(|p| format!("{p}/"))
        .collect();
    let (resource, action) = e.kind.split_once('.').unwrap_or((&e.kind, ""));
    let what = match action {
        "status_changed" => format!(
            "{} → {}",
            e.old_status.as_deref().unwrap_or("(none)"),
            e.new_status.as_deref().unwrap_or("(none)")
        ),
        "downloaded" => format!(
            "downloaded to {}",
            payload["data"]["download"]["path"].as_str().unwrap_or("?")
        ),
        "download_failed" => format!(
            "download failed: {}",
            payload["data"]["download"]["error"].as_str().unwrap_or("?")
        ),
        other => other.replace('_', " "),
    };
    format!("{resource} {place}{label}: {what}")
}

/// A JSON:API event in words: what a reviewer did to which entry, and the
/// first line of what they wrote.
fn describe_jsonapi(e: &Event, payload: &Value) -> String {
    let data = &payload["data"];
    let a = &data["object"]["attributes"];
    let attr = |k: &str| a.get(k).and_then(Value::as_str);
    let short = |id: Option<&str>| -> String {
        let id = id.unwrap_or("?");
        id.get(..8).unwrap_or(id).to_string()
    };
    let first_line = |k: &str| {
        let text = attr(k).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        match line.chars().count() > 120 {
            true => format!("{}…", line.chars().take(120).collect::<String>()),
            false => line.to_string(),
        }
    };
    let (resource, action) = e.kind.split_once('.').unwrap_or((&e.kind, ""));
    let status_move = || {
        format!(
            "{} → {}",
            e.old_status.as_deref().unwrap_or("(none)"),
            e.new_status.as_deref().unwrap_or("(none)")
        )
    };
    match (resource, action) {
        ("note_feed", _) => {
            let anchor = match attr("anchor_type") {
                Some("annotation") => format!(
                    "annotation {} of entry {}",
                    short(attr("annotation_id")),
                    short(attr("entry_id"))
                ),
                _ => format!("entry {}", short(attr("entry_id"))),
            };
            let state = match action {
                "status_changed" => status_move(),
                "created" => attr("status").unwrap_or("opened").to_string(),
                other => other.replace('_', " "),
            };
            format!("note on {anchor}: {state} — {}", first_line("content_md"))
        }
        ("note_comment", _) => {
            let feed = data["object"]["relationships"]["note_feed"]["data"]["id"]
                .as_str()
                .or(attr("note_feed_id"));
            let what = match action {
                "created" => String::new(),
                other => format!(" {}", other.replace('_', " ")),
            };
            format!(
                "comment on note {}{what} — {}",
                short(feed),
                first_line("content_md")
            )
        }
        ("entry", "status_changed") => {
            let step = |k: &str| data[k].as_str().unwrap_or("(none)").to_string();
            format!(
                "entry {} in dataset {}: {} ({}) → {} ({})",
                short(Some(&e.uid)),
                short(attr("dataset_id")),
                step("old_wf_step"),
                e.old_status.as_deref().unwrap_or("(none)"),
                step("new_wf_step"),
                e.new_status.as_deref().unwrap_or("(none)")
            )
        }
        ("project_member", _) => format!(
            "{} ({}) in project {}: {}",
            attr("email").or(attr("name")).unwrap_or(&e.uid),
            attr("role").unwrap_or("member"),
            short(attr("project_id")),
            match action {
                "created" => "added".to_string(),
                "deleted" => "removed".to_string(),
                other => other.replace('_', " "),
            }
        ),
        _ => {
            let label = attr("name").map_or_else(|| short(Some(&e.uid)), str::to_owned);
            let what = match action {
                "status_changed" => status_move(),
                other => other.replace('_', " "),
            };
            format!("{resource} {label}: {what}")
        }
    }
}
