//! Exit codes: the one contract cron and CI read.

/// Every exit code `runner` uses. Documented in `--help` and the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// The run completed successfully, or was already complete.
    Success,
    /// The run failed: a step failed after its retries. (`verify`: damage found;
    /// `rebuild-projection`: some runs could not be read.)
    Failed,
    /// Usage error, invalid flow or input, unknown run, or a damaged journal: nothing started.
    Usage,
    /// The run is paused, waiting for a human approval.
    Paused,
    /// The run is locked by another live runner process.
    Locked,
    /// A bug in the runner itself.
    Internal,
    /// Reading or writing the runs directory failed (disk full, permissions). Nothing past
    /// the failure was acknowledged; fix the cause and resume.
    Io,
    /// Interrupted by SIGINT; steps were stopped and the run is resumable.
    Interrupted,
    /// Interrupted by SIGTERM; steps were stopped and the run is resumable.
    Terminated,
}

impl ExitCode {
    pub fn code(self) -> u8 {
        match self {
            ExitCode::Success => 0,
            ExitCode::Failed => 1,
            ExitCode::Usage => 2,
            ExitCode::Paused => 3,
            ExitCode::Locked => 4,
            ExitCode::Internal => 70,
            ExitCode::Io => 74,
            ExitCode::Interrupted => 130,
            ExitCode::Terminated => 143,
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c.code())
    }
}

/// The table shown at the end of `runner --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
    0    run completed successfully (or was already complete)
    1    run failed: a step failed after its retries
    2    usage error, invalid flow or input, unknown run, damaged journal: nothing was started
    3    run paused: waiting for a human approval
    4    run is locked by another live runner process
    70   internal error (a bug: please report it)
    74   I/O error in the runs directory (or a --junit/--metrics-file report that could not
         be written); nothing past it was acknowledged, resume later
    130  interrupted by SIGINT; steps were stopped and the run is resumable
    143  interrupted by SIGTERM; steps were stopped and the run is resumable";
