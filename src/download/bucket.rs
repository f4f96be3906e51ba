//! Archives published to object storage (SPEC §10): S3 and S3-compatible stores,
//! GCS, Azure, or `file://`, through the `object_store` crate. A verified
//! archive is uploaded from its local file, the SHA-256 as the object's
//! `sha256` metadata: in one conditional put (created only if absent) up to
//! [`MULTIPART_ABOVE`], above it in parts read from the file a few at a time,
//! never the whole archive in memory. The multipart upload's id is recorded
//! before its first part, so one a crash left unfinished is aborted at the next
//! start; until completed, nothing is visible at the key.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ClientOptions, GetOptions, ObjectStore, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, RetryConfig,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use url::Url;

use crate::config::StorageTarget;

/// Archives larger than this go up in parts.
pub const MULTIPART_ABOVE: u64 = 64 << 20;
/// The smallest part; larger when an archive would need more than [`MAX_PARTS`].
const PART_BYTES: u64 = 8 << 20;
const MAX_PARTS: u64 = 10_000;
/// Parts uploading at once (each held in memory while it goes).
const PARTS_IN_FLIGHT: usize = 4;

/// Why an upload did not end with the object in place.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The store refused (403, no such bucket) or holds another archive at the
    /// key: another attempt would not change that.
    #[error("{0}")]
    Refused(String),
    /// A 5xx, a timeout, a dropped connection: tried again with backoff.
    #[error("{0}")]
    Retry(String),
}

/// A multipart upload under way, as recorded in the `downloads` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Unfinished {
    pub key: String,
    pub id: String,
}

/// Where archives go, and how.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    parts: Arc<dyn MultipartStore>,
    prefix: Path,
    /// `scheme://bucket` (no trailing slash), for the URLs recorded.
    root: String,
    /// `file://`: a directory, written to by hand (see [`to_dir`]).
    dir: Option<std::path::PathBuf>,
    /// Azure: its multipart uploads have no id to abort (uncommitted blocks
    /// are invisible and expire by themselves) and take no metadata at their
    /// start, so they go through the streaming API instead.
    blocks: bool,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bucket({}/{})", self.root, self.prefix)
    }
}

