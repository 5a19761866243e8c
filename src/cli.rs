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
    /// How `run`, `resume` and `approve --resume` show progress: bars on a terminal (auto: unless $CI is set),
    /// or plain timestamped lines, one per event
    #[arg(long, global = true, value_name = "MODE", default_value = "auto", value_parser = ["auto", "bars", "plain"])]
    pub progress: String,
}

impl Global {
    pub fn runs(&self) -> RunsDir {
        RunsDir::new(self.runs_dir.clone())
    }

    pub fn progress(&self) -> crate::report::Progress {
        match self.progress.as_str() {
            "bars" => crate::report::Progress::Bars,
            "plain" => crate::report::Progress::Plain,
            _ => crate::report::Progress::Auto,
        }
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
    /// Print what a run's steps and services wrote (with --follow, as they write it)
    Logs(LogsArgs),
    /// Approve a step that waits for approval (a live run goes on at once, a paused one on its next resume or with --resume)
    Approve(DecideArgs),
    /// Reject a step that waits for approval: it fails (or routes back, if it is a router)
    Reject(DecideArgs),
    /// Stop a live run from another shell: its steps are stopped as on SIGTERM, and the run
    /// is recorded as cancelled (and stays resumable)
    Cancel(CancelArgs),
    /// Check flow files without running anything
    Validate(ValidateArgs),
    /// Check a run's journal: every checksum, the chain, and the snapshot
    Verify(VerifyArgs),
    /// Say why a step ran instead of being taken from the cache (what changed since)
    Explain(ExplainArgs),
    /// Start a run of a flow for every file that arrives and matches a glob, once per file
    Watch(WatchArgs),
    /// Drop the SQLite projection and rebuild it from every run's journal
    RebuildProjection,
    /// Delete old runs (their directories and projection rows); live and paused runs are kept
    Gc(GcArgs),
    /// Start runs of the flows in a directory at the times their `schedule` names (foreground,
    /// for a container or a systemd unit)
    Schedule(ScheduleArgs),
    /// Serve a local dashboard, JSON API and live events over the runs (loopback by default)
    Serve(ServeArgs),
    /// Print a shell completion script
    Completions(CompletionsArgs),
    /// Print the manual page (roff), of runner or of one command
    Man(ManArgs),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("policy").required(true).multiple(true).args(["keep_last", "older_than"]))]
pub struct GcArgs {
    /// Keep the N most recently started runs of each flow
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Delete only runs whose last event is older than this: 30d, 2 days, 12h
    #[arg(long, value_name = "DURATION", value_parser = crate::flow::parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// Only runs of this flow (its name, or the path of its file)
    #[arg(long, value_name = "FLOW")]
    pub flow: Option<String>,
    /// Print what would be deleted, delete nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Directory of flow files: every `*.toml` in it with a `schedule` is scheduled
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// On start, what to do with slots that passed while no scheduler ran: `one` starts
    /// the latest of them, `none` starts none; either way the others are recorded as missed
    #[arg(long, value_enum, default_value = "one", value_name = "POLICY")]
    pub catch_up: crate::schedule::CatchUp,
    /// Passed on to every run it starts (`runner run --jobs N`)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Read schedules in UTC instead of the local time zone (TZ, /etc/localtime)
    #[arg(long)]
    pub utc: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; anything but loopback needs --token
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8700")]
    pub addr: std::net::SocketAddr,
    /// Bearer token for approve, reject, cancel and resume (default: one is made up and
    /// printed once at start)
    #[arg(long, env = "RUNNER_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How often an idle event stream sends a heartbeat
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = crate::flow::parse_duration_arg)]
    pub heartbeat: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The page of this command (e.g. `gc`) instead of runner's own
    #[arg(value_name = "COMMAND", conflicts_with = "out_dir")]
    pub command: Option<String>,
    /// Write runner.1 and a runner-COMMAND.1 page for every command into DIR
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
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
    /// How many local steps may run at once (default: number of CPUs; Slurm steps are
    /// bounded by [slurm] max_jobs instead)
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Check gates with the thresholds of this profile ([profiles.NAME] in the flow)
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// The file this run is about; steps see it as $RUNNER_TRIGGER_FILE (kept in the
    /// journal, so a resume gives them the same). `runner watch` sets it
    #[arg(long, value_name = "PATH")]
    pub trigger_file: Option<PathBuf>,
    /// Run every step, even those whose cached receipt matches
    #[arg(long)]
    pub no_cache: bool,
    /// Read values of the flow's secrets from this dotenv file (it wins over the environment)
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Where steps run that set no `executor` themselves: `local`, or `slurm` (submitted
    /// with sbatch; the runs directory must be on a filesystem the nodes share). It wins
    /// over [defaults] executor, and a resume keeps it
    #[arg(long, value_name = "EXECUTOR", value_parser = ["local", "slurm"])]
    pub executor: Option<String>,
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

/// Which run a command is about: `--run-id ID` (or a unique prefix of it) or `--last`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RunRef {
    /// The run: its id, or the start of it if no other run's id starts the same
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// The most recently started run (of FLOW, a flow name or file, if given)
    #[arg(long, value_name = "FLOW", num_args = 0..=1, default_missing_value = "")]
    pub last: Option<String>,
}

