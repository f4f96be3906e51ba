//! The simulated account: datasets, sequences, items, slices and exports, made
//! deterministically from a seed and changed by `step` (workflow moves, exports
//! finishing, records appearing and disappearing). Items are computed on demand
//! from (seed, dataset, index) plus overrides, so a million of them cost nothing.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Every documented sequence status, in workflow order (`customer_review` is used
/// by the cross-dataset endpoint's examples).
pub const SEQUENCE_FLOW: [&str; 12] = [
    "unattempted",
    "pending",
    "ready_for_annotation",
    "labeling_4d",
    "review_4d",
    "ready_for_2d",
    "labeling_2d",
    "review_2d",
    "final_review",
    "customer_review",
    "customer_approved",
    "completed",
];
pub const ITEM_FLOW: [&str; 7] = [
    "unattempted",
    "pending",
    "ready_for_annotation",
    "in_progress",
    "completed",
    "rework_required",
    "customer_approved",
];
const DATA_TYPES: [&str; 6] = ["image", "video", "lidar", "mcap", "splat", "image_3d"];

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub api_key: String,
    pub owners: Vec<String>,
    pub organizations: Vec<String>,
    pub datasets_per_owner: usize,
    pub items_per_dataset: u64,
    pub sequences_per_dataset: usize,
    pub slices_per_owner: usize,
    pub exports: usize,
    pub default_page_size: usize,
    pub max_page_size: usize,
    /// Size of each export archive on the storage address.
    pub archive_bytes: u64,
    /// The JSON:API service's collections.
    pub jsonapi: super::jsonapi::JsonApiSizes,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            api_key: "demo-key".into(),
            owners: vec!["johndoe".into()],
            organizations: vec!["acme-ai".into()],
            datasets_per_owner: 3,
            items_per_dataset: 200,
            sequences_per_dataset: 8,
            slices_per_owner: 2,
            exports: 3,
            default_page_size: 100,
            max_page_size: 1000,
            archive_bytes: 256 * 1024,
            jsonapi: Default::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub uid: String,
    pub owner: String,
    pub is_org: bool,
    pub slug: String,
    pub name: String,
    pub data_type: &'static str,
    pub is_sequence: bool,
    pub status: &'static str,
    pub order: i64,
    pub deleted: bool,
}

#[derive(Debug, Clone)]
pub struct Sequence {
    pub uid: String,
    pub dataset: usize,
    pub key: String,
    pub status: String,
    pub frames: u32,
    pub order: i64,
    pub deleted: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ItemOverride {
    pub status: Option<String>,
    pub annotations: Option<u32>,
    pub deleted: bool,
}

/// A dataset's items: indices `0..count`, computed, with overrides.
#[derive(Debug, Clone, Default)]
pub struct ItemSpace {
    pub count: u64,
    pub overrides: HashMap<u64, ItemOverride>,
    pub deleted: u64,
    /// A fault: the listing ends after this many items (`next` null), though the
    /// rest are still there to GET, as a broken server might answer.
    pub listed_at_most: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Slice {
    pub uid: String,
    pub owner: String,
    pub slug: String,
    pub name: String,
    pub status: &'static str,
    pub dataset: usize,
    /// Member item indices of the dataset: `0..members`.
    pub members: u64,
    pub order: i64,
    pub deleted: bool,
}

#[derive(Debug, Clone)]
pub struct Export {
    pub uid: String,
    pub name: String,
    pub format: &'static str,
    pub status: String,
    pub total: Option<u64>,
    pub exported: Option<u64>,
    pub datasets: Vec<String>,
    pub created_at: String,
    pub deleted: bool,
    /// Bumped when the download link is re-issued; older links stop working.
    pub link_version: u64,
    /// `exported`, but the API does not show its `download_url` yet (a test knob:
    /// a real API may fill the link in a moment after the status).
    pub link_hidden: bool,
}

pub struct World {
    pub seed: u64,
    pub datasets: Vec<Dataset>,
    pub sequences: Vec<Sequence>,
    pub items: Vec<ItemSpace>,
    pub slices: Vec<Slice>,
    pub exports: Vec<Export>,
    /// Base of export download links (the storage address).
    pub storage_base: String,
    /// The JSON:API service's records.
    pub jsonapi: super::jsonapi::JsonApi,
    rng: StdRng,
    serial: u64,
}

/// splitmix64: a cheap, well-mixed hash for computed ids.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A UUID-shaped id from two hashes.
fn uuid(a: u64, b: u64) -> String {
    let mut out = Vec::with_capacity(36);
    write_uuid(&mut out, a, b);
    String::from_utf8(out).expect("hex digits and dashes")
}

fn timestamp(offset_secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_735_689_600 + offset_secs);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Writes the items of one dataset as JSON, the hot path of big listings: the
/// dataset's strings are escaped once, the rest of an item is digits and hex.
pub struct ItemWriter {
    /// `<slug>/` as JSON string content.
    slug_path: String,
    /// From `,"dataset":` to `"priority":`.
    tail: String,
}

impl ItemWriter {
    pub fn new(w: &World, ds: usize) -> ItemWriter {
        let d = &w.datasets[ds];
        let esc = |s: &str| serde_json::to_string(s).expect("a string serializes");
        let slug = esc(&d.slug);
        ItemWriter {
            slug_path: format!("{}/", &slug[1..slug.len() - 1]),
            tail: format!(
                ",\"dataset\":{},\"dataset_owner_name\":{},\"dataset_slug\":{slug},\"priority\":",
                esc(&d.uid),
                esc(&d.owner)
            ),
        }
    }

