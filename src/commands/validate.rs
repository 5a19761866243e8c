//! `runner validate`: parse and check flow files; run nothing.

use serde_json::json;

use crate::cli::{Global, ValidateArgs};
use crate::error::Error;
use crate::exit::ExitCode;
use crate::flow::Flow;
use crate::report::{note, print};

pub fn validate(g: &Global, args: ValidateArgs) -> Result<ExitCode, Error> {
    let mut failed = false;
    let mut report = Vec::new();
    for path in &args.flows {
        let cwd = std::env::current_dir().unwrap_or_default();
        match Flow::load(path).and_then(|f| crate::flow::check_calls(&f, &cwd).map(|_| f)) {
            Ok(flow) => {
                if !g.json && !g.quiet {
                    let _ = print(&format!("{}: ok ({} steps)", path.display(), flow.steps.len()));
                }
                report.push(json!({"flow": path, "ok": true, "steps": flow.steps.len()}));
            }
            Err(e) => {
                failed = true;
                if !g.json {
                    note(&format!("error: {e}"));
                }
                report.push(json!({"flow": path, "ok": false, "error": e.to_string()}));
            }
        }
    }
    if g.json {
        let _ = print(&serde_json::Value::Array(report).to_string());
    }
    Ok(if failed { ExitCode::Usage } else { ExitCode::Success })
}
