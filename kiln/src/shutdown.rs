//! One shutdown signal for the whole process: SIGINT or SIGTERM cancels the token
//! that every server, worker and supervisor watches.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        else {
            tracing::error!("could not install signal handlers; stop with SIGKILL");
            return;
        };
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("interrupted: stopping"),
            _ = terminate.recv() => tracing::info!("terminated: stopping"),
        }
        cancel.cancel();
    });
    token
}
