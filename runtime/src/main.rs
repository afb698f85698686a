//! `keelson-runtime`: the CRI runtime daemon (no subcommand) and its operator subcommands.

mod commands;

use clap::Parser;

fn main() {
    // The pod PID namespace holder: dispatched before clap and logging, so it forks while still
    // single-threaded (see sandbox::pidns).
    if std::env::args().nth(1).as_deref() == Some("pod-init") {
        keelson_runtime::sandbox::pidns::pod_init_main();
    }
    let cli = commands::Cli::parse();
    if let Err(e) = commands::run(cli) {
        eprintln!("keelson-runtime: {e:#}");
        std::process::exit(1);
    }
}
