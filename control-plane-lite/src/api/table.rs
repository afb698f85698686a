//! Server-side Tables (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`): the columns
//! `kubectl get` prints for each served kind.

use serde_json::{Value, json};

use super::object::{meta, strings};
use super::resources::Kind;

/// What each row carries besides its cells (`?includeObject=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

fn col(name: &str, ty: &str, format: &str, description: &str, priority: i32) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

/// The column definitions of `kind`.
pub fn columns(kind: Kind) -> Vec<Value> {
    let name = col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    );
    let age = col(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    );
    match kind {
        Kind::Pod => vec![
            name,
            col(
                "Ready",
                "string",
                "",
                "The aggregate readiness state of this pod for accepting traffic.",
                0,
            ),
            col(
                "Status",
                "string",
                "",
                "The aggregate status of the containers in this pod.",
                0,
            ),
            col(
                "Restarts",
                "string",
                "",
                "The number of times the containers in this pod have been restarted.",
                0,
            ),
            age,
            col("IP", "string", "", "IP address allocated to the pod.", 1),
            col(
                "Node",
                "string",
                "",
                "Name of the Node this pod is bound to.",
                1,
            ),
            col(
                "Nominated Node",
                "string",
                "",
                "Name of the Node where the pod may run once preemption finishes.",
                1,
            ),
            col(
                "Readiness Gates",
                "string",
                "",
                "Readiness gates of the pod that are satisfied, of all it has.",
                1,
            ),
        ],
        Kind::Namespace => vec![
            name,
            col("Status", "string", "", "The status of the namespace", 0),
            age,
        ],
        Kind::ConfigMap => vec![
            name,
            col("Data", "string", "", "Number of data entries", 0),
            age,
        ],
        Kind::Secret => vec![
            name,
            col("Type", "string", "", "The type of the secret", 0),
            col("Data", "string", "", "Number of data entries", 0),
            age,
        ],
        Kind::Node => vec![
            name,
            col("Status", "string", "", "The status of the node", 0),
            col("Roles", "string", "", "The roles of the node", 0),
            age,
            col(
                "Version",
                "string",
                "",
                "Kubelet Version reported by the node.",
                0,
            ),
            col(
                "Internal-IP",
                "string",
                "",
                "List of internal IPs for the node.",
                1,
            ),
            col(
                "External-IP",
                "string",
                "",
                "List of external IPs for the node.",
                1,
            ),
            col(
                "OS-Image",
                "string",
                "",
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
                1,
            ),
            col(
                "Kernel-Version",
                "string",
                "",
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
                1,
            ),
            col(
                "Container-Runtime",
                "string",
                "",
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
                1,
            ),
        ],
        Kind::ServiceAccount => vec![
            name,
            col(
                "Secrets",
                "string",
                "",
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
                0,
            ),
            age,
        ],
        Kind::EventV1 => columns(Kind::Event),
        Kind::Event => vec![
            col(
                "Last Seen",
                "string",
                "",
                "Time when this Event was last seen.",
                0,
            ),
            col(
                "Type",
                "string",
                "",
                "Type of this event (Normal, Warning), new types could be added in the future.",
                0,
            ),
            col(
                "Reason",
                "string",
                "",
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
                0,
            ),
            col(
                "Object",
                "string",
                "",
                "The object that this event is about.",
                0,
            ),
            col(
                "Message",
                "string",
                "",
                "A human-readable description of the status of this operation.",
                0,
            ),
            col(
                "Name",
                "string",
                "name",
                "Name must be unique within a namespace.",
                1,
            ),
        ],
        Kind::Lease => vec![
            name,
            col("Holder", "string", "", "The holder of the lease", 0),
            age,
        ],
        Kind::Service => vec![
            name,
            col("Type", "string", "", "The type of the service.", 0),
            col("Cluster-IP", "string", "", "The cluster ip.", 0),
            col("External-IP", "string", "", "The external ip.", 0),
            col("Port(s)", "string", "", "The ports of the service.", 0),
            age,
            col("Selector", "string", "", "The selector of the service.", 1),
        ],
    }
}

