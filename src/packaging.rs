//! The man pages (`avala-mirror(1)`, one per subcommand) and the bash, zsh and
//! fish completions, written from the clap definitions so they cannot drift
//! from the command line (`cargo run --example generate`). The Debian package
//! ships what this writes into `packaging/`; a test checks that copy is current.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// The name the binary is installed as.
const BIN: &str = "avala-mirror";

/// Writes `man/*.1` and `completions/*` under `out`.
pub fn generate(out: &Path) -> anyhow::Result<()> {
    let cmd = Cli::command();
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing man pages into {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), BIN, &completions).with_context(
            || format!("writing {shell} completions into {}", completions.display()),
        )?;
    }
    Ok(())
}
