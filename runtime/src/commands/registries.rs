//! `registries resolve IMAGE`: which hosts a pull of IMAGE would try, in order, with their
//! capabilities, TLS settings and credentials source, and the URL of the manifest request.
//! Reads `--registry-config-dir` and `--registry-credentials` as the daemon does on each pull.

use anyhow::Context;
use clap::Subcommand;
use keelson_runtime::config::RuntimeConfig;
use keelson_runtime::image::hosts::HostScheme;
use keelson_runtime::image::reference::Reference;
use keelson_runtime::image::registry::{
    Credentials, Endpoint, Endpoints, RegistryClient, RegistryOptions,
};
use std::fmt::Write as _;

#[derive(Subcommand)]
pub enum RegistriesCommand {
    /// Print the hosts a pull of IMAGE tries, in order, and the manifest request's URL
    Resolve {
        /// An image name as `crictl pull` takes it (`busybox`, `registry.k8s.io/pause:3.10`)
        image: String,
    },
}

pub fn run(cmd: RegistriesCommand, config: RuntimeConfig) -> anyhow::Result<()> {
    let RegistriesCommand::Resolve { image } = cmd;
    let reference = Reference::parse(&image)?;
    let client = RegistryClient::new(RegistryOptions {
        insecure_registries: config.insecure_registries.clone(),
        hosts_dir: Some(config.registry_config_dir.clone()),
        credentials_file: config.registry_credentials.clone(),
        ..Default::default()
    })?;
    println!("image:       {reference}");
    println!("registry:    {}", reference.registry);
    println!("config dir:  {}", config.registry_config_dir.display());
    let credentials = match &config.registry_credentials {
        Some(p) => p.display().to_string(),
        None => "none".to_string(),
    };
    println!("credentials: {credentials}");
    let endpoints = client
        .endpoints(&reference, &Credentials::default())
        .with_context(|| format!("pulls from {} fail", reference.registry))?;
    print!("{}", describe(&client, &endpoints, &reference.reference()));
    Ok(())
}

/// The report, after the header lines.
fn describe(client: &RegistryClient, e: &Endpoints, reference: &str) -> String {
    let mut out = String::new();
    let by_digest = reference.contains(':');
    let needed = if by_digest { "pull" } else { "resolve" };
    let asked: Vec<&Endpoint> = e.for_manifest(reference);
    let _ = writeln!(out, "hosts from:  {}", e.source);
    let _ = writeln!(out, "hosts, in the order they are tried:");
    for (i, h) in e.hosts.iter().enumerate() {
        let host = &h.host;
        let _ = writeln!(out, "  {}. {} {}", i + 1, host.role, host.base_url());
        let _ = writeln!(out, "       capabilities: {}", host.capabilities);
        let transport = match host.scheme {
            HostScheme::Http => "plain http".to_string(),
            HostScheme::Https => "https".to_string(),
            HostScheme::HttpsThenHttp => "https, then plain http if tls fails".to_string(),
            HostScheme::Auto if client.plain_http_allowed(&host.authority) => {
                "https, then plain http if tls fails (loopback or --insecure-registry)".to_string()
            }
            HostScheme::Auto => "https".to_string(),
        };
        let _ = writeln!(out, "       transport:    {transport}");
        let mut tls = Vec::new();
        for ca in &host.tls.ca {
            tls.push(format!("ca {}", ca.display()));
        }
        for (cert, key) in &host.tls.client {
            match key {
                Some(key) => tls.push(format!(
                    "client cert {} key {}",
                    cert.display(),
                    key.display()
                )),
                None => tls.push(format!("client cert+key {}", cert.display())),
            }
        }
        if host.tls.skip_verify {
            tls.push("skip_verify (server certificate not checked)".into());
        }
        if let Some(t) = host.dial_timeout {
            tls.push(format!("dial_timeout {t:?}"));
        }
        if !tls.is_empty() {
            let _ = writeln!(out, "       tls:          {}", tls.join("; "));
        }
        if let Some(err) = h.setup_error() {
            let _ = writeln!(out, "       unusable:     {err}");
        }
        if !host.headers.is_empty() {
            let mut names: Vec<&str> = host.headers.iter().map(|(n, _)| n.as_str()).collect();
            names.dedup();
            let _ = writeln!(out, "       headers:      {}", names.join(", "));
        }
        let _ = writeln!(out, "       credentials:  {}", h.credentials_source);
        if asked.iter().any(|a| std::ptr::eq(*a, h)) {
            let _ = writeln!(
                out,
                "       manifest:     GET {}",
                e.url(h, "manifests", reference)
            );
        } else {
            let why = if by_digest {
                "not asked: no \"pull\" capability".to_string()
            } else if host.capabilities.pull {
                "not asked for tags: no \"resolve\" capability (used for content by digest)"
                    .to_string()
            } else {
                "not asked: neither \"pull\" nor \"resolve\"".to_string()
            };
            let _ = writeln!(out, "       manifest:     {why}");
        }
    }
    match asked.first() {
        Some(first) => {
            let _ = writeln!(
                out,
                "manifest request: GET {}",
                e.url(first, "manifests", reference)
            );
            if asked.len() > 1 {
                let _ = writeln!(
                    out,
                    "  then, if that host fails (unreachable, 404, 5xx, refused), the next host with \"{needed}\""
                );
            }
        }
        None => {
            let _ = writeln!(
                out,
                "manifest request: none: no host may {needed}; pulls of this image fail"
            );
        }
    }
    if !e.warnings.is_empty() {
        let _ = writeln!(out, "warnings:");
        for w in &e.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}
