//! The live display on a terminal: an overall bar (steps done of all, elapsed, ETA) and a
//! line per running step with its elapsed time. Everything else the console prints goes
//! above the bars through [`console_line`], so bars and lines never overwrite each other.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How the console shows a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Progress {
    /// Bars on a terminal, plain lines otherwise (and under CI).
    #[default]
    Auto,
    Bars,
    Plain,
}

impl Progress {
    /// Whether bars are drawn: asked for, or `auto` on a terminal outside CI.
    pub fn bars(self) -> bool {
        match self {
            Progress::Bars => true,
            Progress::Plain => false,
            Progress::Auto => std::io::stderr().is_terminal() && std::env::var_os("CI").is_none(),
        }
    }
}

/// The bars while they are drawn; lines printed meanwhile go above them.
static ACTIVE: OnceLock<Mutex<Option<MultiProgress>>> = OnceLock::new();

fn active() -> &'static Mutex<Option<MultiProgress>> {
    ACTIVE.get_or_init(|| Mutex::new(None))
}

/// Prints one line on stderr, above the bars if they are drawn.
pub fn console_line(text: &str) {
    let guard = active().lock().unwrap_or_else(|e| e.into_inner());
    match guard.as_ref() {
        Some(m) if !m.is_hidden() => {
            let _ = m.println(text);
        }
        _ => {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        }
    }
}

/// The bars of one session.
pub struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    running: Mutex<HashMap<(String, u32), ProgressBar>>,
}

impl Bars {
    pub fn new(total: u64) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let overall = multi.add(ProgressBar::new(total));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} steps  {elapsed_precise}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        overall.set_prefix("run");
        overall.enable_steady_tick(Duration::from_millis(200));
        *active().lock().unwrap_or_else(|e| e.into_inner()) = Some(multi.clone());
        Bars { multi, overall, running: Mutex::new(HashMap::new()) }
    }

    /// A step's attempt began: a line of its own, with its elapsed time.
    pub fn started(&self, label: &str, attempt: u32) {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("  {spinner} {prefix} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(label.to_string());
        if attempt > 1 {
            bar.set_message(format!("(attempt {attempt})"));
        }
        bar.enable_steady_tick(Duration::from_millis(100));
        let old =
            self.running.lock().unwrap_or_else(|e| e.into_inner()).insert((label.to_string(), attempt), bar);
        if let Some(old) = old {
            old.finish_and_clear();
        }
    }

    /// A step's attempt ended: its line goes.
    pub fn ended(&self, label: &str, attempt: u32) {
        let bar =
            self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&(label.to_string(), attempt));
        if let Some(bar) = bar {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }

    /// Steps done (succeeded, failed, skipped, …) of all; the ETA shows once known.
    pub fn set_done(&self, done: u64, total: u64) {
        self.overall.set_length(total);
        self.overall.set_position(done);
        let eta = self.overall.eta();
        if done > 0 && done < total && !eta.is_zero() {
            self.overall.set_message(format!("ETA {}", super::human(eta)));
        } else {
            self.overall.set_message("");
        }
    }

    /// Clears the bars; lines go straight to stderr again.
    pub fn finish(&self) {
        *active().lock().unwrap_or_else(|e| e.into_inner()) = None;
        for (_, bar) in self.running.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            bar.finish_and_clear();
        }
        self.overall.finish_and_clear();
        let _ = self.multi.clear();
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}
