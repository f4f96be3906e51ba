//! The simulated JSON:API service ("Dataset API", SPEC §8): projects, datasets,
//! entries, annotations, note feeds, note comments and project members. Records
//! are computed from (seed, kind, index) plus overrides, so a million entries
//! cost nothing until they change. `step` moves entries through workflow
//! steps, opens and resolves notes, adds comments, members and entries, and
//! deletes some. Served under `/jsonapi` on the simulator's address, with page
//! numbers, `count=true`, `sort`, the documented filters, and its fault knobs.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::world::mix;

/// The collections, in the order of their paths below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Projects,
    Datasets,
    Entries,
    Annotations,
    NoteFeeds,
    NoteComments,
    ProjectMembers,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Projects,
        Kind::Datasets,
        Kind::Entries,
        Kind::Annotations,
        Kind::NoteFeeds,
        Kind::NoteComments,
        Kind::ProjectMembers,
    ];

    pub fn path(self) -> &'static str {
        [
            "projects",
            "datasets",
            "entries",
            "annotations",
            "note_feeds",
            "note_comments",
            "project_members",
        ][self as usize]
    }

    pub fn from_path(p: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.path() == p)
    }

    /// The filters the reference documents for it, that the simulator applies.
    fn filters(self) -> &'static [&'static str] {
        crate::contract::jsonapi::filters(self.path())
    }
}

/// Sizes of the simulated service.
#[derive(Debug, Clone)]
pub struct JsonApiSizes {
    pub projects: u64,
    pub datasets: u64,
    pub entries: u64,
    pub annotations: u64,
    pub note_feeds: u64,
    pub note_comments: u64,
    pub project_members: u64,
}

impl Default for JsonApiSizes {
    fn default() -> Self {
        JsonApiSizes {
            projects: 2,
            datasets: 4,
            entries: 120,
            annotations: 60,
            note_feeds: 12,
            note_comments: 30,
            project_members: 6,
        }
    }
}

pub const ENTRY_STEPS: [&str; 4] = ["annotate", "review", "acceptance", "done"];
const ROLES: [&str; 3] = ["annotator", "reviewer", "manager"];

/// What changed about one record since it was computed.
#[derive(Debug, Clone, Default)]
pub struct Over {
    pub created: Option<u64>,
    pub updated: Option<u64>,
    pub status: Option<&'static str>,
    pub step: Option<&'static str>,
    pub text: Option<String>,
}

/// One collection: records `0..count`, computed, with overrides and deletions.
#[derive(Debug, Clone, Default)]
pub struct Coll {
    pub count: u64,
    pub over: HashMap<u64, Over>,
    pub deleted: BTreeSet<u64>,
}

impl Coll {
    pub fn present(&self, i: u64) -> bool {
        i < self.count && !self.deleted.contains(&i)
    }
}

/// The JSON:API service's fault knobs.
#[derive(Debug, Clone, Default)]
pub struct JsonApiFaults {
    /// `filter[updated_at__gte]` is ignored (every record is listed).
    pub ignore_since: bool,
    /// `filter[updated_at__gte]` is refused with a 400 error document.
    pub refuse_since: bool,
    /// Once: after page 1 of a listing of this collection, its first record is
    /// updated (it moves to the end of an `updated_at` order).
    pub touch_after_first_page: Option<Kind>,
    /// Once: after page 1 of a full listing of this collection, a record is
    /// created (the count changes mid-listing).
    pub create_after_first_page: Option<Kind>,
    /// Once: after page 1 of a full listing of this collection, the first
    /// record of that page is deleted (the count shrinks, and a record slides
    /// back onto page 1 unseen).
    pub delete_after_first_page: Option<Kind>,
    /// Pages hold at most this many records, whatever `page[size]` asks.
    pub max_page_size: Option<u64>,
}

pub struct JsonApi {
    seed: u64,
    /// The sizes it was made with: the relations between records use them.
    base: JsonApiSizes,
    pub colls: [Coll; 7],
    rng: StdRng,
}

/// 2025-01-01T00:00:00Z: the records a collection starts with were created
/// over the following year, evenly (a million entries 31 s apart).
const T0: u64 = 1_735_689_600;
const YEAR: u64 = 365 * 86_400;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(T0, |d| d.as_secs())
}

fn time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

