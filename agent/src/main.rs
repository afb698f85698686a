//! Placeholder entry point until this component's issue lands.
use clap::Parser;

/// Not built yet: see README.md for what works today.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("{}: not implemented yet", env!("CARGO_PKG_NAME"));
    std::process::exit(2);
}
