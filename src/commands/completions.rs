//! `runner completions SHELL` and `runner man [COMMAND]`: generated from the clap
//! definitions in `cli` at run time, so they always match what this binary accepts.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::error::{Error, io_at};
use crate::exit::ExitCode;
use crate::report::note;

pub fn completions(args: CompletionsArgs) -> Result<ExitCode, Error> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "runner", &mut script);
    write_stdout(&script)
}

pub fn man(args: ManArgs) -> Result<ExitCode, Error> {
    // `runner help` is clap's, not ours: no page for it.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    if let Some(dir) = &args.out_dir {
        return write_pages(cmd, dir);
    }
    let page = match &args.command {
        None => cmd,
        Some(name) => cmd
            .find_subcommand(name)
            .cloned()
            .ok_or_else(|| Error::Usage(format!("no command `{name}`; `runner --help` lists them")))?,
    };
    write_stdout(&render(page, args.command.is_none())?)
}

/// One page in roff. The main page also tells where the commands' own pages come from
/// (it lists them as `runner-gc(1)` and so on).
fn render(cmd: clap::Command, main: bool) -> Result<Vec<u8>, Error> {
    let mut page = Vec::new();
    // Without this a command's page would name "gc" as its source, not "runner 0.1.0".
    let source = format!("runner {}", env!("CARGO_PKG_VERSION"));
    clap_mangen::Man::new(cmd).source(source).render(&mut page).map_err(io_at("stdout"))?;
    if main {
        use clap_mangen::roff::{Roff, bold, italic, roman};
        let mut more = Roff::new();
        more.control("SH", ["COMMAND PAGES"]).text([
            roman("Each command has its own page: "),
            bold("runner man"),
            roman(" "),
            italic("COMMAND"),
            roman(" prints it, and "),
            bold("runner man --out-dir"),
            roman(" "),
            italic("DIR"),
            roman(" writes runner.1 and every runner-"),
            italic("COMMAND"),
            roman(".1 into DIR, for man(1) to find (e.g. under ~/.local/share/man/man1)."),
        ]);
        page.extend_from_slice(more.to_roff().as_bytes());
    }
    Ok(title_first(page))
}

/// Moves the `.TH` line to the top: clap_mangen puts roff's apostrophe definitions
/// first, but man-pages(7) wants `.TH` as the first command and page indexers
/// (`mandb`'s `lexgrog`) look for it there.
fn title_first(page: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&page);
    let mut lines: Vec<&str> = text.lines().collect();
    let Some(at) = lines.iter().position(|l| l.starts_with(".TH ")) else { return page };
    let title = lines.remove(at);
    lines.insert(0, title);
    let mut out = lines.join("\n");
    out.push('\n');
    out.into_bytes()
}

/// `runner man --out-dir DIR`: every page as a file, for packagers and `MANPATH`.
fn write_pages(cmd: clap::Command, dir: &Path) -> Result<ExitCode, Error> {
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let mut pages = vec![(cmd.clone(), true)];
    pages.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).map(|s| (s.clone(), false)));
    for (page, main) in pages {
        let name = format!("{}.1", page.get_display_name().unwrap_or_else(|| page.get_name()));
        let path = dir.join(&name);
        std::fs::write(&path, render(page, main)?).map_err(io_at(&path))?;
        note(&format!("wrote {}", path.display()));
    }
    Ok(ExitCode::Success)
}

fn write_stdout(bytes: &[u8]) -> Result<ExitCode, Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush()).map_err(io_at("stdout"))?;
    Ok(ExitCode::Success)
}
