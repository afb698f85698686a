//! Lease-based leader election, so that of several `keelson-server` replicas sharing one etcd
//! only one schedules: the holder renews `coordination.k8s.io/v1` Lease every few seconds; the
//! others take it over once `renewTime + leaseDurationSeconds` has passed. Every write is an
//! update at the resourceVersion that was read, so of two candidates only one wins (409).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use thiserror::Error;
use tokio::sync::watch;

use super::client::{Client, ClientError};

/// What can go wrong while acquiring or renewing the lease.
#[derive(Debug, Error)]
pub enum LeaderError {
    #[error("reading lease {0}: {1}")]
    Read(String, #[source] ClientError),
    #[error("writing lease {0}: {1}")]
    Write(String, #[source] ClientError),
    #[error("encoding lease {0}: {1}")]
    Encode(String, #[source] serde_json::Error),
}

/// Where "now" comes from (a fixed clock in tests).
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Timestamp::from_nanosecond(nanos).unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

/// What a candidate does with the lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// No lease yet: create it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder's lease expired: take it over.
    Acquire,
    /// Someone else holds it until `expires`.
    Follow { holder: String, expires: Timestamp },
}

fn millis(t: &MicroTime) -> i64 {
    t.0.as_millisecond()
}

fn at_millis(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Decides from the current lease (None: it does not exist) what `me` does at `now`.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseAction {
    let Some(spec) = spec else {
        return LeaseAction::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return LeaseAction::Acquire;
    }
    if holder == me {
        return LeaseAction::Renew;
    }
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return LeaseAction::Acquire;
    };
    let duration_ms = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0)) * 1000;
    let expires = millis(renewed).saturating_add(duration_ms);
    if expires < now.as_millisecond() {
        LeaseAction::Acquire
    } else {
        LeaseAction::Follow {
            holder: holder.to_string(),
            expires: at_millis(expires),
        }
    }
}

/// The lease spec to write for `action` (not for `Follow`).
pub fn next_spec(
    current: Option<&LeaseSpec>,
    action: &LeaseAction,
    me: &str,
    now: Timestamp,
    duration: Duration,
) -> LeaseSpec {
    let seconds = i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let transitions = current.and_then(|s| s.lease_transitions).unwrap_or(0);
    let now_micro = MicroTime(now);
    match action {
        LeaseAction::Renew => LeaseSpec {
            renew_time: Some(now_micro),
            lease_duration_seconds: Some(seconds),
            holder_identity: Some(me.into()),
            ..current.cloned().unwrap_or_default()
        },
        LeaseAction::Create | LeaseAction::Acquire | LeaseAction::Follow { .. } => {
            let previous = current
                .and_then(|s| s.holder_identity.as_deref())
                .unwrap_or_default();
            LeaseSpec {
                holder_identity: Some(me.into()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now_micro.clone()),
                renew_time: Some(now_micro),
                lease_transitions: Some(if previous.is_empty() || previous == me {
                    transitions
                } else {
                    transitions.saturating_add(1)
                }),
                ..LeaseSpec::default()
            }
        }
    }
}

/// One candidate for the lease.
pub struct LeaderElector {
    pub client: Client,
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
    pub clock: Arc<dyn Clock>,
}

impl LeaderElector {
    fn path(&self) -> String {
        format!(
            "/apis/coordination.k8s.io/v1/namespaces/{}/leases/{}",
            self.namespace, self.name
        )
    }

