//! Command line of `keelson-shim`: a small hand-written parser (the shim stays free of clap).

use std::path::PathBuf;
use std::time::Duration;

use crate::logging::LogFormat;

/// Where libcontainer keeps its per-container state when `--libcontainer-root` is not given.
pub const DEFAULT_LIBCONTAINER_ROOT: &str = "/run/keelson/runtime/libcontainer";

pub const USAGE: &str = "\
keelson-shim: the per-container monitor of keelson-runtime (started only by the runtime)

usage:
  keelson-shim [--log-format text|json] run --id ID --bundle DIR --state-dir DIR --log-path FILE
               [--libcontainer-root DIR] [--ready-fd N] [--stdin [--stdin-once]] [--tty]
               [--systemd-cgroup]
  keelson-shim [--log-format text|json] exec --id ID [--libcontainer-root DIR] [--timeout-secs N]
               [--env K=V]... [--cwd DIR]
               [--stream --result-fd N [--tty [--console-socket-fd N]]] -- CMD [ARG]...
  keelson-shim --help | --version

run   creates the container (libcontainer), detaches, writes `ok` (or `error: ...`) and a newline
      to --ready-fd once it is created, then serves <state-dir>/shim.sock until `shutdown`.
      Container stdout/stderr go to --log-path in the CRI log format and to every client of
      <state-dir>/attach.sock; attach clients' stdin goes to the container with --stdin
      (--stdin-once: closed after the first client closes it). --tty: the container gets a
      terminal (process.terminal in config.json must be true). --systemd-cgroup: cgroupsPath is
      systemd's slice:prefix:name and systemd (over D-Bus) creates the container's scope.