impl JsonApi {
    pub fn new(seed: u64, sizes: &JsonApiSizes) -> JsonApi {
        let count = |n: u64| Coll {
            count: n,
            ..Coll::default()
        };
        JsonApi {
            seed,
            colls: [
                count(sizes.projects.max(1)),
                count(sizes.datasets.max(1)),
                count(sizes.entries),
                count(sizes.annotations),
                count(sizes.note_feeds),
                count(sizes.note_comments),
                count(sizes.project_members),
            ],
            base: JsonApiSizes {
                projects: sizes.projects.max(1),
                datasets: sizes.datasets.max(1),
                entries: sizes.entries.max(1),
                annotations: sizes.annotations.max(1),
                note_feeds: sizes.note_feeds.max(1),
                ..sizes.clone()
            },
            rng: StdRng::seed_from_u64(seed ^ 0x15_0A_91),
        }
    }

    pub fn coll(&self, k: Kind) -> &Coll {
        &self.colls[k as usize]
    }

    fn hash(&self, k: Kind, i: u64) -> u64 {
        mix(self.seed ^ mix((k as u64) << 40 ^ i))
    }

    /// The id of record `i`: UUID-shaped, its last part the index.
    pub fn id(&self, k: Kind, i: u64) -> String {
        let h = self.hash(k, i);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{i:012x}",
            h >> 32,
            k as u64,
            h & 0xfff,
            (h >> 12) & 0xfff,
        )
    }

    /// The index of an id, if it names a present record of `k`.
    pub fn index(&self, k: Kind, id: &str) -> Option<u64> {
        let i = u64::from_str_radix(id.get(id.len().checked_sub(12)?..)?, 16).ok()?;
        (self.coll(k).present(i) && self.id(k, i) == id).then_some(i)
    }

    fn over(&self, k: Kind, i: u64) -> Option<&Over> {
        let c = self.coll(k);
        if c.over.is_empty() {
            return None;
        }
        c.over.get(&i)
    }

    pub fn created(&self, k: Kind, i: u64) -> u64 {
        let spacing = (YEAR / self.base_count(k).max(1)).max(1);
        self.over(k, i)
            .and_then(|o| o.created)
            .unwrap_or(T0 + i * spacing)
    }

    fn base_count(&self, k: Kind) -> u64 {
        let b = &self.base;
        [
            b.projects,
            b.datasets,
            b.entries,
            b.annotations,
            b.note_feeds,
            b.note_comments,
            b.project_members,
        ][k as usize]
    }

    pub fn updated(&self, k: Kind, i: u64) -> u64 {
        self.over(k, i)
            .and_then(|o| o.updated)
            .unwrap_or_else(|| self.created(k, i))
    }

    fn dataset_of_entry(&self, e: u64) -> u64 {
        e % self.base.datasets
    }
    fn project_of_dataset(&self, d: u64) -> u64 {
        d % self.base.projects
    }
    fn entry_of_annotation(&self, a: u64) -> u64 {
        a % self.base.entries
    }
    fn entry_of_feed(&self, f: u64) -> u64 {
        (f * 7) % self.base.entries
    }
    fn feed_of_comment(&self, c: u64) -> u64 {
        c % self.base.note_feeds
    }

    /// The record's project, where it has one.
    fn project_of(&self, k: Kind, i: u64) -> Option<u64> {
        let of_entry = |e| self.project_of_dataset(self.dataset_of_entry(e));
        match k {
            Kind::Projects | Kind::NoteComments => None,
            Kind::Datasets => Some(self.project_of_dataset(i)),
            Kind::Entries => Some(of_entry(i)),
            Kind::Annotations => Some(of_entry(self.entry_of_annotation(i))),
            Kind::NoteFeeds => Some(of_entry(self.entry_of_feed(i))),
            Kind::ProjectMembers => Some(i % self.base.projects),
        }
    }

    /// The value of a documented filter field for record `i`.
    fn field(&self, k: Kind, i: u64, name: &str) -> Option<String> {
        let id = |k2: Kind, j: u64| Some(self.id(k2, j));
        match (k, name) {
            (_, "id") => id(k, i),
            (_, "project_id") => self.project_of(k, i).and_then(|p| id(Kind::Projects, p)),
            (Kind::Entries, "dataset_id") => id(Kind::Datasets, self.dataset_of_entry(i)),
            (Kind::Annotations, "dataset_id") => id(
                Kind::Datasets,
                self.dataset_of_entry(self.entry_of_annotation(i)),
            ),
            (Kind::NoteFeeds, "dataset_id") => {
                id(Kind::Datasets, self.dataset_of_entry(self.entry_of_feed(i)))
            }
            (Kind::Annotations, "entry_id") => id(Kind::Entries, self.entry_of_annotation(i)),
            (Kind::NoteFeeds, "entry_id") => id(Kind::Entries, self.entry_of_feed(i)),
            (Kind::NoteComments, "note_feed_id") => id(Kind::NoteFeeds, self.feed_of_comment(i)),
            _ => None,
        }
    }

    pub fn entry_state(&self, i: u64) -> (&'static str, &'static str) {
        let h = self.hash(Kind::Entries, i);
        let o = self.over(Kind::Entries, i);
        let step = o
            .and_then(|o| o.step)
            .unwrap_or(ENTRY_STEPS[(h % 4) as usize]);
        let base_status = match step {
            "done" => "completed",
            _ if h >> 8 & 1 == 0 => "pending",
            _ => "in_progress",
        };
        (o.and_then(|o| o.status).unwrap_or(base_status), step)
    }

    fn feed_status(&self, i: u64) -> &'static str {
        let base = if self.hash(Kind::NoteFeeds, i).is_multiple_of(2) {
            "pending"
        } else {
            "resolved"
        };
        self.over(Kind::NoteFeeds, i)
            .and_then(|o| o.status)
            .unwrap_or(base)
    }

    /// Record `i` of `k` as a JSON:API resource object, written onto `out`.
    pub fn write(&self, k: Kind, i: u64, out: &mut Vec<u8>) {
        let h = self.hash(k, i);
        let o = self.over(k, i);
        let text = |default: String| o.and_then(|o| o.text.clone()).unwrap_or(default);
        let _ = write!(
            out,
            r#"{{"type":"{}","id":"{}","attributes":{{"#,
            k.path(),
            self.id(k, i)
        );
        let esc = |s: &str| serde_json::to_string(s).expect("a string serializes");
        let id = |k2: Kind, j: u64| self.id(k2, j);
        match k {
            Kind::Projects => {
                let _ = write!(
                    out,
                    r#""name":"Project {i}","description":{},"created_by_email":"owner{}@example.com","organization_id":"org-1","#,
                    esc(&text(format!("Annotation project number {i}"))),
                    h % 5
                );
            }
            Kind::Datasets => {
                let _ = write!(
                    out,
                    r#""project_id":"{}","name":"Dataset {i}","modality":"{}","status":"{}","progress":{},"labels":["car","pedestrian"],"#,
                    id(Kind::Projects, self.project_of_dataset(i)),
                    ["image", "video", "lidar"][(h % 3) as usize],
                    o.and_then(|o| o.status).unwrap_or("active"),
                    h % 101
                );
            }
            Kind::Entries => {
                let (status, step) = self.entry_state(i);
                let d = self.dataset_of_entry(i);
                let _ = write!(
                    out,
                    r#""project_id":"{}","dataset_id":"{}","priority":{},"wf_step":"{step}","status":"{status}","job_id":"job-{}","resource":"https://storage.invalid/entries/{i:08}.jpg","assigned_to_id":{},"#,
                    id(Kind::Projects, self.project_of_dataset(d)),
                    id(Kind::Datasets, d),
                    h % 3,
                    h % 50,
                    if step == "done" {
                        "null".to_string()
                    } else {
                        format!("\"acct-{}\"", h % 9)
                    }
                );
            }
            Kind::Annotations => {
                let e = self.entry_of_annotation(i);
                let d = self.dataset_of_entry(e);
                let _ = write!(
                    out,
                    r#""project_id":"{}","dataset_id":"{}","entry_id":"{}","annotation":{{"type":"bbox","label":"car","box":[{},{},{},{}]}},"created_by_email":"annotator{}@example.com","#,
                    id(Kind::Projects, self.project_of_dataset(d)),
                    id(Kind::Datasets, d),
                    id(Kind::Entries, e),
                    h % 640,
                    (h >> 10) % 480,
                    20 + (h >> 20) % 100,
                    20 + (h >> 30) % 100,
                    h % 7
                );
            }
            Kind::NoteFeeds => {
                let e = self.entry_of_feed(i);
                let d = self.dataset_of_entry(e);
                let on_annotation = i.is_multiple_of(3) && e < self.coll(Kind::Annotations).count;
                let _ = write!(
                    out,
                    r#""project_id":"{}","dataset_id":"{}","entry_id":"{}","annotation_id":{},"anchor_type":"{}","position":{{"x":{},"y":{}}},"status":"{}","content_md":{},"created_by_email":"reviewer{}@example.com","#,
                    id(Kind::Projects, self.project_of_dataset(d)),
                    id(Kind::Datasets, d),
                    id(Kind::Entries, e),
                    if on_annotation {
                        format!("\"{}\"", id(Kind::Annotations, e))
                    } else {
                        "null".into()
                    },
                    if on_annotation { "annotation" } else { "entry" },
                    h % 640,
                    (h >> 10) % 480,
                    self.feed_status(i),
                    esc(&text(format!(
                        "Label {i} looks off, please check\nThe box is {} px too wide.",
                        h % 30
                    ))),
                    h % 4
                );
            }
            Kind::NoteComments => {
                let _ = write!(
                    out,
                    r#""content_md":{},"created_by_email":"member{}@example.com","edited_at":null,"#,
                    esc(&text(format!("Comment {i}: fixed in the latest pass"))),
                    h % 6
                );
            }
            Kind::ProjectMembers => {
                let _ = write!(
                    out,
                    r#""project_id":"{}","account_id":"acct-{i}","name":"Member {i}","email":"member{i}@example.com","role":"{}","disabled_at":null,"#,
                    id(Kind::Projects, i % self.base.projects),
                    ROLES[(h % 3) as usize]
                );
            }
        }
        let _ = write!(
            out,
            r#""created_at":"{}","updated_at":"{}"}}"#,
            time(self.created(k, i)),
            time(self.updated(k, i))
        );
        if k == Kind::NoteComments {
            // the comment names its note feed only as a relationship
            let _ = write!(
                out,
                r#","relationships":{{"note_feed":{{"data":{{"type":"note_feeds","id":"{}"}}}}}}"#,
                id(Kind::NoteFeeds, self.feed_of_comment(i))
            );
        }
        out.push(b'}');
    }

    pub fn json(&self, k: Kind, i: u64) -> Value {
        let mut out = Vec::new();
        self.write(k, i, &mut out);
        serde_json::from_slice(&out).expect("the simulator writes valid JSON")
    }

    /// Every present record of `k`, by id.
    pub fn all(&self, k: Kind) -> HashMap<String, Value> {
        (0..self.coll(k).count)
            .filter(|&i| self.coll(k).present(i))
            .map(|i| (self.id(k, i), self.json(k, i)))
            .collect()
    }

    /// The page a listing asks for, and the count of what matches: the
    /// indices in order (`created_at,id`, or `updated_at,id`).
    pub fn list(&self, k: Kind, q: &List) -> Result<(Vec<u64>, u64), String> {
        // `>=` a time with a fraction: from the next whole second
        let since = q.since.map(|n| (n.max(0) as u64).div_ceil(1_000_000_000));
        for (name, _) in &q.filters {
            if !k.filters().contains(&name.as_str()) {
                return Err(format!("filter[{name}] is not a filter of {}", k.path()));
            }
        }
        let c = self.coll(k);
        let filters: Vec<(&str, &str)> = q
            .filters
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let matches = |i: u64| {
            since.is_none_or(|s| self.updated(k, i) >= s)
                && filters
                    .iter()
                    .all(|(n, v)| self.field(k, i, n).as_deref() == Some(*v))
        };
        let offset = (q.number.max(1) - 1) * q.size;
        if q.by_updated {
            let mut all: Vec<(u64, u64)> = (0..c.count)
                .filter(|&i| c.present(i) && matches(i))
                .map(|i| (self.updated(k, i), i))
                .collect();
            all.sort_unstable();
            let page = all
                .iter()
                .skip(offset as usize)
                .take(q.size as usize)
                .map(|(_, i)| *i)
                .collect();
            return Ok((page, all.len() as u64));
        }
        if filters.is_empty() && since.is_none() {
            // the whole collection: the page starts where `offset` present records are before it
            let count = c.count - c.deleted.len() as u64;
            let mut start = offset;
            loop {
                let before = c.deleted.range(..start).count() as u64;
                if start == offset + before {
                    break;
                }
                start = offset + before;
            }
            let page = (start..c.count)
                .filter(|&i| c.present(i))
                .take(q.size as usize)
                .collect();
            return Ok((page, count));
        }
        let (mut count, mut page) = (0u64, Vec::new());
        for i in (0..c.count).filter(|&i| c.present(i) && matches(i)) {
            if count >= offset && page.len() < q.size as usize {
                page.push(i);
            }
            count += 1;
        }
        Ok((page, count))
    }

    fn pick(&mut self, k: Kind) -> Option<u64> {
        let n = self.coll(k).count;
        (n > 0)
            .then(|| self.rng.random_range(0..n))
            .filter(|&i| self.coll(k).present(i))
    }

    fn touch(&mut self, k: Kind, i: u64, now: u64) -> &mut Over {
        let o = self.colls[k as usize].over.entry(i).or_default();
        o.updated = Some(now);
        o
    }

    /// Moves an entry one workflow step on (pending → in_progress, then the next step).
    pub fn advance_entry(&mut self, i: u64, now: u64) {
        let (status, step) = self.entry_state(i);
        let (status, step) = match (status, step) {
            (_, "done") => return,
            ("pending", s) => ("in_progress", s),
            (_, s) => {
                let next = ENTRY_STEPS[ENTRY_STEPS.iter().position(|x| *x == s).unwrap_or(0) + 1];
                (
                    if next == "done" {
                        "completed"
                    } else {
                        "pending"
                    },
                    next,
                )
            }
        };
        let o = self.touch(Kind::Entries, i, now);
        o.status = Some(status);
        o.step = Some(step);
    }

    /// A new record of `k`, created now.
    pub fn create(&mut self, k: Kind, now: u64) -> u64 {
        let i = self.colls[k as usize].count;
        self.colls[k as usize].count += 1;
        let o = self.touch(k, i, now);
        o.created = Some(now);
        if k == Kind::NoteFeeds {
            o.status = Some("pending");
        }
        i
    }

    pub fn delete(&mut self, k: Kind, i: u64) {
        self.colls[k as usize].deleted.insert(i);
    }

    /// Resolves a note feed, or edits a record's text.
    pub fn set_status(&mut self, k: Kind, i: u64, status: &'static str, now: u64) {
        self.touch(k, i, now).status = Some(status);
    }

    pub fn edit(&mut self, k: Kind, i: u64, text: &str, now: u64) {
        self.touch(k, i, now).text = Some(text.to_string());
    }

    /// One tick: entries move on, notes are opened and resolved, comments
    /// added, members join and leave, records are deleted now and then.
    pub fn step(&mut self) {
        let now = now_secs();
        for _ in 0..3 {
            if let Some(e) = self.pick(Kind::Entries) {
                self.advance_entry(e, now);
            }
        }
        if self.rng.random_bool(0.4) {
            self.create(Kind::NoteFeeds, now);
        }
        if let Some(f) = self.pick(Kind::NoteFeeds)
            && self.feed_status(f) == "pending"
        {
            self.set_status(Kind::NoteFeeds, f, "resolved", now);
        }
        for _ in 0..2 {
            if self.rng.random_bool(0.6) {
                self.create(Kind::NoteComments, now);
            }
        }
        if self.rng.random_bool(0.2) {
            self.create(Kind::Entries, now);
        }
        if self.rng.random_bool(0.1) {
            self.create(Kind::ProjectMembers, now);
        }
        if self.rng.random_bool(0.05)
            && let Some(m) = self.pick(Kind::ProjectMembers)
        {
            self.delete(Kind::ProjectMembers, m);
        }
        // deletions: an annotation, now and then an entry or a note feed (which
        // only the count probe of an incremental listing shows)
        for (kind, p) in [
            (Kind::Annotations, 0.05),
            (Kind::Entries, 0.03),
            (Kind::NoteFeeds, 0.03),
        ] {
            if self.rng.random_bool(p)
                && let Some(i) = self.pick(kind)
            {
                self.delete(kind, i);
            }
        }
        if self.rng.random_bool(0.05)
            && let Some(p) = self.pick(Kind::Projects)
        {
            self.edit(Kind::Projects, p, &format!("Renamed at {}", time(now)), now);
        }
    }
}

pub use crate::contract::jsonapi::{List, error_doc};

/// Now, in the simulator's seconds.
pub fn now() -> u64 {
    now_secs()
}
