//! The PostgreSQL mirror read from anywhere (`status`, `events`, `exports
//! list`): a connection of its own in a read-only session, no migration, no
//! API key. `events --follow` LISTENs on the channel the writer notifies when
//! it commits events, and reads again only when told (or when the connection
//! was lost and opened again).

use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;

use super::ops::{EVENTS_AFTER, event, like, seq_of, status};
use super::{OpenError, Target, known_version};
use crate::store::downloads::Listed;
use crate::store::events::Event;

pub struct Reader {
    target: Target,
    client: tokio_postgres::Client,
    /// Notifications of the events channel, once [`Reader::listen`] was called.
    woken: Option<tokio::sync::mpsc::Receiver<()>>,
}

impl Reader {
    pub async fn open(target: &Target) -> anyhow::Result<Reader> {
        let (client, woken) = open(target, false).await?;
        Ok(Reader {
            target: target.clone(),
            client,
            woken,
        })
    }

    pub async fn status(&self) -> crate::store::Result<serde_json::Value> {
        Ok(status(&self.client, self.target.display()).await?)
    }

    pub async fn exports(&self) -> crate::store::Result<Vec<Listed>> {
        let rows = self
            .client
            .query(
                "SELECT e.uid, e.name, e.format, e.status, e.created_at,
                        d.status, d.bytes, d.path, d.sha256, d.error
                 FROM exports e LEFT JOIN downloads d ON d.export_uid = e.uid
                 WHERE e.deleted_at IS NULL
                 UNION ALL
                 SELECT d.export_uid, NULL, NULL, NULL,
                        to_char(d.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        d.status, d.bytes, d.path, d.sha256, d.error
                 FROM downloads d WHERE NOT EXISTS
                   (SELECT 1 FROM exports e WHERE e.uid = d.export_uid AND e.deleted_at IS NULL)
                 ORDER BY 5 DESC NULLS LAST, 1",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Listed {
                uid: r.get(0),
                name: r.get(1),
                format: r.get(2),
                status: r.get(3),
                created_at: r.get(4),
                download_status: r.get(5),
                bytes: r.get(6),
                path: r.get(7),
                sha256: r.get(8),
                error: r.get(9),
            })
            .collect())
    }

    pub async fn events(
        &self,
        after: i64,
        glob: &str,
        limit: u32,
    ) -> crate::store::Result<Vec<Event>> {
        let rows = self
            .client
            .query(EVENTS_AFTER, &[&after, &like(glob), &(limit as i64)])
            .await?;
        Ok(rows.iter().map(event).collect())
    }

    pub async fn seq_of(&self, since: &str) -> crate::store::Result<Option<i64>> {
        Ok(seq_of(&self.client, since).await?)
    }

    /// Waits until the writer commits new events (`events --follow`). A lost
    /// connection is opened again (with a look at the table then, since a
    /// notification may have gone with it).
    pub async fn changed(&mut self) -> anyhow::Result<()> {
        if self.woken.is_none() || self.client.is_closed() {
            // listening from now on: a look at the table covers what was
            // committed before (between the caller's last read and LISTEN)
            (self.client, self.woken) = open(&self.target, true).await?;
            return Ok(());
        }
        let woken = self.woken.as_mut().expect("listening");
        match woken.recv().await {
            Some(()) => {
                // several commits in a row: one read for all of them
                while woken.try_recv().is_ok() {}
            }
            None => {
                tracing::warn!(
                    "the PostgreSQL connection of `events --follow` was lost; opening it again"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                (self.client, self.woken) = open(&self.target, true).await?;
            }
        }
        Ok(())
    }
}

/// A read-only session on the schema; with `listen`, LISTENing on the events
/// channel, its notifications forwarded to the receiver returned.
async fn open(
    target: &Target,
    listen: bool,
) -> anyhow::Result<(
    tokio_postgres::Client,
    Option<tokio::sync::mpsc::Receiver<()>>,
)> {
    let at = target.display();
    let (client, mut connection) = target
        .connect(&target.config)
        .await
        .map_err(|e| OpenError::of(target, &e).into_error())?;
    // one wake-up pending is enough: the reader reads everything new at once
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(_)) => {
                    if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = tx.try_send(())
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("PostgreSQL connection ended: {e}");
                    break;
                }
            }
        }
    });
    let schema = &target.schema;
    client
        .batch_execute(&format!(
            "SET search_path TO {schema}; SET default_transaction_read_only = on"
        ))
        .await?;
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    let version: Option<i64> = match exists {
        true => client
            .query_one("SELECT max(version) FROM schema_migrations", &[])
            .await?
            .get(0),
        false => None,
    };
    let known = known_version();
    match version {
        None => anyhow::bail!(
            "no avala-mirror schema {schema} at {at} (run `avala-mirror sync` first, or name it with store.schema)"
        ),
        Some(v) if v != known => anyhow::bail!(
            "the mirror at {at} is at schema version {v} and this avala-mirror reads version {known}: {}",
            if v < known {
                "run `avala-mirror sync` (or restart the daemon) once to upgrade it"
            } else {
                "use the avala-mirror that wrote it"
            }
        ),
        Some(_) => {}
    }
    if listen {
        client
            .batch_execute(&format!("LISTEN \"{}\"", super::channel(schema)))
            .await?;
    }
    Ok((client, listen.then_some(rx)))
}
