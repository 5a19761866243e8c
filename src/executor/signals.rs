//! SIGINT and SIGTERM arrive as events on the run's channel, like everything else.

use nix::sys::signal::Signal;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Installs handlers for SIGINT and SIGTERM and calls `deliver` for each one received.
/// From then on these signals no longer kill the runner: the run loop decides.
pub fn forward_signals(deliver: impl Fn(Signal) + Send + 'static) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for raw in signals.forever() {
            if let Ok(sig) = Signal::try_from(raw) {
                deliver(sig);
            }
        }
    })?;
    Ok(())
}
