//! The event vocabulary: everything that can happen to a run, as facts in the past tense.
//!
//! The state fold, the projection and the console all consume these same events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Declares the `Event` enum once, with the name each variant has on disk.
macro_rules! events {
    ($($(#[$doc:meta])* $name:ident($data:ty)),* $(,)?) => {
        #[derive(Clone, Debug, PartialEq)]
        pub enum Event {
            $($(#[$doc])* $name($data)),*
        }

        impl Event {
            /// The `type` written in the journal line.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Event::$name(_) => stringify!($name)),*
                }
            }

            /// The `data` object, serialised the same way on every path (live, resume, rebuild).
            pub fn data_json(&self) -> String {
                let result = match self {
                    $(Event::$name(d) => serde_json::to_string(d)),*
                };
                // Event data is plain structs, maps with string keys and numbers: infallible.
                result.unwrap_or_else(|e| unreachable!("event data serialises: {e}"))
            }

            /// Rebuilds an event from its `type` and `data` as read from the journal.
            pub fn from_parts(kind: &str, data: &str) -> Result<Event, String> {
                match kind {
                    $(stringify!($name) => serde_json::from_str(data)
                        .map(Event::$name)
                        .map_err(|e| format!("bad data for {kind}: {e}")),)*
                    other => Err(format!("unknown event type `{other}`")),
                }
            }
        }
    };
}

events! {
    /// The first event of every run.
    RunStarted(RunStarted),
    /// A new runner process took the run over after a stop or crash.
    RunResumed(RunResumed),
    /// A torn tail was cut from the journal on resume and kept aside.
    JournalRepaired(JournalRepaired),
    /// The run continues with an edited copy of its flow, as a user explicitly accepted.
    FlowChanged(FlowChanged),
    StepStarted(StepStarted),
    /// An attempt went to a cluster as a job (held until this is durable, then released).
    StepSubmitted(StepSubmitted),
    /// A submitted job was seen running, on this node.
    JobRunning(JobRunning),
    StepSucceeded(StepSucceeded),
    /// A successful receipt with the step's key was reused instead of running it.
    StepCached(StepCached),
    StepFailed(StepFailed),
    /// The attempt was stopped by a signal to the runner, or the runner died during it.
    StepInterrupted(StepInterrupted),
    /// The step's visit was decided without running it (condition false, not routed, or
    /// a need skipped).
    StepSkipped(StepSkipped),
    /// A router chose where to go after a successful visit: decided once, never again.
    RoutingDecided(RoutingDecided),
    /// A step called a flow (or a failed step's `on_failure` did): a frame is pushed and
    /// the callee's steps join the run.
    CallPushed(CallPushed),
    /// Every step of a frame is done: the frame pops and its caller carries on.
    CallReturned(CallReturned),
    /// A step is ready but needs a person's approval first; the run goes on without it.
    ApprovalRequested(ApprovalRequested),
    /// Someone approved or rejected a waiting step (`runner approve|reject`).
    ApprovalDecided(ApprovalDecided),
    /// A step's gate was checked on its outputs, before its result is recorded.
    GateEvaluated(GateEvaluated),
    /// A service's process exists; its command runs once this is durable.
    ServiceStarted(ServiceStarted),
    /// A service passed its health check (or, without one, was started).
    ServiceHealthy(ServiceHealthy),
    /// A service's process ended: stopped by the runner, or on its own.
    ServiceExited(ServiceExited),
    RunInterrupted(RunInterrupted),
    /// Nothing else can move and steps wait for approval: the runner exits 3.
    RunPaused(RunPaused),
    RunFinished(RunFinished),
}

impl Event {
    /// The step an event is about, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Event::StepStarted(e) => Some(&e.step),
            Event::StepSubmitted(e) => Some(&e.step),
            Event::JobRunning(e) => Some(&e.step),
            Event::StepSucceeded(e) => Some(&e.step),
            Event::StepCached(e) => Some(&e.step),
            Event::StepFailed(e) => Some(&e.step),
            Event::StepInterrupted(e) => Some(&e.step),
            Event::StepSkipped(e) => Some(&e.step),
            Event::RoutingDecided(e) => Some(&e.step),
            Event::CallPushed(e) => Some(&e.step),
            Event::CallReturned(e) => Some(&e.step),
            Event::ApprovalRequested(e) => Some(&e.step),
            Event::ApprovalDecided(e) => Some(&e.step),
            Event::GateEvaluated(e) => Some(&e.step),
            _ => None,
        }
    }

    /// Whether it is about a service (and changes no step).
    pub fn is_service(&self) -> bool {
        matches!(self, Event::ServiceStarted(_) | Event::ServiceHealthy(_) | Event::ServiceExited(_))
    }

    /// The (visit, attempt) of its step the event begins or ends, if any. (`CallReturned`
    /// names its frame instead, whose `CallPushed` carries the attempt.)
    pub fn attempt(&self) -> Option<(u32, u32)> {
        match self {
            Event::StepStarted(e) => Some((e.visit, e.attempt)),
            Event::StepSubmitted(e) => Some((e.visit, e.attempt)),
            Event::JobRunning(e) => Some((e.visit, e.attempt)),
            Event::StepSucceeded(e) => Some((e.visit, e.attempt)),
            Event::StepCached(e) => Some((e.visit, e.attempt)),
            Event::StepFailed(e) => Some((e.visit, e.attempt)),
            Event::StepInterrupted(e) => Some((e.visit, e.attempt)),
            Event::CallPushed(e) => Some((e.visit, e.attempt)),
            _ => None,
        }
    }

    /// Every step whose state the event changes: its step, and for a routing decision
    /// the steps it makes pending again.
    pub fn touched(&self) -> impl Iterator<Item = &str> {
        let reset = match self {
            Event::RoutingDecided(e) => e.reset.as_slice(),
            Event::CallPushed(e) => e.steps.as_slice(),
            _ => &[],
        };
        self.step().into_iter().chain(reset.iter().map(String::as_str))
    }
}

