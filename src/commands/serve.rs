//! `serve`: the mirror as a read-only API (SPEC §11), alone: no API key, no
//! write, beside a running daemon or without one.

use std::path::Path;

use crate::error::EXIT_OK;

pub async fn serve(db: &Path, settings: crate::serve::Settings) -> anyhow::Result<u8> {
    let (addr, task) = crate::serve::start(settings, db).await?;
    eprintln!(
        "serving {} read-only at http://{addr}/api/v1 and http://{addr}/jsonapi; point scripts at it with AVALA_BASE_URL=http://{addr}/api/v1 (and AVALA_ALLOW_INSECURE_BASE_URL=true); Ctrl-C stops",
        db.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    task.abort();
    Ok(EXIT_OK)
}
