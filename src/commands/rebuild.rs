//! `runner rebuild-projection`: refill the SQLite projection from every journal.

use serde_json::json;

use crate::cli::Global;
use crate::error::{Error, io_at};
use crate::exit::ExitCode;
use crate::projection;
use crate::report::{note, print};

pub fn rebuild(g: &Global) -> Result<ExitCode, Error> {
    let runs = g.runs();
    std::fs::create_dir_all(runs.root()).map_err(io_at(runs.root()))?;
    let stats = projection::rebuild(&runs, !g.quiet && !g.json)?;
    let secs = stats.elapsed.as_secs_f64();
    let rate = if secs > 0.0 { stats.events as f64 / secs } else { 0.0 };
    if g.json {
        let _ = print(
            &json!({
                "runs": stats.runs, "events": stats.events, "elapsed_ms": stats.elapsed.as_millis() as u64,
                "events_per_second": rate.round(),
                "skipped": stats.skipped.iter().map(|(id, why)| json!({"run_id": id, "error": why})).collect::<Vec<_>>(),
            })
            .to_string(),
        );
    } else {
        let _ = print(&format!(
            "rebuilt {}: {} runs, {} events in {:.2}s ({:.0} events/s)",
            runs.root().join(projection::PROJECTION_FILE).display(),
            stats.runs,
            stats.events,
            secs,
            rate
        ));
        for (id, why) in &stats.skipped {
            note(&format!("warning: run {id} left out: {why}"));
        }
    }
    Ok(if stats.skipped.is_empty() { ExitCode::Success } else { ExitCode::Failed })
}
