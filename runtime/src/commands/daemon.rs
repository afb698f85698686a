//! The daemon: serve CRI on the socket until SIGTERM.

use anyhow::Context;
use keelson_runtime::config::RuntimeConfig;

pub fn run(config: RuntimeConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(keelson_runtime::server::serve(config))
        .context("keelson-runtime daemon")
}