    /// Item `i`, in the field order of the API's item listing.
    pub fn write(&self, w: &World, ds: usize, i: u64, out: &mut Vec<u8>) {
        let h = w.item_hash(ds, i);
        let space = &w.items[ds];
        let o = (!space.overrides.is_empty())
            .then(|| space.overrides.get(&i))
            .flatten();
        let mut key = *b"frame_0000000.jpg";
        let mut n = itoa::Buffer::new();
        let digits = n.format(i).as_bytes();
        if digits.len() <= 7 {
            key[13 - digits.len()..13].copy_from_slice(digits);
        }
        let key: &[u8] = if digits.len() <= 7 {
            &key
        } else {
            &[b"frame_", digits, b".jpg"].concat()
        };
        out.extend_from_slice(b"{\"uid\":\"");
        write_uuid(out, h, mix(h));
        out.extend_from_slice(b"\",\"key\":\"");
        out.extend_from_slice(key);
        out.extend_from_slice(b"\",\"status\":");
        match o.and_then(|o| o.status.as_deref()) {
            Some(status) => serde_json::to_writer(&mut *out, status).expect("writing to a Vec"),
            None => {
                out.push(b'"');
                out.extend_from_slice(ITEM_FLOW[(h % ITEM_FLOW.len() as u64) as usize].as_bytes());
                out.push(b'"');
            }
        }
        for (field, dir) in [("data_url", ""), ("thumbnail_url", "thumbnails/")] {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(field.as_bytes());
            out.extend_from_slice(b"\":\"https://storage.invalid/datasets/");
            out.extend_from_slice(self.slug_path.as_bytes());
            out.extend_from_slice(dir.as_bytes());
            out.extend_from_slice(key);
            out.push(b'"');
        }
        out.extend_from_slice(
            b",\"metadata\":{\"width\":1920,\"height\":1080,\"format\":\"jpeg\"},\"annotations_count\":",
        );
        let annotations = o
            .and_then(|o| o.annotations)
            .unwrap_or((h >> 8) as u32 % 20);
        out.extend_from_slice(n.format(annotations).as_bytes());
        out.extend_from_slice(b",\"created_at\":\"");
        out.extend_from_slice(timestamp(i).as_bytes());
        out.push(b'"');
        out.extend_from_slice(self.tail.as_bytes());
        out.extend_from_slice(n.format((h >> 16) as u8 % 3).as_bytes());
        out.push(b'}');
    }
}

/// A version-4-shaped UUID made of `a` and `b`, written as text into `out`.
fn write_uuid(out: &mut Vec<u8>, a: u64, b: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let parts = [
        (&b""[..], a >> 32, 8),
        (b"-", (a >> 16) & 0xffff, 4),
        (b"-4", a & 0xfff, 3),
        (b"-8", b >> 52, 3),
        (b"-", b & 0xffff_ffff_ffff, 12),
    ];
    for (sep, v, digits) in parts {
        out.extend_from_slice(sep);
        out.extend(
            (0..digits)
                .rev()
                .map(|k| HEX[((v >> (4 * k)) & 0xf) as usize]),
        );
    }
}

impl World {
    pub fn new(cfg: &SimConfig, storage_base: String) -> World {
        let mut w = World {
            seed: cfg.seed,
            datasets: vec![],
            sequences: vec![],
            items: vec![],
            slices: vec![],
            exports: vec![],
            storage_base,
            jsonapi: super::jsonapi::JsonApi::new(cfg.seed, &cfg.jsonapi),
            rng: StdRng::seed_from_u64(cfg.seed),
            serial: 0,
        };
        let owners = cfg
            .owners
            .iter()
            .map(|o| (o, false))
            .chain(cfg.organizations.iter().map(|o| (o, true)));
        for (owner, is_org) in owners {
            for d in 0..cfg.datasets_per_owner {
                let idx = w.add_dataset(
                    owner,
                    is_org,
                    &format!("batch-{:03}", d + 1),
                    cfg.items_per_dataset,
                );
                for _ in 0..cfg.sequences_per_dataset {
                    w.add_sequence(idx);
                }
            }
            for s in 0..cfg.slices_per_owner {
                let ds = w
                    .datasets
                    .iter()
                    .rposition(|d| d.owner == *owner)
                    .unwrap_or(0);
                w.add_slice(
                    owner,
                    &format!("slice-{}", s + 1),
                    ds,
                    (cfg.items_per_dataset / 2).max(1),
                );
            }
        }
        for _ in 0..cfg.exports {
            let e = w.add_export();
            w.exports[e].status = "exported".into();
            w.exports[e].total = Some(100);
            w.exports[e].exported = Some(100);
        }
        w
    }

