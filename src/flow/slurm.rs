//! Where a step runs: `executor = "local" | "slurm"`, and the `[slurm]` options for
//! the steps that go to a Slurm cluster.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::error::Source;
use super::raw::RawSlurm;
use super::{FlowError, FlowErrorKind, duration};

/// At most this many Slurm jobs of one run are submitted at once, unless `[slurm]
/// max_jobs` says otherwise; the cluster queues them, this only bounds the runner's share.
pub const DEFAULT_MAX_JOBS: usize = 100;
/// The longest wait between two status queries of a run's jobs, unless `[slurm] poll`
/// says otherwise. Queries are a second apart after a change and back off to this.
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);

/// Which executor runs a step's command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// A child process of the runner, on this machine.
    Local,
    /// A batch job submitted with `sbatch`.
    Slurm,
}

impl ExecutorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Local => "local",
            ExecutorKind::Slurm => "slurm",
        }
    }

    pub fn parse(s: &str) -> Option<ExecutorKind> {
        match s {
            "local" => Some(ExecutorKind::Local),
            "slurm" => Some(ExecutorKind::Slurm),
            _ => None,
        }
    }
}

/// `sbatch` options of a step: the flow's `[slurm]` table with the step's own `slurm`
/// table over it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    /// `--time`: Slurm's own limit, which cancels the job even when no runner watches it.
    pub time: Option<Duration>,
    pub cpus: Option<u32>,
    /// `--mem`, as Slurm writes it (`512M`, `4G`).
    pub mem: Option<String>,
    /// Extra `sbatch` arguments, after the runner's own.
    pub args: Vec<String>,
}

impl SlurmOptions {
    /// `self` with what `over` sets taken from `over`; `args` add up.
    pub fn merged(&self, over: &SlurmOptions) -> SlurmOptions {
        SlurmOptions {
            partition: over.partition.clone().or_else(|| self.partition.clone()),
            time: over.time.or(self.time),
            cpus: over.cpus.or(self.cpus),
            mem: over.mem.clone().or_else(|| self.mem.clone()),
            args: self.args.iter().chain(&over.args).cloned().collect(),
        }
    }

    /// The `sbatch` arguments these options stand for.
    pub fn sbatch_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = &self.partition {
            out.push(format!("--partition={p}"));
        }
        if let Some(t) = self.time {
            out.push(format!("--time={}", slurm_time(t)));
        }
        if let Some(c) = self.cpus {
            out.push(format!("--cpus-per-task={c}"));
        }
        if let Some(m) = &self.mem {
            out.push(format!("--mem={m}"));
        }
        out.extend(self.args.iter().cloned());
        out
    }
}

/// Run-wide settings from the main flow's `[slurm]` table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlurmLimits {
    pub max_jobs: usize,
    pub poll: Duration,
}

impl Default for SlurmLimits {
    fn default() -> Self {
        SlurmLimits { max_jobs: DEFAULT_MAX_JOBS, poll: DEFAULT_POLL }
    }
}

