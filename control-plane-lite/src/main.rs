//! `keelson-server`: parses flags and hands over to the serve command.

mod commands;
mod malloc;

use clap::Parser;

fn main() -> std::process::ExitCode {
    malloc::tune();
    let cli = commands::serve::Cli::parse();
    commands::init_tracing(&cli.log_format);
    match commands::serve::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keelson-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