impl Bucket {
    /// The store `target` names, with credentials and endpoint from the
    /// environment as the cloud's own tools read them.
    pub fn open(target: &StorageTarget) -> Result<Bucket, String> {
        let url = &target.url;
        let retry = RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(30),
        };
        let options = ClientOptions::new()
            .with_allow_http(target.allow_http)
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(300));
        let bad = |e: object_store::Error| format!("downloads.target {url}: {e}");
        // each cloud's builder, from the environment, with the URL and our client settings
        macro_rules! built {
            ($builder:ty, $more:expr) => {{
                let b = <$builder>::from_env()
                    .with_url(url.as_str())
                    .with_client_options(options)
                    .with_retry(retry);
                let s = Arc::new($more(b).build().map_err(bad)?);
                (s.clone(), s)
            }};
        }
        let (store, parts): (Arc<dyn ObjectStore>, Arc<dyn MultipartStore>) = match url.scheme() {
            "s3" | "s3a" => built!(
                object_store::aws::AmazonS3Builder,
                |mut b: object_store::aws::AmazonS3Builder| {
                    if let Some(r) = &target.region {
                        b = b.with_region(r);
                    }
                    if let Some(e) = &target.endpoint {
                        b = b.with_endpoint(e.as_str());
                    }
                    b
                }
            ),
            "gs" => built!(object_store::gcp::GoogleCloudStorageBuilder, |b| b),
            "az" | "azure" | "abfs" | "abfss" => {
                built!(object_store::azure::MicrosoftAzureBuilder, |b| b)
            }
            "file" => {
                let dir = url
                    .to_file_path()
                    .map_err(|()| format!("downloads.target {url}: not a local path"))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("downloads.target {url}: creating it: {e}"))?;
                let root = url.as_str().trim_end_matches('/').to_string();
                let mut b = Bucket::memory(&root, "");
                b.dir = Some(dir);
                return Ok(b);
            }
            other => return Err(format!("downloads.target: unknown scheme {other}://")),
        };
        let prefix = Path::from_url_path(url.path()).map_err(|e| bad(e.into()))?;
        let root = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
        Ok(Bucket {
            store,
            parts,
            prefix,
            root,
            dir: None,
            blocks: matches!(url.scheme(), "az" | "azure" | "abfs" | "abfss"),
        })
    }

    /// An in-memory store (the unit tests').
    pub fn memory(root: &str, prefix: &str) -> Bucket {
        let s = Arc::new(object_store::memory::InMemory::new());
        Bucket {
            store: s.clone(),
            parts: s,
            prefix: Path::from(prefix),
            root: root.into(),
            dir: None,
            blocks: false,
        }
    }

    /// The key of an archive named `name` (a file name from
    /// [`super::file_name`]: it cannot leave the prefix).
    pub fn key(&self, name: &str) -> Path {
        self.prefix.clone().join(name)
    }

    /// The URL recorded for a key.
    pub fn url(&self, key: &Path) -> String {
        format!("{}/{key}", self.root)
    }

    /// Uploads `file` (verified, `bytes` long, of this SHA-256) as `name`.
    /// `started` is told a multipart upload's id before its first part, and
    /// `None` once it is completed or aborted. An object already at the key with
    /// the same `sha256` is this archive (an earlier attempt got that far): done.
    pub async fn upload<F, Fut>(
        &self,
        file: &FsPath,
        name: &str,
        sha256: &str,
        started: F,
    ) -> Result<String, UploadError>
    where
        F: Fn(Option<Unfinished>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        if let Some(dir) = &self.dir {
            return to_dir(file, dir, name, sha256)
                .await
                .map(|()| format!("{}/{name}", self.root));
        }
        let key = self.key(name);
        let bytes = tokio::fs::metadata(file)
            .await
            .map_err(|e| UploadError::Retry(format!("reading {}: {e}", file.display())))?
            .len();
        if let Some(existing) = self.existing(&key).await? {
            return self.same(&key, &existing, sha256);
        }
        let attributes = Attributes::from_iter([(
            Attribute::Metadata("sha256".into()),
            object_store::AttributeValue::from(sha256.to_string()),
        )]);
        if bytes <= MULTIPART_ABOVE {
            let data = tokio::fs::read(file)
                .await
                .map_err(|e| UploadError::Retry(format!("reading {}: {e}", file.display())))?;
            let opts = PutOptions {
                mode: PutMode::Create,
                attributes,
                ..Default::default()
            };
            return match self
                .store
                .put_opts(&key, PutPayload::from(data), opts)
                .await
            {
                Ok(_) => Ok(self.url(&key)),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let existing = self.existing(&key).await?.unwrap_or_default();
                    self.same(&key, &existing, sha256)
                }
                Err(e) => Err(classify(&key, e)),
            };
        }
        let part = PART_BYTES.max(bytes.div_ceil(MAX_PARTS).next_multiple_of(1 << 20));
        if self.blocks {
            return self
                .upload_blocks(file, &key, (bytes, part), attributes, sha256)
                .await;
        }
        let id = self
            .parts
            .create_multipart_opts(
                &key,
                PutMultipartOptions {
                    attributes,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| classify(&key, e))?;
        started(Some(Unfinished {
            key: key.to_string(),
            id: id.clone(),
        }))
        .await;
        let count = bytes.div_ceil(part);
        let sent = futures_util::stream::iter(0..count)
            .map(|i| {
                let (key, id) = (&key, &id);
                async move {
                    let len = part.min(bytes - i * part);
                    let data = read_part(file, i * part, len).await?;
                    self.parts
                        .put_part(key, id, i as usize, PutPayload::from(data))
                        .await
                        .map_err(|e| classify(key, e))
                }
            })
            .buffered(PARTS_IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await;
        let done = match sent {
            // the existence check again, just before the object appears
            Ok(parts) => match self.existing(&key).await {
                Ok(None) => self
                    .parts
                    .complete_multipart(&key, &id, parts)
                    .await
                    .map(|_| self.url(&key))
                    .map_err(|e| classify(&key, e)),
                Ok(Some(existing)) => self.same(&key, &existing, sha256),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if done.is_err() {
            self.abort(&Unfinished {
                key: key.to_string(),
                id,
            })
            .await;
        }
        started(None).await;
        done
    }

    /// A large archive in blocks through the streaming API (Azure): parts read
    /// from the file, [`PARTS_IN_FLIGHT`] at a time, the metadata given at the
    /// end; nothing visible until then.
    async fn upload_blocks(
        &self,
        file: &FsPath,
        key: &Path,
        (bytes, part): (u64, u64),
        attributes: Attributes,
        sha256: &str,
    ) -> Result<String, UploadError> {
        let opts = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let mut upload = self
            .store
            .put_multipart_opts(key, opts)
            .await
            .map_err(|e| classify(key, e))?;
        let mut sending = futures_util::stream::FuturesOrdered::new();
        let mut sent = Ok(());
        for i in 0..bytes.div_ceil(part) {
            if sending.len() >= PARTS_IN_FLIGHT {
                sent = sending.next().await.expect("not empty");
                if sent.is_err() {
                    break;
                }
            }
            let data = match read_part(file, i * part, part.min(bytes - i * part)).await {
                Ok(data) => data,
                Err(e) => {
                    let _ = upload.abort().await;
                    return Err(e);
                }
            };
            sending.push_back(upload.put_part(PutPayload::from(data)));
        }
        while let Some(r) = sending.next().await {
            sent = sent.and(r);
        }
        if let Err(e) = sent {
            let _ = upload.abort().await;
            return Err(classify(key, e));
        }
        match self.existing(key).await? {
            None => upload
                .complete()
                .await
                .map(|_| self.url(key))
                .map_err(|e| classify(key, e)),
            Some(existing) => {
                let _ = upload.abort().await;
                self.same(key, &existing, sha256)
            }
        }
    }

    /// Aborts a multipart upload (one a crash left, or one that failed).
    pub async fn abort(&self, u: &Unfinished) {
        let key = Path::from(u.key.as_str());
        match self.parts.abort_multipart(&key, &u.id).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(key = %u.key, "aborting an unfinished upload: {e}"),
        }
    }

    /// The `sha256` metadata of the object at `key` (`Some("")` when it has
    /// none), or `None` when there is no object.
    async fn existing(&self, key: &Path) -> Result<Option<String>, UploadError> {
        let head = GetOptions {
            head: true,
            ..Default::default()
        };
        match self.store.get_opts(key, head).await {
            Ok(got) => Ok(Some(
                got.attributes
                    .get(&Attribute::Metadata("sha256".into()))
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(classify(key, e)),
        }
    }

    /// An object already at `key`: this archive, or another one left alone.
    fn same(&self, key: &Path, existing: &str, sha256: &str) -> Result<String, UploadError> {
        if existing == sha256 {
            return Ok(self.url(key));
        }
        Err(another(&self.url(key), existing))
    }
}

fn another(url: &str, sha256: &str) -> UploadError {
    UploadError::Refused(format!(
        "{url} already holds another archive (sha256 {}); it is not overwritten",
        if sha256.is_empty() { "unknown" } else { sha256 }
    ))
}

/// `file://`: copied beside its place, made durable, then linked into place, which
/// fails when a file is there (created only if absent, as on a bucket).
async fn to_dir(file: &FsPath, dir: &FsPath, name: &str, sha256: &str) -> Result<(), UploadError> {
    let (file, dir, name, sha256) = (
        file.to_path_buf(),
        dir.to_path_buf(),
        name.to_string(),
        sha256.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        let io = |what: &str, e: std::io::Error| {
            UploadError::Retry(format!("{what} in {}: {e}", dir.display()))
        };
        let place = dir.join(&name);
        let staged = dir.join(format!(".{name}.uploading"));
        std::fs::copy(&file, &staged).map_err(|e| io("copying the archive", e))?;
        std::fs::File::open(&staged)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("syncing the copy", e))?;
        let linked = std::fs::hard_link(&staged, &place);
        let _ = std::fs::remove_file(&staged);
        match linked {
            Ok(()) => std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("syncing the directory", e)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let theirs = sha256_of(&place).map_err(|e| io("reading the file in place", e))?;
                match theirs == sha256 {
                    true => Ok(()),
                    false => Err(another(&place.display().to_string(), &theirs)),
                }
            }
            Err(e) => Err(io("linking the archive into place", e)),
        }
    })
    .await
    .map_err(|e| UploadError::Retry(e.to_string()))?
}

