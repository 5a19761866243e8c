//! The command line: what users type, as clap definitions, and the dispatch to commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::commands;
use crate::error::Error;
use crate::exit::{EXIT_CODES_HELP, ExitCode};
use crate::report::Verbosity;
use crate::store::RunsDir;

/// A resumable batch runner driven by files on disk.
///
/// A flow is a TOML file of steps. Every run is a directory of append-only journals; after
/// any crash, `runner resume` continues from the last completed step.
#[derive(Debug, Parser)]
#[command(name = "runner", version, after_help = EXIT_CODES_HELP, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Directory that holds the runs and the projection
    #[arg(long, global = true, env = "RUNNER_RUNS_DIR", default_value = "runs", value_name = "DIR")]
    pub runs_dir: PathBuf,
    /// Print machine-readable JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors and the final result
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more detail (process ids, paths)
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

impl Global {
    pub fn runs(&self) -> RunsDir {
        RunsDir::new(self.runs_dir.clone())
    }

    pub fn verbosity(&self) -> Verbosity {
        match (self.quiet, self.verbose) {
            (true, _) => Verbosity::Quiet,
            (_, true) => Verbosity::Verbose,
            _ => Verbosity::Normal,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a run of a flow (or continue it, if --run-id names an existing run)
    Run(RunArgs),
    /// Continue a run after a failure, a crash or an interruption
    Resume(ResumeArgs),
    /// Show runs, or the steps of one run
    Status(StatusArgs),
    /// Print the output of a run's steps
    Logs(LogsArgs),
    /// Approve a step that waits for approval (a live run goes on at once, a paused one on its next resume or with --resume)
    Approve(DecideArgs),
    /// Reject a step that waits for approval: it fails (or routes back, if it is a router)
    Reject(DecideArgs),
    /// Check flow files without running anything
    Validate(ValidateArgs),
    /// Check a run's journal: every checksum, the chain, and the snapshot
    Verify(VerifyArgs),
    /// Say why a step ran instead of being taken from the cache (what changed since)
    Explain(ExplainArgs),
    /// Drop the SQLite projection and rebuild it from every run's journal
    RebuildProjection,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The flow file, e.g. flows/nightly.toml
    pub flow: PathBuf,
    /// Set a parameter the flow declares (repeatable); steps see it as $RUNNER_PARAM_<NAME>
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Name the run; if a run with this id exists, it is resumed instead of started again
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// How many steps may run at once (default: number of CPUs)
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Check gates with the thresholds of this profile ([profiles.NAME] in the flow)
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Run every step, even those whose cached receipt matches
    #[arg(long)]
    pub no_cache: bool,
    /// Read values of the flow's secrets from this dotenv file (it wins over the environment)
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    #[command(flatten)]
    pub reports: ReportArgs,
}

/// Reports written when the session ends, for CI and cron.
#[derive(Debug, Clone, Default, Args)]
pub struct ReportArgs {
    /// When the session ends, write the run as a JUnit XML test report to FILE (one
    /// testcase per step visit), for the test views of GitLab, Jenkins and GitHub
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// When the session ends, write the last run of every flow as Prometheus metrics to PATH
    /// (node-exporter textfile collector: temp file and rename)
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The run whose step waits
    #[arg(long, value_name = "ID")]
    pub run_id: String,
    /// The waiting step
    #[arg(long, value_name = "STEP")]
    pub step: String,
    /// Who decides (default: the current user name); must be one of the step's approvers
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
    /// Why; kept in the journal
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    /// Continue the run right away, as `runner resume` would
    #[arg(long)]
    pub resume: bool,
    /// With --resume: how many steps may run at once (default: number of CPUs)
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..), requires = "resume")]
    pub jobs: Option<u32>,
    /// With --resume: read secret values from this dotenv file
    #[arg(long, value_name = "FILE", requires = "resume")]
    pub env_file: Option<PathBuf>,
    /// With --resume: write a JUnit XML report of the run to FILE when the session ends
    #[arg(long, value_name = "FILE", requires = "resume")]
    pub junit: Option<PathBuf>,
    /// With --resume: write Prometheus metrics of every flow to PATH when the session ends
    #[arg(long, value_name = "PATH", requires = "resume")]
    pub metrics_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["run_id", "last"]))]
