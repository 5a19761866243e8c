//! `--junit FILE` and `--metrics-file PATH`: what `run`, `resume` and `approve --resume`
//! write once their session has ended (succeeded, failed, paused or interrupted), or when
//! the run had already succeeded and there was nothing to do.

use std::path::{Path, PathBuf};

use crate::cli::{Global, ReportArgs};
use crate::error::{Error, io_at};
use crate::exit::ExitCode;
use crate::projection::Projection;
use crate::report::note;
use crate::store::{RunsDir, load_run};

/// The reports asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct Reports {
    junit: Option<PathBuf>,
    metrics: Option<PathBuf>,
}

impl Reports {
    pub fn new(args: &ReportArgs) -> Reports {
        Reports { junit: args.junit.clone(), metrics: args.metrics_file.clone() }
    }

    /// Checks, before anything starts, that each report can go where it was asked to: its
    /// directory exists and the path is not a directory. A typo then costs a usage error,
    /// not a whole run whose report is lost.
    pub fn check(&self) -> Result<(), Error> {
        for (option, path) in self.paths() {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if !dir.is_dir() {
                return Err(Error::Usage(format!(
                    "{option} {}: directory {} does not exist",
                    path.display(),
                    dir.display()
                )));
            }
            if path.is_dir() {
                return Err(Error::Usage(format!("{option} {}: is a directory", path.display())));
            }
        }
        Ok(())
    }

    fn paths(&self) -> impl Iterator<Item = (&'static str, &PathBuf)> {
        self.junit.iter().map(|p| ("--junit", p)).chain(self.metrics.iter().map(|p| ("--metrics-file", p)))
    }

    /// Writes the reports after the session of run `id` ended with `code`. A report that
    /// cannot be written is an error on stderr; the exit code still tells how the run went,
    /// except that a success becomes 74 (I/O error), so that cron or CI notices.
    pub fn write(&self, g: &Global, id: &str, code: ExitCode) -> ExitCode {
        let runs = g.runs();
        let mut failed = false;
        if let Some(path) = &self.junit
            && let Err(e) = write_junit(&runs, id, path)
        {
            note(&format!("error: cannot write the JUnit report {}: {e}", path.display()));
            failed = true;
        }
        if let Some(path) = &self.metrics
            && let Err(e) = write_metrics(&runs, path)
        {
            note(&format!("error: cannot write the metrics file {}: {e}", path.display()));
            failed = true;
        }
        if failed && code == ExitCode::Success { ExitCode::Io } else { code }
    }
}

/// The run's state as its journal says now (the session that wrote it has ended).
fn write_junit(runs: &RunsDir, id: &str, path: &Path) -> Result<(), Error> {
    let dir = runs.run_dir(id);
    let loaded = load_run(&dir, true, u64::MAX)?;
    crate::junit::write(path, &loaded.state, &dir).map_err(io_at(path))
}

/// Every flow's last run, from the projection brought up to date with the journals.
fn write_metrics(runs: &RunsDir, path: &Path) -> Result<(), Error> {
    let mut projection = Projection::open(runs)?;
    if projection.is_fresh() {
        projection.rebuild()?;
    } else {
        projection.catch_up()?;
    }
    let flows = crate::metrics::collect(projection.connection()).map_err(|source| {
        Error::Projection(crate::projection::ProjectionError::Sqlite {
            path: projection.path().to_path_buf(),
            source,
        })
    })?;
    crate::metrics::write(path, &flows).map_err(io_at(path))
}
