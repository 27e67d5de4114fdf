//! Periodic reload checks for files operators rotate in place (certificates, JWKS, keys).
//!
//! Owns the timing: each check runs on the blocking pool, one at a time, and a slow check
//! delays the next instead of piling up; and the bounded read such files get, so a file
//! replaced by something huge is refused instead of read whole. What a check makes of the
//! bytes, and how it fails, is the caller's.

use std::sync::Arc;
use std::time::Duration;

/// Runs `check` every `interval` on the blocking pool, for the life of the runtime.
pub(crate) fn spawn_every<T: Send + Sync + 'static>(
    interval: Duration,
    target: Arc<T>,
    check: fn(&T),
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let target = Arc::clone(&target);
            let _ = tokio::task::spawn_blocking(move || check(&target)).await;
        }
    });
}

/// Largest certificate, key or CA file read (a chain is a few KiB).
pub(crate) const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Reads a file of at most [`MAX_PEM_BYTES`]; the error names the file.
pub(crate) fn read_bounded(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|err| format!("cannot read `{}`: {err}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot read `{}`: {err}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "`{}` is larger than {MAX_PEM_BYTES} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}
