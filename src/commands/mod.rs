//! One module per subcommand; each parses nothing and prints what its users need.

pub mod approve;
pub mod cancel;
pub mod completions;
pub mod explain;
pub mod follow;
pub mod gc;
pub mod logs;
pub mod rebuild;
pub mod reports;
pub mod resume;
pub mod run;
pub mod schedule;
pub mod serve;
pub mod status;
pub mod validate;
pub mod verify;
pub mod watch;