pub struct ResumeArgs {
    /// The run to continue
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Continue the most recently started run (of FLOW, if given)
    #[arg(long, value_name = "FLOW", num_args = 0..=1, default_missing_value = "")]
    pub last: Option<String>,
    /// How many steps may run at once (default: number of CPUs)
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Continue although the run's copy of its flow (runs/ID/flow.toml) was edited; the
    /// steps must stay the same. The change is recorded in the journal
    #[arg(long)]
    pub accept_flow_change: bool,
    /// Run every step, even those whose cached receipt matches
    #[arg(long)]
    pub no_cache: bool,
    /// Read values of the flow's secrets from this dotenv file (they are never stored, so
    /// a resume needs them again)
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    #[command(flatten)]
    pub reports: ReportArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show the steps of this run
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Show one step of the run in detail: visits, attempts, outputs, handoff, routes
    #[arg(long, value_name = "STEP", requires = "run_id")]
    pub step: Option<String>,
    /// List only runs with steps waiting for approval
    #[arg(long, conflicts_with = "run_id")]
    pub waiting: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[arg(long, value_name = "ID")]
    pub run_id: String,
    /// Only this step
    #[arg(long, value_name = "STEP")]
    pub step: Option<String>,
    /// Only this attempt (default: the latest attempt of each step)
    #[arg(long, value_name = "N", requires = "step")]
    pub attempt: Option<u32>,
    /// Of this visit of a step that a loop ran more than once (default: the latest)
    #[arg(long, value_name = "N", requires = "step")]
    pub visit: Option<u32>,
    /// Only this stream, printed as is without headers
    #[arg(long, value_parser = ["stdout", "stderr"])]
    pub stream: Option<String>,
    /// Only this service's log (its stdout and stderr, line by line), printed as is
    #[arg(long, value_name = "NAME", conflicts_with_all = ["step", "stream"])]
    pub service: Option<String>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Flow files to check
    #[arg(required = true)]
    pub flows: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[arg(long, value_name = "ID")]
    pub run_id: String,
    #[arg(long, value_name = "STEP")]
    pub step: String,
    /// Of this visit of a step that a loop ran more than once (default: the latest)
    #[arg(long, value_name = "N")]
    pub visit: Option<u32>,
    /// This attempt (default: the latest)
    #[arg(long, value_name = "N")]
    pub attempt: Option<u32>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[arg(long, value_name = "ID")]
    pub run_id: String,
}

/// Parses the command line, runs the command and turns the outcome into an exit code.
pub fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::Usage.into() } else { ExitCode::Success.into() };
        }
    };
    // A panic is a bug; its message is already printed. Exit with the documented code
    // rather than Rust's 101 (running steps were killed when their session dropped).
    match std::panic::catch_unwind(|| dispatch(cli)) {
        Ok(Ok(code)) => code.into(),
        Ok(Err(e)) if e.is_broken_pipe() => ExitCode::Success.into(),
        Ok(Err(e)) => {
            crate::report::note(&format!("error: {e}"));
            e.exit_code().into()
        }
        Err(_) => ExitCode::Internal.into(),
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode, Error> {
    let g = &cli.global;
    match cli.command {
        Command::Run(args) => commands::run::run(g, args),
        Command::Resume(args) => commands::resume::resume(g, args),
        Command::Status(args) => commands::status::status(g, args),
        Command::Logs(args) => commands::logs::logs(g, args),
        Command::Approve(args) => commands::approve::decide(g, args, crate::journal::Decision::Approved),
        Command::Reject(args) => commands::approve::decide(g, args, crate::journal::Decision::Rejected),
        Command::Validate(args) => commands::validate::validate(g, args),
        Command::Verify(args) => commands::verify::verify(g, args),
        Command::Explain(args) => commands::explain::explain(g, args),
        Command::RebuildProjection => commands::rebuild::rebuild(g),
    }
}

/// `--jobs`, defaulting to the number of CPUs.
pub fn jobs(arg: Option<u32>) -> usize {
    arg.map(|j| j as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}