exec  runs CMD inside the running container, prints one JSON object
      {\"exit_code\",\"stdout_b64\",\"stderr_b64\",\"timed_out\",...} on stdout and exits 0;
      exits 1 with a one-line reason on stderr when CMD could not be run.
      --stream: CMD gets this process's fds 0/1/2 instead (with --tty, fd 0 must be a terminal
      and becomes its controlling terminal); {\"exit_code\",\"error\"} goes to --result-fd.
      --console-socket-fd N (with --tty): the terminal is allocated inside the container
      (its /dev/ptmx) instead; the master goes out over the unix socket N (SCM_RIGHTS) before
      CMD starts, and this process's own 0/1/2 are not used.

defaults: --libcontainer-root /run/keelson/runtime/libcontainer; log level from RUST_LOG
(default: info for run, error for exec); logs go to stderr, the last line of a failure is the reason
";

/// Errors in the command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("missing subcommand (run or exec); see --help")]
    MissingCommand,
    #[error("unknown subcommand {0:?}; see --help")]
    UnknownCommand(String),
    #[error("unknown flag {flag} for {command}")]
    UnknownFlag { command: &'static str, flag: String },
    #[error("flag {0} needs a value")]
    MissingValue(String),
    #[error("flag {flag} does not take a value")]
    UnexpectedValue { flag: String },
    #[error("required flag {flag} missing for {command}")]
    Required {
        command: &'static str,
        flag: &'static str,
    },
    #[error("invalid value {value:?} for {flag}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("exec needs a command after --")]
    MissingExecCommand,
    #[error("flag {flag} needs {needs}")]
    Needs {
        flag: &'static str,
        needs: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Version,
    Run(RunArgs),
    Exec(ExecArgs),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    pub log_format: LogFormat,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub id: String,
    pub bundle: PathBuf,
    pub state_dir: PathBuf,
    pub log_path: PathBuf,
    pub libcontainer_root: PathBuf,
    pub ready_fd: Option<i32>,
    pub stdin: bool,
    /// Close the container's stdin when the first attach client closes it (`--stdin-once`).
    pub stdin_once: bool,
    pub tty: bool,
    /// `--systemd-cgroup`: libcontainer's systemd cgroup manager (`cgroupsPath` is
    /// `slice:prefix:name`).
    pub systemd_cgroup: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecArgs {
    pub id: String,
    pub libcontainer_root: PathBuf,
    /// `None` (or `--timeout-secs 0`): no deadline.
    pub timeout: Option<Duration>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub tty: bool,
    /// `--stream`: the process gets this process's own fds 0/1/2; the result goes to `result_fd`.
    pub stream: bool,
    /// `--result-fd`: where `--stream` writes its one-line JSON result (inherited descriptor).
    pub result_fd: Option<i32>,
    /// `--console-socket-fd` (with `--tty`): allocate the terminal in the container and send its
    /// master over this inherited unix socket.
    pub console_socket_fd: Option<i32>,
    pub command: Vec<String>,
}

/// One `--flag value`, `--flag=value` or `--switch`.
struct Flags<'a> {
    args: &'a [String],
    pos: usize,
}

enum Item<'a> {
    Flag(&'a str, Option<&'a str>),
    DoubleDash,
    Positional(&'a str),
}

impl<'a> Flags<'a> {
    fn next(&mut self) -> Option<Item<'a>> {
        let arg = self.args.get(self.pos)?;
        self.pos += 1;
        Some(if arg == "--" {
            Item::DoubleDash
        } else if let Some(body) = arg.strip_prefix("--") {
            match body.split_once('=') {
                Some((name, value)) => Item::Flag(name, Some(value)),
                None => Item::Flag(body, None),
            }
        } else {
            Item::Positional(arg)
        })
    }

    fn value(&mut self, name: &str, inline: Option<&'a str>) -> Result<&'a str, CliError> {
        if let Some(v) = inline {
            return Ok(v);
        }
        match self.args.get(self.pos) {
            Some(v) if !v.starts_with("--") => {
                self.pos += 1;
                Ok(v)
            }
            _ => Err(CliError::MissingValue(format!("--{name}"))),
        }
    }

    fn rest(&self) -> &'a [String] {
        &self.args[self.pos..]
    }
}

fn switch(name: &str, inline: Option<&str>) -> Result<bool, CliError> {
    match inline {
        None => Ok(true),
        Some(_) => Err(CliError::UnexpectedValue {
            flag: format!("--{name}"),
        }),
    }
}

fn required<T>(v: Option<T>, command: &'static str, flag: &'static str) -> Result<T, CliError> {
    v.ok_or(CliError::Required { command, flag })
}

fn non_empty_path(flag: &'static str, value: &str) -> Result<PathBuf, CliError> {
    if value.is_empty() {
        return Err(CliError::Invalid {
            flag,
            value: value.to_owned(),
            reason: "empty path",
        });
    }
    Ok(PathBuf::from(value))
}

/// Parse the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Cli, CliError> {
    let mut log_format = LogFormat::Text;
    let mut flags = Flags { args, pos: 0 };
    loop {
        match flags.next() {
            None => return Err(CliError::MissingCommand),
            Some(Item::Flag("help", _)) => {
                return Ok(Cli {
                    log_format,
                    command: Command::Help,
                });
            }
            Some(Item::Flag("version", _)) => {
                return Ok(Cli {
                    log_format,
                    command: Command::Version,
                });
            }
            Some(Item::Flag("log-format", inline)) => {
                log_format = parse_log_format(flags.value("log-format", inline)?)?;
            }
            Some(Item::Flag(other, _)) => {
                return Err(CliError::UnknownFlag {
                    command: "keelson-shim",
                    flag: format!("--{other}"),
                });
            }
            Some(Item::DoubleDash) => return Err(CliError::MissingCommand),
            Some(Item::Positional("run")) => {
                let (command, log_format) = parse_run(&mut flags, log_format)?;
                return Ok(Cli {
                    log_format,
                    command,
                });
            }
            Some(Item::Positional("exec")) => {
                let (command, log_format) = parse_exec(&mut flags, log_format)?;
                return Ok(Cli {
                    log_format,
                    command,
                });
            }
            Some(Item::Positional(other)) => {
                return Err(CliError::UnknownCommand(other.to_owned()));
            }
        }
    }
}

