//! `keelson-runtime`: the CRI runtime daemon (no subcommand) and its operator subcommands.

mod commands;

use clap::Parser;

fn main() {
    let cli = commands::Cli::parse();
    if let Err(e) = commands::run(cli) {
        eprintln!("keelson-runtime: {e:#}");
        std::process::exit(1);
    }
}