/// Who is driving the run: one per runner process that starts or resumes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub pid: u32,
    pub host: String,
    /// Linux boot id: a process id recorded under another boot cannot be alive now.
    pub boot_id: String,
    pub jobs: usize,
    pub runner_version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunStarted {
    pub run_id: String,
    /// Flow name (file stem).
    pub flow: String,
    /// The flow file as given on the command line.
    pub flow_path: String,
    /// blake3 of the flow file; `flow.toml` in the run directory must still match it.
    pub flow_hash: String,
    pub params: BTreeMap<String, String>,
    /// Directory the steps run in (where `runner run` was started).
    pub workdir: String,
    /// Step ids in flow order.
    pub steps: Vec<String>,
    pub journal_format: u32,
    pub session: Session,
    /// `--profile`: the gate profile the run uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// `--trigger-file`: the file this run is about (`runner watch` starts one run per
    /// arriving file). Journaled so that a resume gives steps the same `RUNNER_TRIGGER_FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_file: Option<String>,
    /// `--executor`: where steps run that say nothing themselves (a resume keeps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<crate::flow::ExecutorKind>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunResumed {
    pub session: Session,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalRepaired {
    /// Bytes cut from the end of the journal.
    pub dropped_bytes: u64,
    /// File (in the run directory) where the cut bytes were kept.
    pub kept_in: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowChanged {
    pub previous_hash: String,
    /// blake3 of the run's `flow.toml` from now on.
    pub flow_hash: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepStarted {
    pub step: String,
    pub visit: u32,
    pub attempt: u32,
    /// Process id of the attempt's shell; it leads its own process group (pgid = pid).
    pub pid: i32,
    /// Start time of that process in clock ticks since boot, to tell it from a reused pid.
    pub proc_start: u64,
    /// For a step with `cache = true`: why it runs instead of reusing a receipt (`forced`
    /// by --no-cache, `miss`: no successful receipt has its key, `stale: …`: one has, but
    /// its output files changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSubmitted {
    pub step: String,
    pub visit: u32,
    pub attempt: u32,
    pub executor: crate::flow::ExecutorKind,
    /// The cluster's id of the job (Slurm's job id).
    pub job_id: String,
    /// The job's name on the cluster, which names the run and the attempt.
    pub job_name: String,
    /// As in `StepStarted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRunning {
    pub step: String,
    pub visit: u32,
    pub attempt: u32,
    pub node: String,
}

/// The hashes of an attempt's `receipt.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptRef {
    pub key: String,
    /// For a success: the key with what the attempt produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepCached {
    pub step: String,
    pub visit: u32,
    pub attempt: u32,
    pub receipt: ReceiptRef,
    /// The attempt whose receipt was reused.
    pub from: crate::receipt::Source,
    /// Its `$RUNNER_OUTPUT` values, restored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// Its handoff, restored (and written again into this attempt's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Handoff>,
    /// The step's gate on the restored values (a warning shows as for a run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateEvaluated>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSucceeded {
    pub step: String,
    pub visit: u32,
    pub attempt: u32,
    pub duration_ms: u64,
    /// What the step wrote to `$RUNNER_OUTPUT`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// What the step wrote to `$RUNNER_HANDOFF` (and `$RUNNER_HANDOFF_META`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Handoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<ReceiptRef>,
}

/// A document one step hands to the steps that need it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    pub content_md: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSkipped {
    pub step: String,
    pub visit: u32,
    pub reason: String,
}

/// Where a routing decision came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingSource {
    /// A rule whose `if` held.
    Rule,
    /// The rule without `if`.
    Default,
    /// No rule held and there is no default: the run fails ("no route").
    Fallback,
}

