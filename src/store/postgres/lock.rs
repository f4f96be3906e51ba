//! One writer per PostgreSQL mirror (SPEC §9): a session advisory lock on the
//! schema, held by a connection of its own for as long as the command runs.
//! The server drops it when that session ends, even by kill -9, so it is never
//! left stale. The holder's host, pid and command are its connection's
//! `application_name`, which a second writer reads from `pg_stat_activity`.

use super::{Target, describe};
use crate::store::lock::{LockError, Locked};

/// The advisory lock's key: `AVMR` and a hash of the schema name, both halves
/// below 2³¹ so `pg_locks` shows them as they are.
fn key(schema: &str) -> (i64, i64) {
    let mut h: u32 = 0x811c_9dc5;
    for b in schema.bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    let (high, low) = (0x4156_4D52_i64, (h & 0x7fff_ffff) as i64);
    (high, low)
}

/// A held lock; released when dropped (its session ends).
#[derive(Debug)]
pub struct Advisory {
    _client: tokio_postgres::Client,
}

impl Advisory {
    pub async fn take(target: &Target, command: &str) -> Result<Advisory, LockError> {
        let at = target.display();
        let fail = |why: String| LockError::Postgres {
            at: at.clone(),
            why,
        };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        // application_name is cut at 63 bytes: the pid and command first
        let mut name = format!("avala-mirror/{}/{command}@{host}", std::process::id());
        name.truncate(name.floor_char_boundary(63));
        let mut config = target.config.clone();
        config.application_name(&name);
        let client = super::connect_with(target, &config)
            .await
            .map_err(|e| match e {
                super::OpenError::Refused { .. } => {
                    LockError::Refused(crate::error::ConfigError(vec![e.to_string()]))
                }
                e => fail(e.to_string()),
            })?;
        let (high, low) = key(&target.schema);
        let lock = (high << 32) | low;
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&lock])
            .await
            .map_err(|e| fail(describe(&e)))?
            .get(0);
        if got {
            return Ok(Advisory { _client: client });
        }
        let holder: Option<String> = client
            .query_opt(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                   AND l.classid::bigint = $1 AND l.objid::bigint = $2
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&high, &low],
            )
            .await
            .map_err(|e| fail(describe(&e)))?
            .and_then(|r| r.get(0));
        let holder = holder.unwrap_or_default();
        // avala-mirror/<pid>/<command>@<host>
        let (pid, rest) = holder
            .strip_prefix("avala-mirror/")
            .and_then(|h| h.split_once('/'))
            .unwrap_or(("?", "?"));
        let (cmd, on) = rest.rsplit_once('@').unwrap_or((rest, "?"));
        Err(Locked {
            db: at.clone(),
            holder: format!("pid {pid} on {on}, `{cmd}`"),
            is_daemon: cmd == "run",
        }
        .into())
    }
}
