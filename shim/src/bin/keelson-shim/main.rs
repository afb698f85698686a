//! `keelson-shim`: the per-container monitor started by keelson-runtime (`run`), and one-shot
//! `exec` in a running container. Single-threaded, no async runtime: libcontainer is only safe
//! to call from a single-threaded process.

mod attachers;
mod cli;
mod commands;
mod console;
mod container;
mod crilog;
mod detach;
mod logging;
mod monitor;
mod oom;
mod procinfo;
mod signals;
mod tenant;

use std::process::ExitCode;

use cli::Command;

fn main() -> ExitCode {
    let args: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect();
    let Ok(args) = args else {
        eprintln!("keelson-shim: arguments must be valid UTF-8");
        return ExitCode::from(2);
    };
    let cli = match cli::parse(&args) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("keelson-shim: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Help => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("keelson-shim {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Run(args) => {
            detach::close_inherited_fds(args.ready_fd);
            // libcgroups warns about every v1 controller the host lacks, on every start.
            logging::init(cli.log_format, "info,libcgroups::v1::manager=error");
            commands::run::run(args)
        }
        Command::Exec(args) => {
            detach::close_inherited_fds(args.result_fd.into_iter().chain(args.console_socket_fd));
            if !args.stream {
                // exec's stderr goes back to the runtime: keep it to errors and the final reason.
                logging::init(cli.log_format, "error");
            }
            // With --stream, stderr is the process's own stream: the helper logs nothing and
            // reports through --result-fd.
            commands::exec::exec(args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The last stderr line is always this one-line reason.
            eprintln!("keelson-shim: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
