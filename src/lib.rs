//! `runner`: a resumable batch runner driven by files on disk.
//!
//! The journal is the truth (`journal`), the state is its fold (`state`), the scheduler
//! decides what runs next (`scheduler`), the executor runs it (`executor`), a session ties
//! them together for one runner process (`session`), and the projection is a SQLite fold
//! of every run (`projection`). `main.rs` only maps `cli::main` to an exit code.

pub mod cli;
pub mod commands;
pub mod error;
pub mod executor;
pub mod exit;
pub mod expr;
pub mod faults;
pub mod fileset;
pub mod flow;
pub mod fsutil;
pub mod health;
pub mod journal;
pub mod junit;
pub mod metrics;
pub mod outputs;
pub mod projection;
pub mod receipt;
pub mod report;
pub mod schedule;
pub mod scheduler;
pub mod secrets;
pub mod serve;
pub mod session;
pub mod state;
pub mod store;
