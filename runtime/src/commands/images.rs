//! `images import FILE`: through the running daemon when its socket answers, else straight into --root.

use anyhow::{Context, bail};
use clap::Subcommand;
use keelson_cri::admin::ImportImagesRequest;
use keelson_cri::admin::runtime_admin_client::RuntimeAdminClient;
use keelson_runtime::config::RuntimeConfig;
use keelson_runtime::image::manager::{ImageManager, ImageManagerOptions};
use keelson_runtime::image::manifest::Platform;
use keelson_runtime::image::registry::{RegistryClient, RegistryOptions};
use keelson_runtime::server::RootLock;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum ImagesCommand {
    /// Load an OCI-layout or `docker save` tarball into the store
    Import {
        /// The tarball
        file: PathBuf,
    },
}

pub fn run(cmd: ImagesCommand, config: RuntimeConfig) -> anyhow::Result<()> {
    let ImagesCommand::Import { file } = cmd;
    let file =
        std::fs::canonicalize(&file).with_context(|| format!("cannot open {}", file.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let imported = rt.block_on(async {
        if std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
            import_via_daemon(&config, &file).await
        } else {
            import_offline(&config, &file).await
        }
    })?;
    if imported.is_empty() {
        bail!("{} holds no images", file.display());
    }
    for (id, names) in imported {
        if names.is_empty() {
            println!("{id}");
        } else {
            println!("{id} {}", names.join(" "));
        }
    }
    Ok(())
}

async fn import_via_daemon(
    config: &RuntimeConfig,
    file: &std::path::Path,
) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let channel = super::connect(&config.socket).await?;
    let resp = RuntimeAdminClient::new(channel)
        .import_images(ImportImagesRequest {
            path: file.display().to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    Ok(resp
        .into_inner()
        .images
        .into_iter()
        .map(|i| (i.id, i.names))
        .collect())
}

async fn import_offline(
    config: &RuntimeConfig,
    file: &std::path::Path,
) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    std::fs::create_dir_all(&config.root)
        .with_context(|| format!("creating {}", config.root.display()))?;
    let _lock = RootLock::acquire(&config.root)?;
    let registry = RegistryClient::new(RegistryOptions {
        insecure_registries: vec![],
        user_agent: "keelson-runtime".into(),
        ..Default::default()
    })?;
    let images = Arc::new(ImageManager::open(
        &config.root,
        registry,
        ImageManagerOptions {
            max_concurrent_downloads: 1,
            platform: Platform::host(),
        },
    )?);
    let records = images.import(file).await?;
    Ok(records
        .into_iter()
        .map(|r| (r.id.to_string(), r.repo_tags))
        .collect())
}