    fn next_uid(&mut self) -> String {
        self.serial += 1;
        uuid(
            mix(self.seed ^ mix(self.serial)),
            mix(self.serial.wrapping_mul(31) ^ self.seed),
        )
    }

    pub fn add_dataset(&mut self, owner: &str, is_org: bool, slug: &str, items: u64) -> usize {
        let uid = self.next_uid();
        let data_type = DATA_TYPES[(mix(self.serial) % 6) as usize];
        self.datasets.push(Dataset {
            uid,
            owner: owner.into(),
            is_org,
            slug: slug.into(),
            name: format!("Batch {slug}"),
            data_type,
            is_sequence: true,
            status: "created",
            order: self.serial as i64,
            deleted: false,
        });
        self.items.push(ItemSpace {
            count: items,
            ..Default::default()
        });
        self.datasets.len() - 1
    }

    pub fn add_sequence(&mut self, dataset: usize) -> usize {
        let uid = self.next_uid();
        let n = self
            .sequences
            .iter()
            .filter(|s| s.dataset == dataset)
            .count();
        let status = SEQUENCE_FLOW[(mix(self.serial) % 7) as usize].to_string();
        self.sequences.push(Sequence {
            uid,
            dataset,
            key: format!("seq_{:03}", n + 1),
            status,
            frames: 50 + (mix(self.serial) % 200) as u32,
            order: self.serial as i64,
            deleted: false,
        });
        self.sequences.len() - 1
    }

    pub fn add_slice(&mut self, owner: &str, slug: &str, dataset: usize, members: u64) -> usize {
        let uid = self.next_uid();
        self.slices.push(Slice {
            uid,
            owner: owner.into(),
            slug: slug.into(),
            name: slug.replace('-', " "),
            status: "created",
            dataset,
            members,
            order: self.serial as i64,
            deleted: false,
        });
        self.slices.len() - 1
    }

    pub fn add_export(&mut self) -> usize {
        let uid = self.next_uid();
        let datasets = self
            .datasets
            .first()
            .map(|d| vec![d.uid.clone()])
            .unwrap_or_default();
        self.exports.push(Export {
            name: format!("Export {}", self.serial),
            uid,
            format: if self.serial.is_multiple_of(2) {
                "avala-json-external"
            } else {
                "YOLO"
            },
            status: "requested".into(),
            total: None,
            exported: None,
            datasets,
            created_at: timestamp(self.serial * 60),
            deleted: false,
            link_version: 1,
            link_hidden: false,
        });
        self.exports.len() - 1
    }

    // ---- items ----

    fn item_hash(&self, ds: usize, i: u64) -> u64 {
        mix(self.seed ^ mix(ds as u64 + 1).wrapping_add(i))
    }

    pub fn item_present(&self, ds: usize, i: u64) -> bool {
        let space = &self.items[ds];
        i < space.count
            && (space.deleted == 0 || !space.overrides.get(&i).is_some_and(|o| o.deleted))
    }

    pub fn item_uid(&self, ds: usize, i: u64) -> String {
        let h = self.item_hash(ds, i);
        uuid(h, mix(h))
    }

    /// Serializes item `i` of dataset `ds` into `out`.
    pub fn write_item(&self, ds: usize, i: u64, out: &mut Vec<u8>) {
        ItemWriter::new(self, ds).write(self, ds, i, out);
    }

    pub fn item_json(&self, ds: usize, i: u64) -> Value {
        let mut buf = Vec::new();
        self.write_item(ds, i, &mut buf);
        serde_json::from_slice(&buf).expect("valid JSON")
    }

