//! `tourniquet completions` and `tourniquet man`: shell completion and
//! manual pages, generated from [`super::command`] so they list every
//! command, flag and op verb this binary parses, and cannot fall behind it.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use clap_complete::Shell;

use super::{CliResult, Failure};

#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  tourniquet completions bash > /etc/bash_completion.d/tourniquet\n  \
tourniquet completions zsh > \"${fpath[1]}/_tourniquet\"\n  \
tourniquet completions fish > ~/.config/fish/completions/tourniquet.fish"
)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  tourniquet man | man -l -\n  \
tourniquet man --dir /usr/local/share/man/man1   # tourniquet.1, tourniquet-send.1, …")]
pub struct ManArgs {
    /// Write one page per command (tourniquet.1, tourniquet-flag-set.1, …)
    /// into this directory instead of printing the top-level page.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> CliResult {
    let mut cmd = super::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "tourniquet", &mut script);
    print_bytes(&script)
}

pub fn man(args: ManArgs) -> CliResult {
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Failure::error(format!("{}: {e}", dir.display())))?;
            clap_mangen::generate_to(super::command(), &dir)
                .map_err(|e| Failure::error(format!("{}: {e}", dir.display())))?;
            eprintln!("wrote the manual pages to {}", dir.display());
            Ok(())
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(super::command())
                .render(&mut page)
                .map_err(|e| Failure::error(format!("rendering the manual page: {e}")))?;
            print_bytes(&page)
        }
    }
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn print_bytes(bytes: &[u8]) -> CliResult {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::error(format!("writing to stdout: {e}"))),
    }
}