/// Slurm's `--time` format, `D-HH:MM:SS`, rounded up to the next whole second.
pub fn slurm_time(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    format!("{days}-{:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Arguments the runner sets itself: a flow that passes them would break submission
/// (`--wait`, `--wrap`), the write-ahead hold, or where the job's files go.
const OWN_ARGS: &[&str] = &[
    "--parsable",
    "--hold",
    "-H",
    "--job-name",
    "-J",
    "--output",
    "-o",
    "--error",
    "-e",
    "--chdir",
    "-D",
    "--wrap",
    "--wait",
    "-W",
    "--array",
    "-a",
    "--export",
    "--input",
    "-i",
    "--requeue",
    "--no-requeue",
];

/// Checks a `[slurm]` or step `slurm` table. `limits` is `Some` for the flow's table,
/// which may also set `max_jobs` and `poll`.
pub(super) fn build(
    src: &Source,
    field: &str,
    raw: Spanned<RawSlurm>,
    flow_level: bool,
) -> Result<(SlurmOptions, SlurmLimits), FlowError> {
    let at = raw.span().start;
    let raw = raw.into_inner();
    let err =
        |at: usize, message: String| src.error_at(at, FlowErrorKind::Slurm { field: field.into(), message });
    let mut limits = SlurmLimits::default();
    if !flow_level {
        if raw.max_jobs.is_some() {
            return Err(err(at, "`max_jobs` is for the flow's [slurm] table, not a step's".into()));
        }
        if raw.poll.is_some() {
            return Err(err(at, "`poll` is for the flow's [slurm] table, not a step's".into()));
        }
    }
    if let Some(m) = raw.max_jobs {
        limits.max_jobs = usize::try_from(*m.get_ref())
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .ok_or_else(|| err(m.span().start, "`max_jobs` must be between 1 and 100000".into()))?;
    }
    if let Some(p) = raw.poll {
        limits.poll = duration(src, &format!("{field}.poll"), &p, false)?;
    }
    let partition = match raw.partition {
        Some(p) if p.get_ref().is_empty() || p.get_ref().chars().any(|c| c.is_whitespace() || c == '=') => {
            return Err(err(p.span().start, format!("invalid partition name {:?}", p.get_ref())));
        }
        p => p.map(Spanned::into_inner),
    };
    let time = raw.time.map(|t| duration(src, &format!("{field}.time"), &t, false)).transpose()?;
    let cpus = match raw.cpus {
        Some(c) => Some(
            u32::try_from(*c.get_ref())
                .ok()
                .filter(|n| (1..=65_536).contains(n))
                .ok_or_else(|| err(c.span().start, "`cpus` must be between 1 and 65536".into()))?,
        ),
        None => None,
    };
    let mem = match raw.mem {
        Some(m) if !valid_mem(m.get_ref()) => {
            return Err(err(
                m.span().start,
                format!(
                    "`mem` = {:?} is not a Slurm memory size (examples: \"512M\", \"4G\", \"1T\")",
                    m.get_ref()
                ),
            ));
        }
        m => m.map(Spanned::into_inner),
    };
    let mut args = Vec::new();
    for a in raw.args.unwrap_or_default() {
        let name = a.get_ref().split('=').next().unwrap_or_default();
        if OWN_ARGS.contains(&name)
            || (name.len() > 2
                && OWN_ARGS.iter().any(|o| o.len() == 2 && name.starts_with(o) && !name.starts_with("--")))
        {
            return Err(err(
                a.span().start,
                format!(
                    "`{}` is set by the runner itself (it submits, holds, names and places every job)",
                    a.get_ref()
                ),
            ));
        }
        if !a.get_ref().starts_with('-') {
            return Err(err(
                a.span().start,
                format!(
                    "{:?} is not an option: `args` takes sbatch options such as \"--qos=low\"",
                    a.get_ref()
                ),
            ));
        }
        args.push(a.into_inner());
    }
    Ok((SlurmOptions { partition, time, cpus, mem, args }, limits))
}

/// `4096`, `512M`, `4G`: what `sbatch --mem` takes.
fn valid_mem(s: &str) -> bool {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T']);
    !digits.is_empty() && digits.len() + 1 >= s.len() && digits.chars().all(|c| c.is_ascii_digit())
}

/// `executor = "…"`.
pub(super) fn kind(src: &Source, field: &str, raw: &Spanned<String>) -> Result<ExecutorKind, FlowError> {
    ExecutorKind::parse(raw.get_ref()).ok_or_else(|| {
        src.error_at(
            raw.span().start,
            FlowErrorKind::Slurm {
                field: field.into(),
                message: format!("unknown executor {:?}: expected \"local\" or \"slurm\"", raw.get_ref()),
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_time_rounds_up_and_counts_days() {
        assert_eq!(slurm_time(Duration::from_secs(90)), "0-00:01:30");
        assert_eq!(slurm_time(Duration::from_millis(1500)), "0-00:00:02");
        assert_eq!(slurm_time(Duration::from_secs(2 * 86_400 + 3661)), "2-01:01:01");
    }

    #[test]
    fn memory_sizes() {
        for ok in ["4096", "512M", "4G", "1T"] {
            assert!(valid_mem(ok), "{ok}");
        }
        for bad in ["", "G", "4GB", "4 G", "-1", "4.5G"] {
            assert!(!valid_mem(bad), "{bad}");
        }
    }

    #[test]
    fn a_step_table_overrides_the_flow_table_and_adds_args() {
        let flow = SlurmOptions {
            partition: Some("a".into()),
            cpus: Some(2),
            args: vec!["--qos=x".into()],
            ..Default::default()
        };
        let step = SlurmOptions { cpus: Some(8), args: vec!["--nice=5".into()], ..Default::default() };
        let m = flow.merged(&step);
        assert_eq!(m.partition.as_deref(), Some("a"));
        assert_eq!(m.cpus, Some(8));
        assert_eq!(m.sbatch_args(), ["--partition=a", "--cpus-per-task=8", "--qos=x", "--nice=5"]);
    }
}
