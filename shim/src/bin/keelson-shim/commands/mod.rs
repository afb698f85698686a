//! One module per subcommand of `keelson-shim`.

pub mod exec;
pub mod run;
