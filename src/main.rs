use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = avala_mirror::cli::Cli::parse();
    ExitCode::from(avala_mirror::cli::run(cli))
}