/// Kubernetes' `duration.HumanDuration` of `secs`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let minutes = s / 60;
    if minutes < 10 {
        let rest = s % 60;
        return if rest == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{rest}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = s / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let d = (hours / 24) % 365;
        return if d == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{d}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// The AGE cell: time since `creationTimestamp`, `now` in Unix seconds.
fn age(obj: &Value, now: i64) -> String {
    meta(obj)
        .get("creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map_or_else(
            || "<unknown>".into(),
            |t| human_duration(now - t.as_second()),
        )
}

fn str_or_none(v: Option<&Value>) -> String {
    match v.and_then(Value::as_str) {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "<none>".into(),
    }
}

fn count(v: Option<&Value>) -> usize {
    v.and_then(Value::as_object).map_or(0, |m| m.len())
}

/// The pod STATUS column, as kubectl's printer computes it.
/// `<none>` without readiness gates, else how many of them have a True condition, of all.
fn readiness_gates(pod: &Value) -> String {
    let gates = pod
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if gates.is_empty() {
        return "<none>".into();
    }
    let conditions = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let met = gates
        .iter()
        .filter(|g| {
            conditions
                .iter()
                .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
        })
        .count();
    format!("{met}/{}", gates.len())
}

fn pod_status(pod: &Value) -> String {
    let mut reason = pod
        .pointer("/status/reason")
        .and_then(Value::as_str)
        .or_else(|| pod.pointer("/status/phase").and_then(Value::as_str))
        .unwrap_or("Pending")
        .to_string();
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for cs in statuses.iter().rev() {
        if let Some(r) = cs
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
        {
            reason = r.to_string();
        } else if let Some(t) = cs.pointer("/state/terminated") {
            reason = match t.get("reason").and_then(Value::as_str) {
                Some(r) if !r.is_empty() => r.to_string(),
                _ => match t.get("signal").and_then(Value::as_i64) {
                    Some(s) if s != 0 => format!("Signal:{s}"),
                    _ => format!(
                        "ExitCode:{}",
                        t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                    ),
                },
            };
        }
    }
    if meta(pod).get("deletionTimestamp").is_some() {
        reason = "Terminating".into();
    }
    reason
}

/// NAME STATUS ROLES AGE VERSION, then the wide columns.
fn node_cells(node: &Value, name: Value, age: Value) -> Vec<Value> {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"].as_str().unwrap_or_default().to_string());
    let mut status = match ready.as_deref() {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = meta(node)
        .get("labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };
    let address = |kind: &str| {
        node.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| x["type"] == kind))
            .and_then(|x| x["address"].as_str())
            .unwrap_or("<none>")
            .to_string()
    };
    let info = |k: &str| str_or_none(node.pointer(&format!("/status/nodeInfo/{k}")));
    vec![
        name,
        json!(status),
        json!(roles),
        age,
        json!(
            node.pointer("/status/nodeInfo/kubeletVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
        ),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

/// The cells of one row.
pub fn cells(kind: Kind, obj: &Value, now: i64) -> Vec<Value> {
    let name = json!(meta(obj).get("name").and_then(Value::as_str).unwrap_or(""));
    let age = json!(age(obj, now));
    match kind {
        // The same printer as core Events, as Kubernetes prints events.k8s.io Events.
        Kind::EventV1 => match super::events::v1_to_core(obj) {
            Ok(core) => cells(Kind::Event, &core, now),
            Err(_) => columns(Kind::Event).iter().map(|_| json!("")).collect(),
        },
        Kind::Pod => {
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let statuses = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ready = statuses
                .iter()
                .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let restarts: i64 = statuses
                .iter()
                .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                .sum();
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(obj)),
                json!(restarts.to_string()),
                age,
                json!(str_or_none(obj.pointer("/status/podIP"))),
                json!(str_or_none(obj.pointer("/spec/nodeName"))),
                json!(str_or_none(obj.pointer("/status/nominatedNodeName"))),
                json!(readiness_gates(obj)),
            ]
        }
        Kind::Namespace => vec![
            name,
            json!(
                obj.pointer("/status/phase")
                    .and_then(Value::as_str)
                    .unwrap_or("Active")
            ),
            age,
        ],
        Kind::ConfigMap => {
            let n = count(obj.get("data")) + count(obj.get("binaryData"));
            vec![name, json!(n.to_string()), age]
        }
        Kind::Secret => vec![
            name,
            json!(obj.get("type").and_then(Value::as_str).unwrap_or("Opaque")),
            json!(count(obj.get("data")).to_string()),
            age,
        ],
        Kind::Node => node_cells(obj, name, age),
        Kind::ServiceAccount => vec![
            name,
            json!(
                obj.get("secrets")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
                    .to_string()
            ),
            age,
        ],
        Kind::Event => {
            let last = ["lastTimestamp", "eventTime", "firstTimestamp"]
                .iter()
                .filter_map(|k| obj.get(*k).and_then(Value::as_str))
                .find_map(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .or_else(|| {
                    meta(obj)
                        .get("creationTimestamp")
                        .and_then(Value::as_str)
                        .and_then(|t| t.parse().ok())
                })
                .map_or_else(
                    || "<unknown>".into(),
                    |t| human_duration(now - t.as_second()),
                );
            let io = obj.get("involvedObject").unwrap_or(&Value::Null);
            let object = format!(
                "{}/{}",
                io.get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_lowercase(),
                io.get("name").and_then(Value::as_str).unwrap_or_default()
            );
            vec![
                json!(last),
                json!(obj.get("type").and_then(Value::as_str).unwrap_or_default()),
                json!(
                    obj.get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ),
                json!(object),
                json!(
                    obj.get("message")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .trim()
                ),
                name,
            ]
        }
        Kind::Lease => vec![
            name,
            json!(str_or_none(obj.pointer("/spec/holderIdentity"))),
            age,
        ],
        Kind::Service => service_cells(obj, name, age),
    }
}

/// A Service's row as `kubectl get services` prints it.
fn service_cells(obj: &Value, name: Value, age: Value) -> Vec<Value> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let external_ips = strings(&spec["externalIPs"]);
    let external = match ty {
        "ExternalName" => str_or_none(spec.get("externalName")),
        "LoadBalancer" => {
            let mut ips: Vec<String> = obj
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|i| {
                            i.get("ip")
                                .or_else(|| i.get("hostname"))
                                .and_then(Value::as_str)
                                .filter(|s| !s.is_empty())
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default();
            ips.extend(external_ips);
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        _ if external_ips.is_empty() => "<none>".into(),
        _ => external_ips.join(","),
    };
    let ports: Vec<String> = spec
        .get("ports")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| {
                    let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) if np > 0 => format!("{port}:{np}/{proto}"),
                        _ => format!("{port}/{proto}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let selector: Vec<String> = spec
        .get("selector")
        .and_then(Value::as_object)
        .map(|m| {
            let mut v: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    let none_if_empty = |v: Vec<String>| {
        if v.is_empty() {
            "<none>".to_string()
        } else {
            v.join(",")
        }
    };
    vec![
        name,
        json!(ty),
        json!(str_or_none(spec.get("clusterIP"))),
        json!(external),
        json!(none_if_empty(ports)),
        age,
        json!(none_if_empty(selector)),
    ]
}

/// One table row for `obj`.
pub fn row(kind: Kind, obj: &Value, include: IncludeObject, now: i64) -> Value {
    let mut row = json!({"cells": cells(kind, obj, now)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => row["object"] = obj.clone(),
        IncludeObject::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta(obj),
            })
        }
    }
    row
}

/// A whole Table; `with_columns` false leaves the definitions out (later watch events).
pub fn table(
    kind: Kind,
    objs: &[Value],
    include: IncludeObject,
    list_meta: Value,
    with_columns: bool,
    now: i64,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": if with_columns { columns(kind) } else { Vec::new() },
        "rows": objs.iter().map(|o| row(kind, o, include, now)).collect::<Vec<_>>(),
    })
}

/// True if the Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| {
        let first = first.replace(' ', "");
        first.contains("as=Table") && first.contains("g=meta.k8s.io")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(100 * 86400), "100d");
        assert_eq!(human_duration(-5), "<invalid>");
    }

    #[test]
    fn pod_row_has_ready_status_restarts_ip_node() {
        let pod = json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            ]},
        });
        let now = "2026-01-01T00:00:30Z"
            .parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap()
            .as_second();
        let c = cells(Kind::Pod, &pod, now);
        assert_eq!(
            c,
            vec![
                json!("web"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("3"),
                json!("30s"),
                json!("10.0.0.5"),
                json!("n1"),
                json!("<none>"),
                json!("<none>")
            ]
        );
        assert_eq!(columns(Kind::Pod).len(), c.len());
        assert_eq!(columns(Kind::Pod)[5]["priority"], 1);
        assert_eq!(columns(Kind::Pod)[8]["priority"], 1);
        let mut gated = pod.clone();
        gated["spec"]["readinessGates"] =
            json!([{"conditionType": "x/a"}, {"conditionType": "x/b"}]);
        gated["status"]["conditions"] =
            json!([{"type": "x/a", "status": "True"}, {"type": "x/b", "status": "False"}]);
        gated["status"]["nominatedNodeName"] = json!("n2");
        let c = cells(Kind::Pod, &gated, now);
        assert_eq!(c[7], json!("n2"));
        assert_eq!(c[8], json!("1/2"));
    }

    #[test]
    fn pending_pod_and_other_kinds() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}});
        let c = cells(Kind::Pod, &pod, 0);
        assert_eq!(c[2], "Pending");
        assert_eq!(c[5], "<none>");
        let cm = json!({"metadata": {"name": "c"}, "data": {"a": "b", "c": "d"}});
        assert_eq!(cells(Kind::ConfigMap, &cm, 0)[1], "2");
        let s = json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"a": "Yg=="}});
        assert_eq!(
            cells(Kind::Secret, &s, 0)[1..3],
            [json!("Opaque"), json!("1")]
        );
        let l = json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "n1"}});
        assert_eq!(cells(Kind::Lease, &l, 0)[1], "n1");
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort",
            "clusterIP": "10.43.0.10", "selector": {"b": "2", "a": "1"},
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
        let c = cells(Kind::Service, &svc, 0);
        assert_eq!(
            c[1..5],
            [
                json!("NodePort"),
                json!("10.43.0.10"),
                json!("<none>"),
                json!("80:30080/TCP,53/UDP")
            ]
        );
        assert_eq!(c[6], "a=1,b=2");
        assert_eq!(columns(Kind::Service).len(), c.len());
        let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIP": "None"}});
        let c = cells(Kind::Service, &lb, 0);
        assert_eq!(
            c[2..5],
            [json!("None"), json!("<pending>"), json!("<none>")]
        );
        let t = table(
            Kind::Namespace,
            &[json!({"metadata": {"name": "default"}, "status": {"phase": "Active"}})],
            IncludeObject::Metadata,
            json!({"resourceVersion": "5"}),
            true,
            0,
        );
        assert_eq!(t["rows"][0]["cells"][1], "Active");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn node_event_and_service_account_rows() {
        let node = json!({"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "Debian", "kernelVersion": "6.1",
                    "containerRuntimeVersion": "keelson://0.1.0"}}});
        let c = cells(Kind::Node, &node, 0);
        assert_eq!(c[1], "Ready,SchedulingDisabled");
        assert_eq!(c[2], "control-plane");
        assert_eq!(c[4], "v1.33.0");
        assert_eq!(c[5], "10.0.0.1");
        assert_eq!(c[6], "<none>");
        assert_eq!(columns(Kind::Node).len(), c.len());
        let ev = json!({"metadata": {"name": "e1"}, "type": "Normal", "reason": "Scheduled",
            "involvedObject": {"kind": "Pod", "name": "web"}, "message": "assigned ",
            "lastTimestamp": "1970-01-01T00:00:10Z"});
        let c = cells(Kind::Event, &ev, 15);
        assert_eq!(
            c,
            vec![
                json!("5s"),
                json!("Normal"),
                json!("Scheduled"),
                json!("pod/web"),
                json!("assigned"),
                json!("e1")
            ]
        );
        let sa = json!({"metadata": {"name": "default"}, "secrets": [{"name": "x"}]});
        assert_eq!(cells(Kind::ServiceAccount, &sa, 0)[1], "1");
    }

    #[test]
    fn accept_header() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