impl RoutingSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingSource::Rule => "rule",
            RoutingSource::Default => "default",
            RoutingSource::Fallback => "fallback",
        }
    }
}

/// Candidates above this count go to a file under `routing/` instead of the event.
pub const INLINE_CANDIDATES: usize = 8;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingDecided {
    pub step: String,
    pub visit: u32,
    /// The successful attempt whose result was routed.
    pub attempt: u32,
    pub routing_source: RoutingSource,
    /// Index of the rule that decided (0-based), unless it is a fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    /// The step chosen; `None` when nothing could be chosen and the router failed.
    pub chosen: Option<String>,
    pub candidate_count: usize,
    /// The candidates, when there are at most `INLINE_CANDIDATES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<String>>,
    /// Otherwise the file (relative to the run directory) that lists them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_set_path: Option<String>,
    /// Steps a backward route made pending again, for a new visit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reset: Vec<String>,
    /// Why the router failed instead (no route, or a loop past `max_visits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Why an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// The command exited with a non-zero code.
    Exit,
    /// The command was killed by a signal nobody in the runner sent.
    Signal,
    /// The step ran past its `timeout` and was stopped.
    Timeout,
    /// The command could not be started at all.
    Spawn,
    /// The command succeeded but what it left in `$RUNNER_OUTPUT` or `$RUNNER_HANDOFF` is invalid.
    Outputs,
    /// The command succeeded but its outputs did not pass the step's gate.
    Gate,
    /// The command succeeded but a file it declared in `outputs` is missing.
    MissingOutput,
    /// A declared input file is missing or unreadable: the command was not started.
    Inputs,
    /// A service the step uses did not become healthy, or died while the step ran.
    Service,
    /// The cluster ended the job without the runner asking: its time limit, a node
    /// failure, preemption, or an `scancel` from outside.
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFailed {
    pub step: String,
    pub visit: u32,
    pub attempt: u32,
    pub reason: FailReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    pub message: String,
    pub duration_ms: u64,
    /// Present when another attempt follows after this delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<ReceiptRef>,
}

/// Why a frame was pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallReason {
    /// The step is `call = …`.
    Call,
    /// The step failed and its `on_failure` flow runs before it is retried, failed or continued.
    OnFailure,
}

impl CallReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CallReason::Call => "call",
            CallReason::OnFailure => "on_failure",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallPushed {
    /// 1, 2, 3… in the order frames are pushed.
    pub frame: u32,
    /// The calling step, and the visit and attempt the call belongs to.
    pub step: String,
    pub visit: u32,
    pub attempt: u32,
    pub reason: CallReason,
    /// The called flow's file as found (relative to the working directory when inside it).
    pub flow: String,
    /// Its copy in the run directory, which resume uses.
    pub copy: String,
    pub flow_hash: String,
    pub params: BTreeMap<String, String>,
    /// The callee's steps in flow order, with ids under the caller (`caller/step`).
    pub steps: Vec<String>,
    /// For `on_failure`: what happens to the step after the frame returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<crate::flow::Then>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallReturned {
    pub frame: u32,
    pub step: String,
    /// The callee's outputs (later steps win), which become the calling step's outputs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
}