    fn lease_id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// One round: read the lease, then create, renew or take it over if we may. Ok(true)
    /// when we hold it afterwards; a lost race (409) is Ok(false).
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaderError> {
        let current: Option<Lease> = match self.client.get::<Lease>(&self.path()).await {
            Ok(l) => Some(l),
            Err(e) if e.code() == Some(404) => None,
            Err(e) => return Err(LeaderError::Read(self.lease_id(), e)),
        };
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let now = self.clock.now();
        let action = decide(spec, &self.identity, now);
        if let LeaseAction::Follow { .. } = action {
            return Ok(false);
        }
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: current
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone()),
                ..current
                    .as_ref()
                    .map(|l| l.metadata.clone())
                    .unwrap_or_default()
            },
            spec: Some(next_spec(
                spec,
                &action,
                &self.identity,
                now,
                self.lease_duration,
            )),
        };
        let body =
            serde_json::to_value(&lease).map_err(|e| LeaderError::Encode(self.lease_id(), e))?;
        let written = if action == LeaseAction::Create {
            let collection = format!(
                "/apis/coordination.k8s.io/v1/namespaces/{}/leases",
                self.namespace
            );
            self.client.post(&collection, &body).await
        } else {
            self.client.put(&self.path(), &body).await
        };
        match written {
            Ok(_) => {
                if action != LeaseAction::Renew {
                    tracing::info!(lease = %self.lease_id(), identity = %self.identity, "acquired the scheduler lease");
                }
                Ok(true)
            }
            Err(e) if e.code() == Some(409) => Ok(false),
            Err(e) => Err(LeaderError::Write(self.lease_id(), e)),
        }
    }

    /// Campaigns forever, publishing whether we lead on `leading`. A leader that cannot renew
    /// steps down after two thirds of the lease duration, before anyone may take over.
    pub async fn run(&self, leading: watch::Sender<bool>) {
        let renew_deadline = self.lease_duration.saturating_mul(2) / 3;
        let mut last_renew: Option<tokio::time::Instant> = None;
        loop {
            let started = tokio::time::Instant::now();
            let now_leading = match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renew = Some(started);
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler leader election");
                    last_renew.is_some_and(|t| t.elapsed() < renew_deadline)
                }
            };
            if !now_leading {
                last_renew = None;
            }
            if *leading.borrow() != now_leading {
                if !now_leading {
                    tracing::info!(identity = %self.identity, "lost the scheduler lease");
                }
                leading.send_replace(now_leading);
            }
            tokio::time::sleep(self.renew_interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn lease(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(at(renewed))),
            acquire_time: Some(MicroTime(at(renewed - 100))),
            lease_duration_seconds: Some(duration),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        let now = at(1_000_000);
        assert_eq!(decide(None, "me", now), LeaseAction::Create);
        assert_eq!(
            decide(Some(&lease("me", 1_000_000 - 100, 15)), "me", now),
            LeaseAction::Renew,
            "our own lease is renewed even if it expired"
        );
        assert_eq!(
            decide(Some(&lease("other", 1_000_000 - 5, 15)), "me", now),
            LeaseAction::Follow {
                holder: "other".into(),
                expires: at(1_000_010)
            }
        );
        assert_eq!(
            decide(Some(&lease("other", 1_000_000 - 15, 15)), "me", now),
            LeaseAction::Follow {
                holder: "other".into(),
                expires: now
            },
            "expiring exactly now is not yet expired"
        );
        assert_eq!(
            decide(Some(&lease("other", 1_000_000 - 16, 15)), "me", now),
            LeaseAction::Acquire
        );
        assert_eq!(
            decide(Some(&lease("", 1_000_000, 15)), "me", now),
            LeaseAction::Acquire
        );
        let mut no_times = lease("other", 0, 15);
        no_times.renew_time = None;
        no_times.acquire_time = None;
        assert_eq!(decide(Some(&no_times), "me", now), LeaseAction::Acquire);
    }

    #[test]
    fn specs_written() {
        let now = at(2_000_000);
        let d = Duration::from_secs(15);
        let cur = lease("me", 1_999_990, 10);
        let renewed = next_spec(Some(&cur), &LeaseAction::Renew, "me", now, d);
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        assert_eq!(renewed.acquire_time, cur.acquire_time);
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.lease_duration_seconds, Some(15));
        let other = lease("other", 1_000_000, 15);
        let taken = next_spec(Some(&other), &LeaseAction::Acquire, "me", now, d);
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.lease_transitions, Some(4));
        let created = next_spec(None, &LeaseAction::Create, "me", now, Duration::ZERO);
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.lease_duration_seconds, Some(1));
    }
}
