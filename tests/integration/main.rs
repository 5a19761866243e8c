//! End-to-end tests: the real binary, real processes, real files, real signals.

mod util;

mod calls;
mod chaos;
mod concurrency;
mod crash;
mod disk;
mod examples;
mod gates;
mod gc;
mod golden;
mod inputs;
mod journal;
mod ops;
mod projection;
mod receipts;
mod reports;
mod schedule;
mod secrets;
mod semantics;
mod serve;
mod services;
mod slurm;
mod supervision;
mod watch;