    pub fn item_count(&self, ds: usize) -> u64 {
        self.items[ds].count - self.items[ds].deleted
    }

    pub fn delete_item(&mut self, ds: usize, i: u64) {
        if self.item_present(ds, i) {
            self.items[ds].overrides.entry(i).or_default().deleted = true;
            self.items[ds].deleted += 1;
        }
    }

    pub fn set_item_status(&mut self, ds: usize, i: u64, status: &str) {
        self.items[ds].overrides.entry(i).or_default().status = Some(status.into());
    }

    /// Every present item of a dataset (for tests comparing the mirror).
    /// Makes the item listing of `ds` stop after `n` items (see `ItemSpace::listed_at_most`).
    pub fn truncate_item_listing(&mut self, ds: usize, n: u64) {
        self.items[ds].listed_at_most = Some(n);
    }

    pub fn all_items(&self, ds: usize) -> Vec<Value> {
        (0..self.items[ds].count)
            .filter(|&i| self.item_present(ds, i))
            .map(|i| self.item_json(ds, i))
            .collect()
    }

    // ---- JSON of the small resources ----

    pub fn dataset_json(&self, ds: usize) -> Value {
        let d = &self.datasets[ds];
        json!({
            "uid": d.uid, "name": d.name, "slug": d.slug, "data_type": d.data_type,
            "is_sequence": d.is_sequence, "visibility": "private", "status": d.status,
            "item_count": self.item_count(ds), "project_count": 1, "owner_name": d.owner,
            "size_bytes": self.item_count(ds) * 350_000, "annotations_count": self.item_count(ds) * 3,
            "created_at": timestamp(ds as u64 * 3600),
        })
    }

    pub fn sequence_json(&self, s: usize) -> Value {
        let q = &self.sequences[s];
        json!({
            "uid": q.uid, "key": q.key, "status": q.status,
            "featured_image": format!("https://storage.invalid/sequences/{}/featured.jpg", q.key),
            "number_of_frames": q.frames,
            "views": [{"key": "camera_front", "load": format!("https://storage.invalid/sequences/{}/camera_front/", q.key), "metrics": null}],
            "dataset_uid": self.datasets[q.dataset].uid,
        })
    }

    pub fn slice_json(&self, s: usize) -> Value {
        let sl = &self.slices[s];
        let ds = &self.datasets[sl.dataset].uid;
        json!({
            "name": sl.name, "slug": sl.slug, "uid": sl.uid, "owner_name": sl.owner,
            "organization": null, "visibility": "private",
            "sub_slices": [{"type": "dataset", "dataset_uid": ds}],
            "source_data": [{"type": "dataset", "dataset_uid": ds}],
            "status": sl.status, "featured_slice_item_urls": [],
            "item_count": self.slice_members(s).len(),
        })
    }

    pub fn slice_members(&self, s: usize) -> Vec<u64> {
        let sl = &self.slices[s];
        (0..sl.members)
            .filter(|&i| self.item_present(sl.dataset, i))
            .collect()
    }

    pub fn export_json(&self, e: usize) -> Value {
        let x = &self.exports[e];
        let url = (x.status == "exported" && !x.link_hidden).then(|| {
            format!(
                "{}/exports/{}.zip?v={}&signature={}",
                self.storage_base,
                x.uid,
                x.link_version,
                super::storage::signature(self.seed, &x.uid, x.link_version)
            )
        });
        json!({
            "uid": x.uid, "name": x.name, "format": x.format, "status": x.status,
            "total_task_count": x.total, "exported_task_count": x.exported,
            "download_url": url, "datasets": x.datasets, "slices": [], "projects": [],
            "organization": null, "created_at": x.created_at,
        })
    }

    pub fn dataset_index(&self, owner: &str, slug: &str) -> Option<usize> {
        self.datasets
            .iter()
            .position(|d| !d.deleted && d.owner == owner && d.slug == slug)
    }

    pub fn sequences_of(&self, ds: usize) -> Vec<usize> {
        self.sequences
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.deleted && s.dataset == ds)
            .map(|(i, _)| i)
            .collect()
    }

    /// Re-issues an export's download link: the old one answers 403 from now on.
    pub fn rotate_link(&mut self, uid: &str) {
        if let Some(x) = self.exports.iter_mut().find(|x| x.uid == uid) {
            x.link_version += 1;
        }
    }

