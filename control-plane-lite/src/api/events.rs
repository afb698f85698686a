//! `events.k8s.io/v1` Events: the core/v1 Events in storage seen through the newer version,
//! converted field by field as Kubernetes does (`note` ↔ `message`, `regarding` ↔
//! `involvedObject`, `reportingController` ↔ `reportingComponent`, `deprecated*` ↔ the old
//! counters and timestamps), both ways through the `k8s-openapi` types.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::events::v1 as events;
use serde_json::Value;

use super::status::ApiError;

/// A stored core/v1 Event as an `events.k8s.io/v1` Event.
pub fn core_to_v1(obj: &Value) -> Result<Value, ApiError> {
    let e: core::Event = serde_json::from_value(obj.clone())
        .map_err(|err| ApiError::Internal(format!("stored event is not a core/v1 event: {err}")))?;
    let v1 = events::Event {
        action: e.action,
        deprecated_count: e.count,
        deprecated_first_timestamp: e.first_timestamp,
        deprecated_last_timestamp: e.last_timestamp,
        deprecated_source: e.source,
        event_time: e.event_time,
        metadata: e.metadata,
        note: e.message,
        reason: e.reason,
        regarding: Some(e.involved_object),
        related: e.related,
        reporting_controller: e.reporting_component,
        reporting_instance: e.reporting_instance,
        series: e.series.and_then(|s| {
            Some(events::EventSeries {
                count: s.count.unwrap_or_default(),
                last_observed_time: s.last_observed_time?,
            })
        }),
        type_: e.type_,
    };
    let mut out = serde_json::to_value(v1)
        .map_err(|err| ApiError::Internal(format!("encoding an events.k8s.io event: {err}")))?;
    out["apiVersion"] = Value::from("events.k8s.io/v1");
    out["kind"] = Value::from("Event");
    Ok(out)
}

/// An `events.k8s.io/v1` Event (already decoded through its type) as the core/v1 Event stored.
pub fn v1_to_core(obj: &Value) -> Result<Value, ApiError> {
    let e: events::Event = serde_json::from_value(obj.clone()).map_err(|err| {
        ApiError::BadRequest(format!(
            "Event in version \"v1\" cannot be handled as a Event: {err}"
        ))
    })?;
    let c = core::Event {
        action: e.action,
        count: e.deprecated_count,
        event_time: e.event_time,
        first_timestamp: e.deprecated_first_timestamp,
        involved_object: e.regarding.unwrap_or_default(),
        last_timestamp: e.deprecated_last_timestamp,
        message: e.note,
        metadata: e.metadata,
        reason: e.reason,
        related: e.related,
        reporting_component: e.reporting_controller,
        reporting_instance: e.reporting_instance,
        series: e.series.map(|s| core::EventSeries {
            count: Some(s.count),
            last_observed_time: Some(s.last_observed_time),
        }),
        source: e.deprecated_source,
        type_: e.type_,
    };
    let mut out = serde_json::to_value(c)
        .map_err(|err| ApiError::Internal(format!("encoding a core/v1 event: {err}")))?;
    out["apiVersion"] = Value::from("v1");
    out["kind"] = Value::from("Event");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_through_both_versions() {
        let core = json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "default", "uid": "u"},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
            "message": "pulled", "reason": "Pulled", "type": "Normal", "count": 3,
            "firstTimestamp": "2025-01-01T00:00:00Z", "lastTimestamp": "2025-01-01T00:01:00Z",
            "source": {"component": "kubelet", "host": "n1"}, "reportingComponent": "kubelet",
            "reportingInstance": "n1"});
        let v1 = core_to_v1(&core).unwrap();
        assert_eq!(v1["apiVersion"], "events.k8s.io/v1");
        assert_eq!(v1["note"], "pulled");
        assert_eq!(v1["regarding"]["name"], "web");
        assert_eq!(v1["reportingController"], "kubelet");
        assert_eq!(v1["deprecatedCount"], 3);
        assert_eq!(v1["deprecatedSource"]["host"], "n1");
        assert_eq!(v1["deprecatedFirstTimestamp"], "2025-01-01T00:00:00Z");
        assert!(v1.get("message").is_none());
        assert_eq!(v1_to_core(&v1).unwrap(), core);
    }

    #[test]
    fn series_converts() {
        let v1 = json!({"metadata": {"name": "e"}, "eventTime": "2025-01-01T00:00:00.000000Z",
            "series": {"count": 2, "lastObservedTime": "2025-01-01T00:00:05.000000Z"},
            "reportingController": "c", "reportingInstance": "i", "action": "A", "reason": "R"});
        let core = v1_to_core(&v1).unwrap();
        assert_eq!(core["series"]["count"], 2);
        assert_eq!(core["reportingComponent"], "c");
        let back = core_to_v1(&core).unwrap();
        assert_eq!(back["series"]["count"], 2);
    }
}
