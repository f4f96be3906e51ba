//! The download queue (SPEC §5): one row per export, `pending` → `downloading` →
//! `downloaded` or `failed`. The outcome and its event are written in one transaction.
//! An export that became `exported` before the API showed its link waits as
//! `awaiting_link` until a listing brings the link.

use super::sqlite::downloads::*;
use super::{Result as StoreResult, Store};
use crate::time::now_rfc3339;

/// The download queue, as the downloader and the commands use it.
impl Store {
    /// Downloads due now (`pending`, `downloading`, or done waiting for space).
    pub async fn downloads_due(&self) -> StoreResult<Vec<Job>> {
        if let Some(pg) = self.pg() {
            return pg.downloads_due().await;
        }
        let now = now_rfc3339();
        Ok(self.read(move |c| due(c, &now)).await?)
    }

    /// One more attempt of an export's download begins: the attempts so far.
    pub async fn download_attempt(&self, uid: &str) -> StoreResult<u32> {
        if let Some(pg) = self.pg() {
            return pg.download_attempt(uid).await;
        }
        let (u, n) = (uid.to_string(), now_rfc3339());
        Ok(self.call(move |c| attempt(c, &u, &n)).await?)
    }

    /// An attempt failed and another will come.
    pub async fn download_attempt_failed(&self, uid: &str, error: &str) -> StoreResult<()> {
        if let Some(pg) = self.pg() {
            return pg.download_attempt_failed(uid, error).await;
        }
        let (u, e, n) = (uid.to_string(), error.to_string(), now_rfc3339());
        Ok(self.call(move |c| attempt_failed(c, &u, &e, &n)).await?)
    }

    /// The archive is in place (`path`: a file or an object's URL), with its event.
    pub async fn download_complete(
        &self,
        uid: &str,
        path: &str,
        bytes: u64,
        sha256: &str,
    ) -> StoreResult<()> {
        if let Some(pg) = self.pg() {
            return pg.download_complete(uid, path, bytes, sha256).await;
        }
        let (u, p, h, n) = (
            uid.to_string(),
            path.to_string(),
            sha256.to_string(),
            now_rfc3339(),
        );
        Ok(self
            .call(move |c| complete(c, &u, &p, bytes, &h, &n))
            .await?)
    }

    /// Given up: `failed`, with its event.
    pub async fn download_fail(&self, uid: &str, error: &str) -> StoreResult<()> {
        if let Some(pg) = self.pg() {
            return pg.download_fail(uid, error).await;
        }
        let (u, e, n) = (uid.to_string(), error.to_string(), now_rfc3339());
        Ok(self.call(move |c| fail(c, &u, &e, &n)).await?)
    }

    /// Waits for disk space until `retry_at`.
    pub async fn download_wait_for_space(
        &self,
        uid: &str,
        error: &str,
        retry_at: &str,
    ) -> StoreResult<()> {
        if let Some(pg) = self.pg() {
            return pg.download_wait_for_space(uid, error, retry_at).await;
        }
        let (u, e, a, n) = (
            uid.to_string(),
            error.to_string(),
            retry_at.to_string(),
            now_rfc3339(),
        );
        Ok(self
            .call(move |c| wait_for_space(c, &u, &e, &a, &n))
            .await?)
    }

    /// A fresh link for the download.
    pub async fn download_set_url(&self, uid: &str, url: &str) -> StoreResult<()> {
        if let Some(pg) = self.pg() {
            return pg.download_set_url(uid, url).await;
        }
        let (u, l) = (uid.to_string(), url.to_string());
        Ok(self.call(move |c| set_url(c, &u, &l)).await?)
    }

    /// A multipart upload began (`Some((key, id))`) or ended (`None`).
    pub async fn download_set_upload(
        &self,
        uid: &str,
        upload: Option<(String, String)>,
    ) -> StoreResult<()> {
        if let Some(pg) = self.pg() {
            return pg.download_set_upload(uid, upload).await;
        }
        let u = uid.to_string();
        Ok(self
            .call(move |c| {
                let upload = upload.as_ref().map(|(k, i)| (k.as_str(), i.as_str()));
                set_upload(c, &u, upload)
            })
            .await?)
    }

    /// Multipart uploads begun and never ended: (export, key, id).
    pub async fn unfinished_uploads(&self) -> StoreResult<Vec<(String, String, String)>> {
        if let Some(pg) = self.pg() {
            return pg.unfinished_uploads().await;
        }
        Ok(self.read(unfinished_uploads).await?)
    }

    /// How an export's download ended, if it did.
    pub async fn download_outcome(&self, uid: &str) -> StoreResult<Option<Outcome>> {
        if let Some(pg) = self.pg() {
            return pg.download_outcome(uid).await;
        }
        let u = uid.to_string();
        Ok(self.read(move |c| outcome(c, &u)).await?)
    }

    /// Queues an export's archive now (`exports download`), unless it is
    /// already downloaded (`Err(path)`: on disk, or an object's URL). A name
    /// already given (to a partial file, say) is kept.
    pub async fn request_download(
        &self,
        uid: &str,
        link: &str,
        name: &str,
    ) -> StoreResult<std::result::Result<Job, String>> {
        if let Some(pg) = self.pg() {
            return pg.request_download(uid, link, name).await;
        }
        let (u, l, f, n) = (
            uid.to_string(),
            link.to_string(),
            name.to_string(),
            now_rfc3339(),
        );
        Ok(self
            .call(move |c| {
                if let Some(path) = downloaded_path(c, &u)?
                    && (path.contains("://") || std::path::Path::new(&path).exists())
                {
                    return Ok(Err(path));
                }
                let file_name = get(c, &u)?.map_or(f, |j| j.file_name);
                request(c, &u, &l, &file_name, &n)?;
                get(c, &u).map(|j| Ok(j.expect("just queued")))
            })
            .await?)
    }
}

pub const PENDING: &str = "pending";
pub const DOWNLOADING: &str = "downloading";
pub const DOWNLOADED: &str = "downloaded";
pub const FAILED: &str = "failed";
pub const AWAITING_LINK: &str = "awaiting_link";

/// A queued download, as the downloader needs it.
#[derive(Debug, Clone)]
pub struct Job {
    pub export_uid: String,
    pub url: String,
    pub file_name: String,
    pub attempts: u32,
}

/// Where one download stands: (status, path, bytes, sha256, error).
pub type Outcome = (
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// One export with its download, for `exports list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub uid: String,
    pub name: Option<String>,
    pub format: Option<String>,
    pub status: Option<String>,
    pub created_at: Option<String>,
    pub download_status: Option<String>,
    pub bytes: Option<i64>,
    pub path: Option<String>,
    pub sha256: Option<String>,
    pub error: Option<String>,
}