    /// Moves a sequence one step along the workflow (with an occasional rework).
    pub fn advance_sequence(&mut self, s: usize) {
        let cur = self.sequences[s].status.clone();
        let next = if cur == "rework_required" {
            "labeling_2d"
        } else if cur.starts_with("review") && self.rng.random_bool(0.15) {
            "rework_required"
        } else {
            match SEQUENCE_FLOW.iter().position(|x| *x == cur) {
                Some(p) if p + 1 < SEQUENCE_FLOW.len() => SEQUENCE_FLOW[p + 1],
                _ => return,
            }
        };
        self.sequences[s].status = next.into();
    }

    /// One tick of the world.
    pub fn step(&mut self) {
        if !self.sequences.is_empty() {
            for _ in 0..3 {
                let s = self.rng.random_range(0..self.sequences.len());
                if !self.sequences[s].deleted {
                    self.advance_sequence(s);
                }
            }
        }
        if !self.datasets.is_empty() {
            for _ in 0..4 {
                let ds = self.rng.random_range(0..self.datasets.len());
                let n = self.items[ds].count;
                if n == 0 {
                    continue;
                }
                let i = self.rng.random_range(0..n);
                if self.item_present(ds, i) {
                    let status = ITEM_FLOW[self.rng.random_range(0..ITEM_FLOW.len())];
                    self.set_item_status(ds, i, status);
                }
            }
            if self.rng.random_bool(0.3) {
                let ds = self.rng.random_range(0..self.datasets.len());
                self.items[ds].count += 1;
            }
            if self.rng.random_bool(0.15) {
                let ds = self.rng.random_range(0..self.datasets.len());
                let n = self.items[ds].count;
                if n > 0 {
                    let i = self.rng.random_range(0..n);
                    self.delete_item(ds, i);
                }
            }
            if self.rng.random_bool(0.05) {
                let ds = self.rng.random_range(0..self.datasets.len());
                self.add_sequence(ds);
            }
        }
        for e in 0..self.exports.len() {
            let x = &mut self.exports[e];
            match x.status.as_str() {
                "requested" => {
                    x.status = "exporting".into();
                    x.total = Some(100);
                    x.exported = Some(0);
                }
                "exporting" => {
                    let done = x.exported.unwrap_or(0) + 50;
                    x.exported = Some(done.min(100));
                    if done >= 100 {
                        x.status = if self.rng.random_bool(0.9) {
                            "exported"
                        } else {
                            "failed"
                        }
                        .into();
                    }
                }
                _ => {}
            }
        }
        if self.rng.random_bool(0.25) {
            self.add_export();
        }
        self.jsonapi.step();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The item as the API reference describes it, built the slow, obvious way.
    fn expected(w: &World, ds: usize, i: u64) -> Value {
        let d = &w.datasets[ds];
        let h = w.item_hash(ds, i);
        let o = w.items[ds].overrides.get(&i);
        let key = format!("frame_{i:07}.jpg");
        let b = mix(h);
        json!({
            "uid": format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                h >> 32, (h >> 16) & 0xffff, h & 0xfff, b >> 52, b & 0xffff_ffff_ffff
            ),
            "key": key,
            "status": o.and_then(|o| o.status.clone())
                .unwrap_or(ITEM_FLOW[(h % ITEM_FLOW.len() as u64) as usize].into()),
            "data_url": format!("https://storage.invalid/datasets/{}/{key}", d.slug),
            "thumbnail_url": format!("https://storage.invalid/datasets/{}/thumbnails/{key}", d.slug),
            "metadata": {"width": 1920, "height": 1080, "format": "jpeg"},
            "annotations_count": o.and_then(|o| o.annotations).unwrap_or((h >> 8) as u32 % 20),
            "created_at": timestamp(i),
            "dataset": d.uid,
            "dataset_owner_name": d.owner,
            "dataset_slug": d.slug,
            "priority": (h >> 16) as u8 % 3,
        })
    }

    #[test]
    fn items_are_written_as_valid_json_with_every_field() {
        let mut w = World::new(&SimConfig::default(), "http://127.0.0.1:1".into());
        let odd = w.add_dataset("o\"wner", false, "sl\\ug/\u{e9}\"", 20_000_000);
        w.set_item_status(odd, 3, "quote\"d\nstatus");
        w.items[odd].overrides.entry(4).or_default().annotations = Some(77);
        for (ds, i) in [
            (0, 0),
            (0, 9_999_999),
            (odd, 3),
            (odd, 4),
            (odd, 12_345_678),
        ] {
            let mut out = Vec::new();
            w.write_item(ds, i, &mut out);
            let text = std::str::from_utf8(&out).unwrap();
            assert!(text.starts_with("{\"uid\":\""), "{text}");
            let got: Value = serde_json::from_str(text).unwrap();
            assert_eq!(got, expected(&w, ds, i), "item {i} of dataset {ds}");
        }
    }
}