fn sha256_of(path: &FsPath) -> std::io::Result<String> {
    use sha2::Digest;
    let (_, hasher) = super::fetch::hash_file(path, u64::MAX)?;
    Ok(hex::encode(hasher.finalize()))
}

async fn read_part(file: &FsPath, offset: u64, len: u64) -> Result<Vec<u8>, UploadError> {
    let io = |e: std::io::Error| UploadError::Retry(format!("reading {}: {e}", file.display()));
    let mut f = tokio::fs::File::open(file).await.map_err(io)?;
    f.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
    let mut buf = vec![0; len as usize];
    f.read_exact(&mut buf).await.map_err(io)?;
    Ok(buf)
}

/// A refusal or something another attempt may fix.
fn classify(key: &Path, e: object_store::Error) -> UploadError {
    use object_store::Error as E;
    let what = format!("uploading to {key}: {e}");
    match e {
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::NotFound { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. } => UploadError::Refused(what),
        _ => UploadError::Retry(what),
    }
}

/// A storage URL from `downloads.target`, checked: a scheme the mirror writes
/// to, and a bucket (or directory).
pub fn check_target(target: &str) -> Result<Url, String> {
    let url = Url::parse(target)
        .map_err(|e| format!("downloads.target: {target:?} is not a URL: {e}"))?;
    match url.scheme() {
        "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("downloads.target: {target} names no bucket"));
            }
        }
        "file" => {
            if url.to_file_path().is_err() {
                return Err(format!(
                    "downloads.target: {target} is not an absolute local path"
                ));
            }
        }
        other => {
            return Err(format!(
                "downloads.target: {other}:// is not a storage this mirror writes to (s3://, gs://, az://, file://)"
            ));
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    async fn file_of(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.zip");
        tokio::fs::write(&p, bytes).await.unwrap();
        (dir, p)
    }

    fn sha(b: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b))
    }

    async fn object(b: &Bucket, key: &str) -> (Vec<u8>, String) {
        let got = b.store.get(&Path::from(key)).await.unwrap();
        let meta = got
            .attributes
            .get(&Attribute::Metadata("sha256".into()))
            .map(|v| v.to_string())
            .unwrap_or_default();
        (got.bytes().await.unwrap().to_vec(), meta)
    }

    async fn nothing(_: Option<Unfinished>) {}

    #[tokio::test]
    async fn an_archive_goes_under_the_prefix_with_its_sha256_and_is_never_overwritten() {
        let b = Bucket::memory("s3://bucket", "exports/avala");
        let body = b"PK\x03\x04 an archive".to_vec();
        let (_d, file) = file_of(&body).await;
        let url = b
            .upload(&file, "a_uid.zip", &sha(&body), nothing)
            .await
            .unwrap();
        assert_eq!(url, "s3://bucket/exports/avala/a_uid.zip");
        assert_eq!(
            object(&b, "exports/avala/a_uid.zip").await,
            (body.clone(), sha(&body))
        );
        // again (a restart after the upload): the same archive is done, untouched
        let again = b
            .upload(&file, "a_uid.zip", &sha(&body), nothing)
            .await
            .unwrap();
        assert_eq!(again, url);
        // another archive under the same name is refused, the object kept
        let other = b"PK\x03\x04 another".to_vec();
        let (_d2, file2) = file_of(&other).await;
        let err = b
            .upload(&file2, "a_uid.zip", &sha(&other), nothing)
            .await
            .unwrap_err();
        assert!(matches!(err, UploadError::Refused(_)), "{err}");
        assert!(err.to_string().contains("not overwritten"), "{err}");
        assert_eq!(object(&b, "exports/avala/a_uid.zip").await.0, body);
    }

    #[tokio::test]
    async fn a_large_archive_goes_in_parts_and_its_upload_id_is_told_first() {
        let b = Bucket::memory("s3://bucket", "p");
        let body: Vec<u8> = (0..MULTIPART_ABOVE + 3 * PART_BYTES + 123)
            .map(|i| (i % 251) as u8)
            .collect();
        let (_d, file) = file_of(&body).await;
        let told = std::sync::Mutex::new(vec![]);
        let url = b
            .upload(&file, "big.zip", &sha(&body), |u| {
                told.lock().unwrap().push(u);
                async {}
            })
            .await
            .unwrap();
        assert_eq!(url, "s3://bucket/p/big.zip");
        let told = told.into_inner().unwrap();
        assert_eq!(told.len(), 2, "{told:?}");
        assert_eq!(told[0].as_ref().unwrap().key, "p/big.zip");
        assert_eq!(told[1], None);
        let (got, meta) = object(&b, "p/big.zip").await;
        assert!(got == body, "the parts were put together wrong");
        assert_eq!(meta, sha(&body));
    }

    #[tokio::test]
    async fn a_directory_target_takes_a_copy_and_keeps_another_file_in_place() {
        let target = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(target.path()).unwrap();
        let b = Bucket::open(&StorageTarget {
            url: url.clone(),
            region: None,
            endpoint: None,
            allow_http: false,
        })
        .unwrap();
        let body = b"PK archive".to_vec();
        let (_d, file) = file_of(&body).await;
        let got = b
            .upload(&file, "x.zip", &sha(&body), nothing)
            .await
            .unwrap();
        assert_eq!(got, format!("{}/x.zip", url.as_str().trim_end_matches('/')));
        assert_eq!(std::fs::read(target.path().join("x.zip")).unwrap(), body);
        // the same archive again is done; another is refused and the file kept
        b.upload(&file, "x.zip", &sha(&body), nothing)
            .await
            .unwrap();
        let (_d2, other) = file_of(b"PK other").await;
        let err = b
            .upload(&other, "x.zip", &sha(b"PK other"), nothing)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not overwritten"), "{err}");
        assert_eq!(std::fs::read(target.path().join("x.zip")).unwrap(), body);
        let names: Vec<_> = std::fs::read_dir(target.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["x.zip"], "a staged copy was left");
    }

    #[tokio::test]
    async fn blocks_without_an_upload_id_go_through_the_streaming_api() {
        // as on Azure, whose low-level multipart API takes no metadata
        let mut b = Bucket::memory("az://container", "p");
        b.blocks = true;
        let body: Vec<u8> = (0..MULTIPART_ABOVE + 5 * PART_BYTES + 7)
            .map(|i| (i % 253) as u8)
            .collect();
        let (_d, file) = file_of(&body).await;
        let told = std::sync::Mutex::new(0);
        let url = b
            .upload(&file, "big.zip", &sha(&body), |_| {
                *told.lock().unwrap() += 1;
                async {}
            })
            .await
            .unwrap();
        assert_eq!(url, "az://container/p/big.zip");
        assert_eq!(*told.lock().unwrap(), 0, "no upload id to record");
        let (got, meta) = object(&b, "p/big.zip").await;
        assert!(got == body, "the blocks were put together wrong");
        assert_eq!(meta, sha(&body));
        // and never over another archive
        let err = b
            .upload(&file, "big.zip", "0000", nothing)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not overwritten"), "{err}");
    }

    #[test]
    fn targets_are_checked() {
        for ok in [
            "s3://bucket/prefix",
            "gs://b",
            "az://container/p",
            "file:///srv/archives",
        ] {
            assert!(check_target(ok).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("s3:///prefix", "names no bucket"),
            ("ftp://host/x", "not a storage"),
            ("bucket/prefix", "not a URL"),
        ] {
            let err = check_target(bad).unwrap_err();
            assert!(
                err.contains(says) && err.contains("downloads.target"),
                "{bad}: {err}"
            );
        }
    }
}