fn parse_fd(flag: &'static str, value: &str) -> Result<i32, CliError> {
    value
        .parse::<i32>()
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| CliError::Invalid {
            flag,
            value: value.to_owned(),
            reason: "expected a file descriptor number",
        })
}

fn parse_log_format(value: &str) -> Result<LogFormat, CliError> {
    match value {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(CliError::Invalid {
            flag: "--log-format",
            value: value.to_owned(),
            reason: "expected text or json",
        }),
    }
}

fn parse_run(
    flags: &mut Flags<'_>,
    mut log_format: LogFormat,
) -> Result<(Command, LogFormat), CliError> {
    const CMD: &str = "run";
    let (mut id, mut bundle, mut state_dir, mut log_path) = (None, None, None, None);
    let mut libcontainer_root = PathBuf::from(DEFAULT_LIBCONTAINER_ROOT);
    let (mut ready_fd, mut stdin, mut stdin_once, mut tty) = (None, false, false, false);
    let mut systemd_cgroup = false;
    while let Some(item) = flags.next() {
        match item {
            Item::Flag("help", _) => return Ok((Command::Help, log_format)),
            Item::Flag("id", v) => id = Some(flags.value("id", v)?.to_owned()),
            Item::Flag("bundle", v) => {
                bundle = Some(non_empty_path("--bundle", flags.value("bundle", v)?)?)
            }
            Item::Flag("state-dir", v) => {
                state_dir = Some(non_empty_path("--state-dir", flags.value("state-dir", v)?)?)
            }
            Item::Flag("log-path", v) => {
                log_path = Some(non_empty_path("--log-path", flags.value("log-path", v)?)?)
            }
            Item::Flag("libcontainer-root", v) => {
                libcontainer_root =
                    non_empty_path("--libcontainer-root", flags.value("libcontainer-root", v)?)?
            }
            Item::Flag("ready-fd", v) => {
                ready_fd = Some(parse_fd("--ready-fd", flags.value("ready-fd", v)?)?)
            }
            Item::Flag("stdin", v) => stdin = switch("stdin", v)?,
            Item::Flag("stdin-once", v) => stdin_once = switch("stdin-once", v)?,
            Item::Flag("tty", v) => tty = switch("tty", v)?,
            Item::Flag("systemd-cgroup", v) => systemd_cgroup = switch("systemd-cgroup", v)?,
            Item::Flag("log-format", v) => {
                log_format = parse_log_format(flags.value("log-format", v)?)?
            }
            Item::Flag(other, _) => {
                return Err(CliError::UnknownFlag {
                    command: CMD,
                    flag: format!("--{other}"),
                });
            }
            Item::DoubleDash | Item::Positional(_) => {
                return Err(CliError::UnknownFlag {
                    command: CMD,
                    flag: flags.args[flags.pos - 1].clone(),
                });
            }
        }
    }
    let id = required(id, CMD, "--id")?;
    if id.is_empty() {
        return Err(CliError::Invalid {
            flag: "--id",
            value: id,
            reason: "empty id",
        });
    }
    if stdin_once && !stdin {
        return Err(CliError::Needs {
            flag: "--stdin-once",
            needs: "--stdin",
        });
    }
    Ok((
        Command::Run(RunArgs {
            id,
            bundle: required(bundle, CMD, "--bundle")?,
            state_dir: required(state_dir, CMD, "--state-dir")?,
            log_path: required(log_path, CMD, "--log-path")?,
            libcontainer_root,
            ready_fd,
            stdin,
            stdin_once,
            tty,
            systemd_cgroup,
        }),
        log_format,
    ))
}

