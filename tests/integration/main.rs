//! End-to-end tests: the real binary, real processes, real files, real signals.

mod util;

mod crash;
mod golden;
mod inputs;
mod journal;
mod projection;
mod supervision;