/// Why an attempt stopped without a result of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterruptReason {
    /// The runner got SIGINT/SIGTERM and stopped the step.
    Signal,
    /// The runner died while the step ran; noticed by the next resume.
    RunnerDied,
    /// Someone ran `runner cancel`: stopped like on SIGTERM.
    Cancelled,
    /// A cluster job vanished without leaving its exit code: it ran, but its result is lost.
    JobLost,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepInterrupted {
    pub step: String,
    pub visit: u32,
    pub attempt: u32,
    pub reason: InterruptReason,
    /// For `runner_died`: whether processes of the attempt were still alive and were stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leftover_stopped: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequested {
    pub step: String,
    pub visit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Who may decide; empty means anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approved,
    Rejected,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDecided {
    pub step: String,
    pub visit: u32,
    pub decision: Decision,
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateOutcome {
    Pass,
    Warn,
    Block,
}

impl GateOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            GateOutcome::Pass => "pass",
            GateOutcome::Warn => "warn",
            GateOutcome::Block => "block",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateEvaluated {
    pub step: String,
    pub visit: u32,
    pub attempt: u32,
    pub outcome: GateOutcome,
    /// The conditions as checked (a profile's, if the run has one).
    pub pass: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Every value the conditions read, by the name they read it with
    /// (`steps.test.outputs.coverage`); `null` when absent.
    pub values: BTreeMap<String, Option<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceStarted {
    pub service: String,
    /// 1 for the service's first start in the run, then 2, 3, …
    pub instance: u32,
    pub pid: i32,
    pub proc_start: u64,
    /// 0 for a start a step asked for; n for the n-th restart after a failure (counted
    /// per runner session).
    pub restart: u32,
    /// The step whose start needed it.
    pub for_step: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceHealthy {
    pub service: String,
    pub instance: u32,
    /// Health checks made, the passing one included (0: the service has no check).
    pub checks: u32,
    /// From its start until healthy.
    pub after_ms: u64,
}

/// Why a service's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceEnd {
    /// The runner stopped it: no step needs it any more, or the run ended or was stopped.
    Stopped,
    /// The runner stopped it because it did not become healthy within `start_timeout`.
    StartTimeout,
    /// It exited (or was killed) while the runner still needed it.
    Died,
    /// Its runner died; the next session stopped what was left of it.
    Lost,
}

impl ServiceEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceEnd::Stopped => "stopped",
            ServiceEnd::StartTimeout => "start_timeout",
            ServiceEnd::Died => "died",
            ServiceEnd::Lost => "lost",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceExited {
    pub service: String,
    pub instance: u32,
    pub reason: ServiceEnd,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    pub message: String,
    /// It died with `degraded = "continue"`: the steps using it went on, the run is degraded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub degraded: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunPaused {
    /// Steps waiting for approval, in flow order.
    pub waiting: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInterrupted {
    pub signal: String,
    /// Who cancelled the run with `runner cancel`, when that was the signal's cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Succeeded,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFinished {
    pub outcome: RunOutcome,
    /// Steps that failed for good, in flow order.
    pub failed_steps: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_type_and_data() {
        let e = Event::StepFailed(StepFailed {
            step: "a".into(),
            visit: 1,
            attempt: 2,
            reason: FailReason::Timeout,
            exit_code: None,
            signal: Some("SIGTERM".into()),
            message: "timed out after 1s".into(),
            duration_ms: 1000,
            retry_in_ms: Some(2000),
            receipt: None,
        });
        assert_eq!(e.kind(), "StepFailed");
        let back = Event::from_parts(e.kind(), &e.data_json()).expect("parses");
        assert_eq!(back, e);
        assert!(Event::from_parts("Nope", "{}").is_err());
        assert!(Event::from_parts("StepSucceeded", "{\"step\":1}").is_err());
    }
}