impl RunRef {
    /// The id of the run meant.
    pub fn resolve(&self, g: &Global) -> Result<String, crate::store::StoreError> {
        g.runs().select(self.run_id.as_deref(), self.last.as_deref())
    }
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    #[command(flatten)]
    pub run: RunRef,
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
pub struct ResumeArgs {
    #[command(flatten)]
    pub run: RunRef,
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
    /// Show the steps of this run (its id, or the start of it if no other run's id starts the same)
    #[arg(long, value_name = "ID", conflicts_with = "last")]
    pub run_id: Option<String>,
    /// Show the steps of the most recently started run (of FLOW, if given)
    #[arg(long, value_name = "FLOW", num_args = 0..=1, default_missing_value = "")]
    pub last: Option<String>,
    /// Show one step of the run in detail: visits, attempts, outputs, handoff, routes
    #[arg(long, value_name = "STEP")]
    pub step: Option<String>,
    /// List only runs with steps waiting for approval
    #[arg(long, conflicts_with_all = ["run_id", "last"])]
    pub waiting: bool,
    /// Print the run's events as they happen until it ends, then its steps; the exit code
    /// is the run's (0 succeeded, 1 failed, 3 paused, 130/143 interrupted)
    #[arg(long, short = 'f', conflicts_with = "step")]
    pub follow: bool,
    /// List only runs of this flow (a flow name or file)
    #[arg(long, value_name = "FLOW", conflicts_with_all = ["run_id", "last"])]
    pub flow: Option<String>,
    /// List only runs with this status
    #[arg(long, value_name = "STATUS", conflicts_with_all = ["run_id", "last"],
          value_parser = ["running", "succeeded", "failed", "interrupted", "waiting", "paused", "crashed"])]
    pub status: Option<String>,
    /// List only runs started within this long, e.g. 2d, 12h, "1 week"
    #[arg(long, value_name = "DURATION", conflicts_with_all = ["run_id", "last"], value_parser = crate::flow::parse_duration_arg)]
    pub since: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub run: RunRef,
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
    /// Keep printing what steps and services write, as they write it, until the run ends
    #[arg(long, short = 'f', conflicts_with_all = ["attempt", "visit", "stream"])]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Flow files to check
    #[arg(required = true)]
    pub flows: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub run: RunRef,
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
pub struct CancelArgs {
    #[command(flatten)]
    pub run: RunRef,
    /// Who cancels (default: the current user name); kept in the journal
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
    /// Return once the runner has the request, without waiting for it to stop
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the run to stop before giving up (exit 4)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::flow::parse_duration_arg)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The flow to run for each file, e.g. flows/import.toml
    pub flow: PathBuf,
    /// Which files: a glob relative to the working directory, e.g. 'inbox/*.csv' or
    /// 'data/**/*.json' (quote it, so the shell leaves it alone)
    #[arg(long, value_name = "GLOB")]
    pub on: String,
    /// How many steps each run may run at once (default: number of CPUs)
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// How many runs at once; more files wait in arrival order
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_runs: u32,
    /// A file is taken once its size and mtime have not changed for this long
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = crate::flow::parse_duration_arg)]
    pub settle: std::time::Duration,
    /// Run a file again whose run failed before (it is resumed: its failed steps run again)
    #[arg(long)]
    pub retry_failed: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub run: RunRef,
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
        Command::Cancel(args) => commands::cancel::cancel(g, args),
        Command::Validate(args) => commands::validate::validate(g, args),
        Command::Verify(args) => commands::verify::verify(g, args),
        Command::Explain(args) => commands::explain::explain(g, args),
        Command::Watch(args) => commands::watch::watch(g, args),
        Command::RebuildProjection => commands::rebuild::rebuild(g),
        Command::Gc(args) => commands::gc::gc(g, args),
        Command::Schedule(args) => commands::schedule::schedule(g, args),
        Command::Serve(args) => commands::serve::serve(g, args),
        Command::Completions(args) => commands::completions::completions(args),
        Command::Man(args) => commands::completions::man(args),
    }
}

/// `--jobs`, defaulting to the number of CPUs.
pub fn jobs(arg: Option<u32>) -> usize {
    arg.map(|j| j as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}