fn parse_exec(
    flags: &mut Flags<'_>,
    mut log_format: LogFormat,
) -> Result<(Command, LogFormat), CliError> {
    const CMD: &str = "exec";
    let mut id = None;
    let mut libcontainer_root = PathBuf::from(DEFAULT_LIBCONTAINER_ROOT);
    let (mut timeout, mut env, mut cwd, mut tty) = (None, Vec::new(), None, false);
    let (mut stream, mut result_fd, mut console_socket_fd) = (false, None, None);
    let mut command = Vec::new();
    while let Some(item) = flags.next() {
        match item {
            Item::Flag("help", _) => return Ok((Command::Help, log_format)),
            Item::Flag("id", v) => id = Some(flags.value("id", v)?.to_owned()),
            Item::Flag("libcontainer-root", v) => {
                libcontainer_root =
                    non_empty_path("--libcontainer-root", flags.value("libcontainer-root", v)?)?
            }
            Item::Flag("timeout-secs", v) => {
                let value = flags.value("timeout-secs", v)?;
                let secs: u64 = value.parse().map_err(|_| CliError::Invalid {
                    flag: "--timeout-secs",
                    value: value.to_owned(),
                    reason: "expected whole seconds",
                })?;
                timeout = (secs > 0).then(|| Duration::from_secs(secs));
            }
            Item::Flag("env", v) => {
                let value = flags.value("env", v)?;
                match value.split_once('=') {
                    Some((k, val)) if !k.is_empty() => env.push((k.to_owned(), val.to_owned())),
                    _ => {
                        return Err(CliError::Invalid {
                            flag: "--env",
                            value: value.to_owned(),
                            reason: "expected KEY=VALUE",
                        });
                    }
                }
            }
            Item::Flag("cwd", v) => {
                let value = flags.value("cwd", v)?;
                if !value.starts_with('/') {
                    return Err(CliError::Invalid {
                        flag: "--cwd",
                        value: value.to_owned(),
                        reason: "expected an absolute path",
                    });
                }
                cwd = Some(PathBuf::from(value));
            }
            Item::Flag("tty", v) => tty = switch("tty", v)?,
            Item::Flag("stream", v) => stream = switch("stream", v)?,
            Item::Flag("result-fd", v) => {
                result_fd = Some(parse_fd("--result-fd", flags.value("result-fd", v)?)?)
            }
            Item::Flag("console-socket-fd", v) => {
                console_socket_fd = Some(parse_fd(
                    "--console-socket-fd",
                    flags.value("console-socket-fd", v)?,
                )?)
            }
            Item::Flag("log-format", v) => {
                log_format = parse_log_format(flags.value("log-format", v)?)?
            }
            Item::Flag(other, _) => {
                return Err(CliError::UnknownFlag {
                    command: CMD,
                    flag: format!("--{other}"),
                });
            }
            Item::DoubleDash => {
                command = flags.rest().to_vec();
                break;
            }
            Item::Positional(p) => {
                return Err(CliError::UnknownFlag {
                    command: CMD,
                    flag: p.to_owned(),
                });
            }
        }
    }
    if command.is_empty() {
        return Err(CliError::MissingExecCommand);
    }
    if stream && result_fd.is_none() {
        return Err(CliError::Needs {
            flag: "--stream",
            needs: "--result-fd",
        });
    }
    if tty && !stream {
        return Err(CliError::Needs {
            flag: "--tty",
            needs: "--stream",
        });
    }
    if !stream && result_fd.is_some() {
        return Err(CliError::Needs {
            flag: "--result-fd",
            needs: "--stream",
        });
    }
    // Streams are ours 0-2: the result cannot share one of them.
    if result_fd.is_some_and(|fd| fd <= 2) {
        return Err(CliError::Invalid {
            flag: "--result-fd",
            value: result_fd.unwrap_or_default().to_string(),
            reason: "0, 1 and 2 are the process's streams",
        });
    }
    if console_socket_fd.is_some() && !tty {
        return Err(CliError::Needs {
            flag: "--console-socket-fd",
            needs: "--tty",
        });
    }
    if let Some(fd) = console_socket_fd
        && (fd <= 2 || Some(fd) == result_fd)
    {
        return Err(CliError::Invalid {
            flag: "--console-socket-fd",
            value: fd.to_string(),
            reason: "0, 1, 2 and the result descriptor are taken",
        });
    }
    Ok((
        Command::Exec(ExecArgs {
            id: required(id, CMD, "--id")?,
            libcontainer_root,
            timeout,
            env,
            cwd,
            tty,
            stream,
            result_fd,
            console_socket_fd,
            command,
        }),
        log_format,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn run_flags() {
        let cli = parse(&args(
            "--log-format json run --id c1 --bundle /b --state-dir=/s --log-path /l.log --ready-fd 3 --stdin",
        ))
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(
            cli.command,
            Command::Run(RunArgs {
                id: "c1".into(),
                bundle: "/b".into(),
                state_dir: "/s".into(),
                log_path: "/l.log".into(),
                libcontainer_root: DEFAULT_LIBCONTAINER_ROOT.into(),
                ready_fd: Some(3),
                stdin: true,
                stdin_once: false,
                tty: false,
                systemd_cgroup: false,
            })
        );
        let Command::Run(r) = parse(&args(
            "run --id c1 --bundle /b --state-dir /s --log-path /l --stdin --stdin-once --tty",
        ))
        .unwrap()
        .command
        else {
            panic!()
        };
        assert!(r.stdin && r.stdin_once && r.tty && !r.systemd_cgroup);
        let Command::Run(r) = parse(&args(
            "run --id c1 --bundle /b --state-dir /s --log-path /l --systemd-cgroup",
        ))
        .unwrap()
        .command
        else {
            panic!()
        };
        assert!(r.systemd_cgroup);
        assert!(matches!(
            parse(&args("run --id c1 --systemd-cgroup=yes")),
            Err(CliError::UnexpectedValue { .. })
        ));
    }

    #[test]
    fn run_errors() {
        assert_eq!(
            parse(&args("run --bundle /b --state-dir /s --log-path /l")),
            Err(CliError::Required {
                command: "run",
                flag: "--id"
            })
        );
        assert_eq!(
            parse(&args("run --id")),
            Err(CliError::MissingValue("--id".into()))
        );
        assert_eq!(
            parse(&args("run --id x --bogus 1")),
            Err(CliError::UnknownFlag {
                command: "run",
                flag: "--bogus".into()
            })
        );
        assert!(matches!(
            parse(&args("run --id x --ready-fd -1")),
            Err(CliError::Invalid { .. })
        ));
        assert!(matches!(
            parse(&args("run --id x --ready-fd abc")),
            Err(CliError::Invalid { .. })
        ));
        assert!(matches!(
            parse(&args("run --stdin=yes")),
            Err(CliError::UnexpectedValue { .. })
        ));
        assert!(matches!(
            parse(&args("run --stdin-once=1")),
            Err(CliError::UnexpectedValue { .. })
        ));
        assert_eq!(
            parse(&args(
                "run --id x --bundle /b --state-dir /s --log-path /l --stdin-once"
            )),
            Err(CliError::Needs {
                flag: "--stdin-once",
                needs: "--stdin"
            })
        );
        assert_eq!(parse(&args("")), Err(CliError::MissingCommand));
        assert_eq!(
            parse(&args("frobnicate")),
            Err(CliError::UnknownCommand("frobnicate".into()))
        );
        assert_eq!(parse(&args("--version")).unwrap().command, Command::Version);
        assert_eq!(parse(&args("run --help")).unwrap().command, Command::Help);
    }

    #[test]
    fn exec_flags() {
        let cli = parse(&args(
            "exec --libcontainer-root /r --id c1 --timeout-secs 5 --env A=1 --env B=x=y --cwd /tmp -- sh -c --id",
        ))
        .unwrap();
        assert_eq!(
            cli.command,
            Command::Exec(ExecArgs {
                id: "c1".into(),
                libcontainer_root: "/r".into(),
                timeout: Some(Duration::from_secs(5)),
                env: vec![("A".into(), "1".into()), ("B".into(), "x=y".into())],
                cwd: Some("/tmp".into()),
                tty: false,
                stream: false,
                result_fd: None,
                console_socket_fd: None,
                command: args("sh -c --id"),
            })
        );
        let Command::Exec(e) = parse(&args("exec --id c --timeout-secs 0 -- true"))
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(e.timeout, None);
        let Command::Exec(e) = parse(&args("exec --id c --stream --tty --result-fd=5 -- sh"))
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(e.stream && e.tty);
        assert_eq!(e.result_fd, Some(5));
        assert_eq!(e.console_socket_fd, None);
        let Command::Exec(e) = parse(&args(
            "exec --id c --stream --tty --result-fd 5 --console-socket-fd 6 -- sh",
        ))
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!((e.result_fd, e.console_socket_fd), (Some(5), Some(6)));
    }

    #[test]
    fn console_socket_needs_a_tty_and_its_own_descriptor() {
        assert_eq!(
            parse(&args(
                "exec --id c --stream --result-fd 5 --console-socket-fd 6 -- sh"
            )),
            Err(CliError::Needs {
                flag: "--console-socket-fd",
                needs: "--tty"
            })
        );
        for bad in ["5", "2", "0"] {
            assert!(
                matches!(
                    parse(&args(&format!(
                        "exec --id c --stream --tty --result-fd 5 --console-socket-fd {bad} -- sh"
                    ))),
                    Err(CliError::Invalid {
                        flag: "--console-socket-fd",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn exec_stream_flags_go_together() {
        assert_eq!(
            parse(&args("exec --id c --stream -- sh")),
            Err(CliError::Needs {
                flag: "--stream",
                needs: "--result-fd"
            })
        );
        assert_eq!(
            parse(&args("exec --id c --result-fd 3 -- sh")),
            Err(CliError::Needs {
                flag: "--result-fd",
                needs: "--stream"
            })
        );
        for bad in ["-1", "x", "1"] {
            assert!(
                matches!(
                    parse(&args(&format!(
                        "exec --id c --stream --result-fd {bad} -- sh"
                    ))),
                    Err(CliError::Invalid {
                        flag: "--result-fd",
                        ..
                    }) | Err(CliError::MissingValue(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            parse(&args("exec --id c --tty -- sh")),
            Err(CliError::Needs {
                flag: "--tty",
                needs: "--stream"
            })
        );
        assert!(matches!(
            parse(&args("exec --id c --stream=1 --result-fd 3 -- sh")),
            Err(CliError::UnexpectedValue { .. })
        ));
    }

    #[test]
    fn exec_errors() {
        assert_eq!(
            parse(&args("exec --id c1")),
            Err(CliError::MissingExecCommand)
        );
        assert_eq!(
            parse(&args("exec --id c1 --")),
            Err(CliError::MissingExecCommand)
        );
        assert!(matches!(
            parse(&args("exec --id c1 --env =x -- true")),
            Err(CliError::Invalid { flag: "--env", .. })
        ));
        assert!(matches!(
            parse(&args("exec --id c1 --cwd rel -- true")),
            Err(CliError::Invalid { flag: "--cwd", .. })
        ));
        assert!(matches!(
            parse(&args("exec --id c1 --timeout-secs 1.5 -- true")),
            Err(CliError::Invalid { .. })
        ));
        assert_eq!(
            parse(&args("exec -- true")),
            Err(CliError::Required {
                command: "exec",
                flag: "--id"
            })
        );
    }
}
