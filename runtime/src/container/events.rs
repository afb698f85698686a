//! Container lifecycle events (created, started, stopped, deleted) for `GetContainerEvents`, so a
//! node agent learns of changes without polling.
//!
//! The [`EventHub`] is a bounded broadcast: the container manager publishes, each subscriber gets
//! its own receiver. A subscriber that falls more than [`EVENT_BUFFER`] events behind loses the
//! oldest ones (logged) and carries on; it never holds up the manager or other subscribers.
//! Events are only built while someone listens.
//!
//! Exits happen in the shims, which record them in `exit.json`; the manager notices when it
//! refreshes a record. While anyone subscribes, a poller started with the first subscriber
//! refreshes every container each [`EXIT_POLL`], and stops when the last one leaves.

use crate::container::store::ContainerRecord;
use crate::sandbox::store::SandboxRecord;
use futures_util::Stream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;

/// Events a subscriber may fall behind by before it loses some.
pub const EVENT_BUFFER: usize = 1024;

/// How often exits are looked for while someone subscribes.
pub const EXIT_POLL: Duration = Duration::from_secs(1);

/// Why an event stream ended or skipped events.
#[derive(Debug, thiserror::Error)]
pub enum EventStreamError {
    #[error("container event subscriber fell behind: {0} events were dropped")]
    Lagged(u64),
    #[error("the container event hub is closed")]
    Closed,
}

/// What happened to a container (CRI `ContainerEventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

/// One event with the state it happened in: the pod's record and every container of the pod at
/// that moment (a deleted container is no longer among them).
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub container_id: String,
    pub kind: ContainerEventKind,
    /// Unix nanoseconds.
    pub at: i64,
    pub sandbox: Option<SandboxRecord>,
    pub containers: Vec<ContainerRecord>,
}

/// The broadcast of container events.
pub struct EventHub {
    tx: broadcast::Sender<Arc<ContainerEvent>>,
    poller: AtomicBool,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new(EVENT_BUFFER)
    }
}

impl EventHub {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            poller: AtomicBool::new(false),
        }
    }

    /// Whether anyone listens (events are not worth building otherwise).
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Sends to every current subscriber; never blocks.
    pub fn publish(&self, event: ContainerEvent) {
        let _ = self.tx.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ContainerEvent>> {
        self.tx.subscribe()
    }

    /// Starts the poller unless it runs: `poll` (blocking) every `every` while anyone subscribes.
    /// Needs a tokio runtime.
    pub fn ensure_poller(
        self: &Arc<Self>,
        every: Duration,
        poll: Arc<dyn Fn() + Send + Sync + 'static>,
    ) {
        if self.poller.swap(true, Ordering::SeqCst) {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if !hub.has_subscribers() {
                    hub.poller.store(false, Ordering::SeqCst);
                    // A subscriber that came just now either sees the flag down and starts its
                    // own poller, or finds this one still going.
                    if !hub.has_subscribers() || hub.poller.swap(true, Ordering::SeqCst) {
                        tracing::debug!("no container event subscribers; exit poller stops");
                        return;
                    }
                }
                let poll = poll.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || poll()).await {
                    tracing::warn!(error = %e, "container exit poll failed");
                }
            }
        });
    }
}

/// The events a receiver gets from now on, lag skipped with a warning. The stream ends when the
/// hub closes or the daemon is told to stop (SIGTERM/SIGINT), so an open subscription never holds
/// up a clean shutdown.
pub fn subscription(
    rx: broadcast::Receiver<Arc<ContainerEvent>>,
) -> impl Stream<Item = Arc<ContainerEvent>> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    futures_util::stream::unfold((rx, term, int), |(mut rx, mut term, mut int)| async move {
        loop {
            let got = tokio::select! {
                got = rx.recv() => got,
                _ = delivered(&mut term) => return None,
                _ = delivered(&mut int) => return None,
            };
            match got {
                Ok(event) => return Some((event, (rx, term, int))),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let e = EventStreamError::Lagged(n);
                    tracing::warn!(error = %e, "skipping container events");
                }
                Err(broadcast::error::RecvError::Closed) => {
                    tracing::debug!(error = %EventStreamError::Closed, "container event stream ends");
                    return None;
                }
            }
        }
    })
}

/// Resolves when the signal arrives; never when it could not be watched.
async fn delivered(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::atomic::AtomicUsize;

    fn event(id: &str, kind: ContainerEventKind) -> ContainerEvent {
        ContainerEvent {
            container_id: id.into(),
            kind,
            at: 1,
            sandbox: None,
            containers: Vec::new(),
        }
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let hub = EventHub::new(8);
        assert!(!hub.has_subscribers());
        hub.publish(event("before", ContainerEventKind::Created));
        let a = subscription(hub.subscribe());
        let b = subscription(hub.subscribe());
        assert!(hub.has_subscribers());
        hub.publish(event("c1", ContainerEventKind::Created));
        hub.publish(event("c1", ContainerEventKind::Started));
        let got: Vec<_> = a
            .take(2)
            .map(|e| (e.container_id.clone(), e.kind))
            .collect()
            .await;
        assert_eq!(
            got,
            vec![
                ("c1".to_string(), ContainerEventKind::Created),
                ("c1".to_string(), ContainerEventKind::Started)
            ]
        );
        let first = Box::pin(b).next().await.unwrap();
        assert_eq!(
            first.container_id, "c1",
            "no events from before subscribing"
        );
    }

    #[tokio::test]
    async fn a_lagging_subscriber_skips_ahead_without_blocking_the_publisher() {
        let hub = EventHub::new(4);
        let slow = subscription(hub.subscribe());
        for i in 0..10 {
            hub.publish(event(&format!("c{i}"), ContainerEventKind::Stopped));
        }
        let mut slow = Box::pin(slow);
        // The oldest six went; the stream resumes with what is still buffered.
        assert_eq!(slow.next().await.unwrap().container_id, "c6");
        assert_eq!(slow.next().await.unwrap().container_id, "c7");
    }

    #[tokio::test]
    async fn the_poller_runs_while_someone_subscribes() {
        let hub = Arc::new(EventHub::new(4));
        let polls = Arc::new(AtomicUsize::new(0));
        let counter = polls.clone();
        let poll: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let rx = hub.subscribe();
        hub.ensure_poller(Duration::from_millis(10), poll.clone());
        hub.ensure_poller(Duration::from_millis(10), poll.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = polls.load(Ordering::SeqCst);
        assert!(seen >= 3, "polled {seen} times");
        drop(rx);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!hub.poller.load(Ordering::SeqCst), "poller stopped");
        let after = polls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(polls.load(Ordering::SeqCst), after);
        // A new subscriber starts it again.
        let _rx = hub.subscribe();
        hub.ensure_poller(Duration::from_millis(10), poll);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(polls.load(Ordering::SeqCst) > after);
    }
}
