//! A minimal `tracing` subscriber writing one line per event to stderr (text or JSON), level
//! from `RUST_LOG` (default info). The shim avoids tracing-subscriber to stay small; spans are
//! ignored. The runtime sends the shim's stderr to `<state-dir>/shim.log`.
//!
//! The subscriber writes to a close-on-exec *duplicate* of the original stderr, not to fd 2:
//! libcontainer logs from the container's processes after it has pointed their fd 2 at the
//! container's stderr pipe, and those lines belong in the shim's log, not the container's.

use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::crilog::format_timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `RUST_LOG`-style filter: a default level plus `target=level` directives (longest prefix wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    default: Option<Level>,
    targets: Vec<(String, Option<Level>)>,
}

fn parse_level(s: &str) -> Option<Option<Level>> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "off" => None,
        "error" => Some(Level::ERROR),
        "warn" => Some(Level::WARN),
        "info" => Some(Level::INFO),
        "debug" => Some(Level::DEBUG),
        "trace" => Some(Level::TRACE),
        _ => return None,
    })
}

impl Filter {
    /// Unknown directives are skipped; an empty spec means `info`.
    pub fn parse(spec: &str) -> Self {
        let mut filter = Filter {
            default: Some(Level::INFO),
            targets: Vec::new(),
        };
        for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            match directive.split_once('=') {
                Some((target, level)) => {
                    if let Some(level) = parse_level(level) {
                        filter
                            .targets
                            .push((target.trim().replace('-', "_"), level));
                    }
                }
                None => {
                    if let Some(level) = parse_level(directive) {
                        filter.default = level;
                    }
                }
            }
        }
        filter
            .targets
            .sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        filter
    }

    pub fn enabled(&self, target: &str, level: &Level) -> bool {
        let max = self
            .targets
            .iter()
            .find(|(t, _)| target.starts_with(t.as_str()))
            .map(|(_, l)| *l)
            .unwrap_or(self.default);
        max.is_some_and(|max| *level <= max)
    }

    fn most_verbose(&self) -> Option<Level> {
        self.targets
            .iter()
            .map(|(_, l)| *l)
            .chain(std::iter::once(self.default))
            .flatten()
            .max()
    }
}

struct StderrSubscriber {
    filter: Filter,
    format: LogFormat,
    /// A duplicate of the original stderr (`None`: write to fd 2).
    out: Option<File>,
}

/// Install the subscriber as the global default (once, at start); `default` applies when
/// `RUST_LOG` is unset or empty.
pub fn init(format: LogFormat, default: &str) {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| default.to_owned());
    let filter = Filter::parse(&spec);
    let out = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(|fd: OwnedFd| File::from(fd));
    let _ = tracing::subscriber::set_global_default(StderrSubscriber {
        filter,
        format,
        out,
    });
}

struct TextVisitor<'a> {
    message: &'a mut String,
    fields: &'a mut String,
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

struct JsonVisitor {
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Visit for JsonVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields.insert(field.name().to_owned(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().to_owned(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.fields
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

impl Subscriber for StderrSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enabled(metadata.target(), metadata.level())
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(match self.filter.most_verbose() {
            Some(level) => level.into(),
            None => tracing::level_filters::LevelFilter::OFF,
        })
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let timestamp = format_timestamp(SystemTime::now());
        let line = match self.format {
            LogFormat::Text => {
                let (mut message, mut fields) = (String::new(), String::new());
                event.record(&mut TextVisitor {
                    message: &mut message,
                    fields: &mut fields,
                });
                format!(
                    "{timestamp} {:>5} {}: {message}{fields}\n",
                    meta.level(),
                    meta.target()
                )
            }
            LogFormat::Json => {
                let mut visitor = JsonVisitor {
                    fields: serde_json::Map::new(),
                };
                event.record(&mut visitor);
                let value = serde_json::json!({
                    "timestamp": timestamp,
                    "level": meta.level().as_str(),
                    "target": meta.target(),
                    "fields": visitor.fields,
                });
                format!("{value}\n")
            }
        };
        // One write per line so that lines from concurrent processes do not interleave.
        let _ = match self.out.as_ref() {
            Some(mut out) => out.write_all(line.as_bytes()),
            None => std::io::stderr().lock().write_all(line.as_bytes()),
        };
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_levels() {
        let f = Filter::parse("");
        assert!(f.enabled("libcontainer::x", &Level::INFO));
        assert!(!f.enabled("libcontainer::x", &Level::DEBUG));

        let f = Filter::parse("warn,keelson-shim=debug,libcontainer::process=off");
        assert!(f.enabled("keelson_shim::monitor", &Level::DEBUG));
        assert!(!f.enabled("keelson_shim::monitor", &Level::TRACE));
        assert!(!f.enabled("libcontainer::container", &Level::INFO));
        assert!(f.enabled("libcontainer::container", &Level::WARN));
        assert!(!f.enabled("libcontainer::process::fork", &Level::ERROR));
        assert_eq!(f.most_verbose(), Some(Level::DEBUG));

        let f = Filter::parse("off");
        assert!(!f.enabled("x", &Level::ERROR));
        assert_eq!(f.most_verbose(), None);

        // garbage is ignored
        assert_eq!(Filter::parse("loud,=,x=verbose"), Filter::parse("info"));
    }
}
