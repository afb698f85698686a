//! The Kubernetes API over the store: routing, authentication, discovery and the verbs
//! (get, list, watch, create, update, patch, delete) for the kinds in [`resources`].
//!
//! Objects are stored as JSON without `metadata.resourceVersion`; every read sets it from
//! the key's mod revision, so resourceVersion is always the store revision of the last write.

pub mod auth;
pub mod object;
pub mod openapi;
pub mod proto;
pub mod resources;
pub mod selector;
pub mod smp;
pub mod status;
pub mod table;
mod watch;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::store::{KeyValue, ListContinue, Store, StoreError};
use auth::{Tokens, User};
use object::{FieldValidation, meta_mut, meta_str};
use resources::{Kind, RESOURCES, Resource};
use selector::{FieldSelector, LabelSelector};
use status::{ApiError, Cause};
use table::IncludeObject;

/// Response bodies: whole JSON documents or a watch's event stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Request bodies the server reads: hyper's `Incoming`, or any body in tests.
pub trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + 'static
{
}

impl<B> RequestBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static
{
}

/// Largest request body accepted.
const MAX_BODY: usize = 3 * 1024 * 1024;

/// The API server's request handler.
pub struct ApiServer {
    store: Arc<dyn Store>,
    tokens: Tokens,
    server_address: String,
}

/// Which objects a request is about.
#[derive(Debug)]
struct Target {
    res: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

impl Target {
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    fn key(&self) -> String {
        self.res.key(self.namespace.as_deref(), self.name())
    }

    fn not_found(&self) -> ApiError {
        ApiError::NotFound {
            resource: self.res.qualified(),
            name: self.name().to_string(),
        }
    }

    fn store_err(&self, e: StoreError) -> ApiError {
        ApiError::from_store(e, &self.res.qualified(), self.name())
    }
}

pub fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed_unsync());
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.to_status(),
    )
}

fn text_response(s: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(s.as_bytes())).boxed_unsync());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Decodes `%XX` and `+` in a query component.
fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn is_true(q: &HashMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("1" | "true" | "True"))
}

/// A stored value as the object clients see (resourceVersion set).
fn to_object(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("stored object {} is corrupt: {e}", kv.key)))?;
    meta_mut(&mut v).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    Ok(v)
}

/// The value to store: everything but resourceVersion.
fn to_stored(obj: &Value) -> Bytes {
    let mut v = obj.clone();
    meta_mut(&mut v).remove("resourceVersion");
    Bytes::from(v.to_string())
}

fn encode_continue(c: &ListContinue) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"key": c.key, "rev": c.revision}).to_string())
}

fn decode_continue(token: &str, prefix: &str) -> Result<ListContinue, ApiError> {
    let bad = || ApiError::BadRequest(format!("continue token {token:?} is not valid"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let key = v["key"].as_str().ok_or_else(bad)?;
    let revision = v["rev"].as_i64().ok_or_else(bad)?;
    if !key.starts_with(prefix) {
        return Err(bad());
    }
    Ok(ListContinue {
        key: key.to_string(),
        revision,
    })
}

/// Label and field selectors of a list or watch.
struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn from_query(res: &Resource, q: &HashMap<String, String>) -> Result<Filter, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| ApiError::BadRequest(format!("labelSelector: {e}")))?;
        let fields = FieldSelector::parse(
            q.get("fieldSelector").map_or("", String::as_str),
            &res.fields(),
        )
        .map_err(|e| ApiError::BadRequest(format!("fieldSelector: {e}")))?;
        Ok(Filter { labels, fields })
    }

    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(&object::labels(obj)) && self.fields.matches(obj)
    }
}

fn now_secs() -> i64 {
    object::unix_now()
}

impl ApiServer {
    pub fn new(store: Arc<dyn Store>, tokens: Tokens, server_address: String) -> ApiServer {
        ApiServer {
            store,
            tokens,
            server_address,
        }
    }

    /// Creates the namespaces every cluster has, if missing.
    pub async fn bootstrap(&self) -> Result<(), ApiError> {
        let res = Resource::find("", "v1", "namespaces").expect("namespaces are served");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            let target = Target {
                res,
                namespace: None,
                name: None,
                sub: None,
            };
            match self.create(&target, &HashMap::new(), body).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Serves one request; `cert_user` is the verified client certificate's user, if any.
    pub async fn handle<B: RequestBody>(
        &self,
        req: Request<B>,
        cert_user: Option<User>,
    ) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let started = std::time::Instant::now();
        let resp = match self.route(req, cert_user).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        tracing::debug!(%method, %path, %content_type, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
        resp
    }

    async fn route<B: RequestBody>(
        &self,
        req: Request<B>,
        cert_user: Option<User>,
    ) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let public = matches!(path.as_str(), "/version")
            || ["/healthz", "/readyz", "/livez"]
                .iter()
                .any(|p| path == *p || path.starts_with(&format!("{p}/")));
        let user = cert_user.or_else(|| {
            req.headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| self.tokens.authenticate(v))
        });
        if public {
            if path == "/version" {
                return Ok(json_response(StatusCode::OK, &version()));
            }
            return Ok(text_response("ok"));
        }
        // Node users are authorized like the admin for now (node restrictions come later).
        if user.is_none() {
            return Err(ApiError::Unauthorized);
        }
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let get = req.method() == Method::GET;
        match segs.as_slice() {
            ["api"] if get => Ok(json_response(
                StatusCode::OK,
                &resources::core_versions(&self.server_address),
            )),
            ["apis"] if get => Ok(json_response(StatusCode::OK, &resources::group_list())),
            ["api", "v1"] if get => Ok(json_response(
                StatusCode::OK,
                &resources::resource_list("", "v1").expect("core/v1 is served"),
            )),
            ["apis", g] if get => resources::group(g)
                .map(|v| json_response(StatusCode::OK, &v))
                .ok_or(ApiError::NoRoute),
            ["apis", g, v] if get => resources::resource_list(g, v)
                .map(|v| json_response(StatusCode::OK, &v))
                .ok_or(ApiError::NoRoute),
            ["api", "v1", rest @ ..] => {
                let t = parse_target("", "v1", rest)?;
                self.serve(t, req).await
            }
            ["apis", g, v, rest @ ..] => {
                let t = parse_target(g, v, rest)?;
                self.serve(t, req).await
            }
            ["openapi", "v3"] if get => Ok(json_response(StatusCode::OK, &openapi::root())),
            ["openapi", "v3", rest @ ..] if get => openapi::document(&rest.join("/"))
                .map(|v| json_response(StatusCode::OK, &v))
                .ok_or(ApiError::NoRoute),
            ["api" | "apis", ..] => Err(ApiError::MethodNotAllowed),
            _ => Err(ApiError::NoRoute),
        }
    }

    async fn serve<B: RequestBody>(
        &self,
        t: Target,
        req: Request<B>,
    ) -> Result<Response<Body>, ApiError> {
        let q = parse_query(req.uri().query());
        let accept = req
            .headers()
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let method = req.method().clone();
        let as_table = table::wants_table(&accept);
        let include = IncludeObject::parse(q.get("includeObject").map(String::as_str));
        if let Some(sub) = t.sub.as_deref()
            && t.res.kind == Kind::Pod
            && matches!(sub, "binding" | "eviction")
        {
            if method != Method::POST {
                return Err(ApiError::MethodNotAllowed);
            }
            let body = parse_json(&read_body(req).await?)?;
            if sub == "binding" {
                self.bind(&t, &body).await?;
            } else {
                let opts = body.get("deleteOptions").cloned().unwrap_or(json!({}));
                self.delete(&t, &q, &opts).await?;
            }
            return Ok(json_response(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ));
        }
        if let Some(sub) = t.sub.as_deref()
            && t.res.kind == Kind::Pod
            && matches!(sub, "log" | "exec" | "attach" | "portforward")
        {
            let (_, pod) = self.current(&t).await?;
            return Err(match pod["spec"]["nodeName"].as_str() {
                Some(node) if !node.is_empty() => ApiError::Unavailable(format!(
                    "pod {:?}: the agent of node {node:?} cannot be reached for {sub} (proxying to node agents is not served yet)",
                    t.name()
                )),
                _ => {
                    ApiError::BadRequest(format!("pod {} does not have a host assigned", t.name()))
                }
            });
        }
        if let Some(sub) = &t.sub
            && !(sub == "status" && t.res.status)
        {
            return Err(ApiError::NoRoute);
        }
        if t.sub.is_some() && !matches!(method, Method::GET | Method::PUT | Method::PATCH) {
            return Err(ApiError::MethodNotAllowed);
        }
        if t.name.is_none() {
            return match method {
                Method::GET if is_true(&q, "watch") => {
                    watch::watch(
                        self.store.clone(),
                        t.res,
                        t.namespace,
                        &q,
                        as_table,
                        include,
                    )
                    .await
                }
                Method::GET => {
                    let list = self.list(&t, &q).await?;
                    Ok(json_response(
                        StatusCode::OK,
                        &list.render(t.res, as_table, include),
                    ))
                }
                Method::POST => {
                    let body = read_body(req).await?;
                    let body = body_json(t.res, &content_type, &body)?;
                    let (obj, warnings) = self.create(&t, &q, body).await?;
                    Ok(with_warnings(
                        json_response(StatusCode::CREATED, &obj),
                        &warnings,
                    ))
                }
                Method::DELETE => {
                    let body = read_body(req).await?;
                    let opts = if body.iter().all(u8::is_ascii_whitespace)
                        || content_type.starts_with("application/vnd.kubernetes.protobuf")
                    {
                        json!({})
                    } else {
                        parse_json(&body)?
                    };
                    let list = self.delete_collection(&t, &q, &opts).await?;
                    Ok(json_response(
                        StatusCode::OK,
                        &list.render(t.res, false, include),
                    ))
                }
                _ => Err(ApiError::MethodNotAllowed),
            };
        }
        match method {
            Method::GET => {
                let kv = self
                    .store
                    .get(&t.key())
                    .await
                    .map_err(|e| t.store_err(e))?
                    .ok_or_else(|| t.not_found())?;
                let obj = to_object(&kv)?;
                if as_table {
                    let rv = kv.mod_revision.to_string();
                    return Ok(json_response(
                        StatusCode::OK,
                        &table::table(
                            t.res.kind,
                            &[obj],
                            include,
                            json!({"resourceVersion": rv}),
                            true,
                            now_secs(),
                        ),
                    ));
                }
                Ok(json_response(StatusCode::OK, &obj))
            }
            Method::PUT => {
                let body = read_body(req).await?;
                let new = body_json(t.res, &content_type, &body)?;
                let (obj, warnings) = self.update(&t, &q, new).await?;
                Ok(with_warnings(
                    json_response(StatusCode::OK, &obj),
                    &warnings,
                ))
            }
            Method::PATCH => {
                let body = read_body(req).await?;
                let (obj, warnings) = self.patch(&t, &q, &content_type, &body).await?;
                Ok(with_warnings(
                    json_response(StatusCode::OK, &obj),
                    &warnings,
                ))
            }
            Method::DELETE => {
                let body = read_body(req).await?;
                let opts = if content_type.starts_with("application/vnd.kubernetes.protobuf")
                    || body.iter().all(u8::is_ascii_whitespace)
                {
                    json!({})
                } else {
                    parse_json(&body)?
                };
                let obj = self.delete(&t, &q, &opts).await?;
                Ok(json_response(StatusCode::OK, &obj))
            }
            _ => Err(ApiError::MethodNotAllowed),
        }
    }

    async fn list(&self, t: &Target, q: &HashMap<String, String>) -> Result<ListPage, ApiError> {
        let filter = Filter::from_query(t.res, q)?;
        let prefix = t.res.prefix(t.namespace.as_deref());
        let limit: usize = match q.get("limit").map(String::as_str) {
            None | Some("") => 0,
            Some(l) => l
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("limit {l:?} is not a number")))?,
        };
        let mut cont = match q.get("continue").map(String::as_str) {
            None | Some("") => None,
            Some(c) => Some(decode_continue(c, &prefix)?),
        };
        let mut items = Vec::new();
        loop {
            let want = if limit == 0 { 0 } else { limit.max(50) };
            let page = self
                .store
                .list(&prefix, want, cont.clone())
                .await
                .map_err(|e| ApiError::from_store(e, &t.res.qualified(), ""))?;
            let n = page.items.len();
            for (i, kv) in page.items.iter().enumerate() {
                let obj = to_object(kv)?;
                if !filter.matches(&obj) {
                    continue;
                }
                items.push(obj);
                if limit > 0 && items.len() == limit && (i + 1 < n || page.more) {
                    return Ok(ListPage {
                        items,
                        revision: page.revision,
                        continue_token: Some(encode_continue(&ListContinue {
                            key: kv.key.clone(),
                            revision: page.revision,
                        })),
                    });
                }
            }
            match page.continuation() {
                Some(c) => cont = Some(c),
                None => {
                    return Ok(ListPage {
                        items,
                        revision: page.revision,
                        continue_token: None,
                    });
                }
            }
        }
    }

    async fn namespace_exists(&self, ns: &str) -> Result<(), ApiError> {
        let res = Resource::find("", "v1", "namespaces").expect("namespaces are served");
        match self.store.get(&res.key(None, ns)).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(ApiError::NotFound {
                resource: "namespaces".into(),
                name: ns.into(),
            }),
            Err(e) => Err(ApiError::from_store(e, "namespaces", ns)),
        }
    }

    async fn create(
        &self,
        t: &Target,
        q: &HashMap<String, String>,
        body: Value,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let res = t.res;
        let fv = FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?;
        let (mut obj, warnings) = object::decode(res, body, fv)?;
        if res.namespaced {
            let ns = t.namespace.clone().unwrap_or_default();
            match meta_str(&obj, "namespace") {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ));
                }
                _ => {}
            }
            meta_mut(&mut obj).insert("namespace".into(), json!(ns));
        } else {
            meta_mut(&mut obj).remove("namespace");
        }
        let generate = meta_str(&obj, "generateName").map(str::to_string);
        let named = meta_str(&obj, "name").is_some_and(|n| !n.is_empty());
        {
            let m = meta_mut(&mut obj);
            for k in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
                "managedFields",
            ] {
                m.remove(k);
            }
            m.insert("uid".into(), json!(object::new_uid()));
            m.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
            m.insert("generation".into(), json!(1));
        }
        object::default_on_create(res, &mut obj);
        object::fold_string_data(res, &mut obj);
        let dry_run = q.get("dryRun").is_some_and(|d| d == "All");
        for attempt in 0..5 {
            if !named && let Some(g) = &generate {
                meta_mut(&mut obj).insert(
                    "name".into(),
                    json!(format!("{g}{}", object::random_suffix())),
                );
            }
            let name = meta_str(&obj, "name").unwrap_or_default().to_string();
            let causes = object::validate(res, &obj);
            if !causes.is_empty() {
                return Err(ApiError::Invalid {
                    kind: res.qualified_kind(),
                    name,
                    causes,
                });
            }
            if res.namespaced {
                self.namespace_exists(t.namespace.as_deref().unwrap_or_default())
                    .await?;
            }
            if dry_run {
                return Ok((obj, warnings));
            }
            let key = res.key(t.namespace.as_deref(), &name);
            match self.store.create(&key, to_stored(&obj)).await {
                Ok(rev) => {
                    meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
                    return Ok((obj, warnings));
                }
                Err(StoreError::AlreadyExists { .. }) if !named && attempt < 4 => continue,
                Err(e) => return Err(ApiError::from_store(e, &res.qualified(), &name)),
            }
        }
        unreachable!("the create loop returns")
    }

    /// Checks and completes `new` as the replacement of `cur` (both client-visible objects).
    fn prepare_update(
        &self,
        t: &Target,
        cur: &Value,
        new: Value,
        fv: FieldValidation,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let res = t.res;
        let (mut new, warnings) = object::decode(res, new, fv)?;
        let name = meta_str(&new, "name").unwrap_or_default();
        if name != t.name() {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                t.name()
            )));
        }
        if res.namespaced
            && let Some(ns) = meta_str(&new, "namespace")
            && !ns.is_empty()
            && Some(ns) != t.namespace.as_deref()
        {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        if let Some(rv) = meta_str(&new, "resourceVersion")
            && !rv.is_empty()
            && Some(rv) != meta_str(cur, "resourceVersion")
        {
            return Err(ApiError::Conflict {
                resource: res.qualified(),
                name: t.name().into(),
            });
        }
        if t.sub.as_deref() == Some("status") {
            let mut merged = cur.clone();
            merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            new = merged;
        } else if res.status {
            // The main resource cannot change status (the /status subresource does).
            new["status"] = cur.get("status").cloned().unwrap_or(Value::Null);
        }
        object::default_on_create(res, &mut new);
        object::fold_string_data(res, &mut new);
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("metadata");
                m.remove("status");
            }
            v
        };
        let changed = strip(cur) != strip(&new);
        let generation = cur["metadata"]["generation"].as_i64().unwrap_or(1);
        {
            let m = meta_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "namespace",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match cur["metadata"].get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            m.insert(
                "generation".into(),
                json!(if changed { generation + 1 } else { generation }),
            );
            m.remove("managedFields");
            m.remove("selfLink");
        }
        let mut causes = object::validate(res, &new);
        if t.sub.is_none() {
            causes.extend(object::validate_update(res, cur, &new));
        }
        if !causes.is_empty() {
            return Err(ApiError::Invalid {
                kind: res.qualified_kind(),
                name: t.name().into(),
                causes,
            });
        }
        Ok((new, warnings))
    }

    async fn current(&self, t: &Target) -> Result<(KeyValue, Value), ApiError> {
        let kv = self
            .store
            .get(&t.key())
            .await
            .map_err(|e| t.store_err(e))?
            .ok_or_else(|| t.not_found())?;
        let obj = to_object(&kv)?;
        Ok((kv, obj))
    }

    async fn write(&self, t: &Target, kv: &KeyValue, mut obj: Value) -> Result<Value, ApiError> {
        let rev = self
            .store
            .update(&t.key(), to_stored(&obj), Some(kv.mod_revision))
            .await
            .map_err(|e| t.store_err(e))?;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
        // Deletion waited for finalizers (and a pod's grace period): once none is left, the
        // object goes.
        let finalized = obj["metadata"].get("deletionTimestamp").is_some()
            && obj["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty)
            && obj["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0)
                == 0;
        if finalized {
            match self.store.delete(&t.key(), Some(rev)).await {
                Ok(_) | Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
                Err(e) => return Err(t.store_err(e)),
            }
        }
        Ok(obj)
    }

    async fn update(
        &self,
        t: &Target,
        q: &HashMap<String, String>,
        new: Value,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let fv = FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?;
        let (kv, cur) = self.current(t).await?;
        let (obj, warnings) = self.prepare_update(t, &cur, new, fv)?;
        Ok((self.write(t, &kv, obj).await?, warnings))
    }

    async fn patch(
        &self,
        t: &Target,
        q: &HashMap<String, String>,
        content_type: &str,
        body: &[u8],
    ) -> Result<(Value, Vec<String>), ApiError> {
        let fv = FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?;
        let media = content_type.split(';').next().unwrap_or_default().trim();
        let patch: Value = parse_json(body)?;
        for attempt in 0.. {
            let (kv, cur) = self.current(t).await?;
            let mut doc = cur.clone();
            match media {
                "application/merge-patch+json" => json_patch::merge(&mut doc, &patch),
                "application/json-patch+json" => {
                    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                        .map_err(|e| ApiError::BadRequest(format!("json patch: {e}")))?;
                    json_patch::patch(&mut doc, &ops).map_err(|e| ApiError::Invalid {
                        kind: t.res.qualified_kind(),
                        name: t.name().into(),
                        causes: vec![Cause {
                            reason: "FieldValueInvalid",
                            field: "patch".into(),
                            message: e.to_string(),
                        }],
                    })?;
                }
                "application/strategic-merge-patch+json" => {
                    smp::apply(&mut doc, &patch)
                        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                }
                other => {
                    return Err(ApiError::UnsupportedMediaType(format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (not {other:?}; server-side apply is not served yet)"
                    )));
                }
            }
            let (obj, warnings) = self.prepare_update(t, &cur, doc, fv)?;
            match self.write(t, &kv, obj).await {
                Err(ApiError::Conflict { .. }) if attempt < 5 => continue,
                r => return r.map(|o| (o, warnings)),
            }
        }
        unreachable!("the patch loop returns")
    }

    async fn delete(
        &self,
        t: &Target,
        q: &HashMap<String, String>,
        opts: &Value,
    ) -> Result<Value, ApiError> {
        let (kv, cur) = self.current(t).await?;
        let pre = &opts["preconditions"];
        let conflict = || ApiError::Conflict {
            resource: t.res.qualified(),
            name: t.name().into(),
        };
        if let Some(uid) = pre["uid"].as_str()
            && Some(uid) != meta_str(&cur, "uid")
        {
            return Err(conflict());
        }
        if let Some(rv) = pre["resourceVersion"].as_str()
            && Some(rv) != meta_str(&cur, "resourceVersion")
        {
            return Err(conflict());
        }
        let grace = opts["gracePeriodSeconds"].as_i64().or_else(|| {
            q.get("gracePeriodSeconds")
                .and_then(|g| g.parse::<i64>().ok())
        });
        let has_finalizers = cur["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        // A pod bound to a node terminates gracefully: its node's agent stops it and then
        // deletes it with a grace period of 0.
        let bound = t.res.kind == Kind::Pod
            && cur["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            && !matches!(
                cur["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            );
        let pod_grace = if bound {
            grace
                .or_else(|| cur["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30)
                .max(0)
        } else {
            0
        };
        if has_finalizers || pod_grace > 0 {
            let mut obj = cur.clone();
            let m = meta_mut(&mut obj);
            let already = m.contains_key("deletionTimestamp");
            let current_grace = m
                .get("deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let new_grace = if already {
                pod_grace.min(current_grace)
            } else {
                pod_grace
            };
            if already && new_grace == current_grace {
                return Ok(cur);
            }
            if has_finalizers || new_grace > 0 {
                let at = object::unix_now() + new_grace;
                if !already || new_grace < current_grace {
                    m.insert("deletionTimestamp".into(), json!(object::rfc3339(at)));
                }
                m.insert("deletionGracePeriodSeconds".into(), json!(new_grace));
                return self.write(t, &kv, obj).await;
            }
        }
        if t.res.kind == Kind::Namespace {
            self.delete_contents(t.name()).await?;
        }
        self.store
            .delete(&t.key(), Some(kv.mod_revision))
            .await
            .map_err(|e| t.store_err(e))?;
        Ok(cur)
    }

    /// `DELETE` on a collection: deletes each object the selectors match.
    async fn delete_collection(
        &self,
        t: &Target,
        q: &HashMap<String, String>,
        opts: &Value,
    ) -> Result<ListPage, ApiError> {
        let mut lq = q.clone();
        lq.remove("limit");
        lq.remove("continue");
        let list = self.list(t, &lq).await?;
        let mut deleted = Vec::new();
        for obj in list.items {
            let target = Target {
                res: t.res,
                namespace: meta_str(&obj, "namespace").map(str::to_string),
                name: meta_str(&obj, "name").map(str::to_string),
                sub: None,
            };
            match self.delete(&target, q, opts).await {
                Ok(o) => deleted.push(o),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ListPage {
            items: deleted,
            revision: list.revision,
            continue_token: None,
        })
    }

    /// `pods/binding`: assigns an unassigned pod to the binding's target node.
    async fn bind(&self, t: &Target, binding: &Value) -> Result<(), ApiError> {
        let node = binding["target"]["name"].as_str().unwrap_or_default();
        if node.is_empty() {
            return Err(ApiError::Invalid {
                kind: "Binding".into(),
                name: t.name().into(),
                causes: vec![Cause::required("target.name")],
            });
        }
        for attempt in 0.. {
            let (kv, mut pod) = self.current(t).await?;
            if let Some(bound) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                return Err(ApiError::ConflictMessage(format!(
                    "Operation cannot be fulfilled on pods/binding {:?}: pod {} is already assigned to node {bound:?}",
                    t.name(),
                    t.name()
                )));
            }
            if meta_str(&pod, "deletionTimestamp").is_some() {
                return Err(ApiError::ConflictMessage(format!(
                    "Operation cannot be fulfilled on pods/binding {:?}: pod {} is being deleted, cannot be assigned to a host",
                    t.name(),
                    t.name()
                )));
            }
            pod["spec"]["nodeName"] = json!(node);
            let now = object::now_rfc3339();
            let status = pod
                .as_object_mut()
                .expect("pod is an object")
                .entry("status")
                .or_insert_with(|| json!({}));
            let conditions = status
                .as_object_mut()
                .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
            if let Some(Value::Array(cs)) = conditions {
                cs.retain(|c| c["type"] != "PodScheduled");
                cs.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
            }
            match self.write(t, &kv, pod).await {
                Err(ApiError::Conflict { .. }) if attempt < 5 => continue,
                r => return r.map(|_| ()),
            }
        }
        unreachable!("the bind loop returns")
    }

    /// Deletes every object in namespace `ns` (before the namespace itself goes).
    async fn delete_contents(&self, ns: &str) -> Result<(), ApiError> {
        for r in RESOURCES.iter().filter(|r| r.namespaced) {
            let prefix = r.prefix(Some(ns));
            loop {
                let page = self
                    .store
                    .list(&prefix, 500, None)
                    .await
                    .map_err(|e| ApiError::from_store(e, &r.qualified(), ""))?;
                for kv in &page.items {
                    match self.store.delete(&kv.key, None).await {
                        Ok(_) | Err(StoreError::NotFound { .. }) => {}
                        Err(e) => return Err(ApiError::from_store(e, &r.qualified(), &kv.key)),
                    }
                }
                if !page.more {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// One page of a list, before rendering.
struct ListPage {
    items: Vec<Value>,
    revision: i64,
    continue_token: Option<String>,
}

impl ListPage {
    fn render(self, res: &Resource, as_table: bool, include: IncludeObject) -> Value {
        let mut meta = json!({"resourceVersion": self.revision.to_string()});
        if let Some(c) = self.continue_token {
            meta["continue"] = json!(c);
        }
        if as_table {
            return table::table(res.kind, &self.items, include, meta, true, now_secs());
        }
        json!({
            "kind": format!("{}List", res.kind_name),
            "apiVersion": res.api_version(),
            "metadata": meta,
            "items": self.items,
        })
    }
}

fn parse_target(group: &str, version: &str, segs: &[&str]) -> Result<Target, ApiError> {
    let find = |p: &str| Resource::find(group, version, p).ok_or(ApiError::NoRoute);
    let namespaced = |p: &str| {
        RESOURCES
            .iter()
            .any(|r| r.group == group && r.version == version && r.plural == p && r.namespaced)
    };
    let owned = |s: &str| Some(s.to_string());
    let t = match segs {
        ["namespaces", ns, p, rest @ ..] => {
            if namespaced(p) {
                let res = find(p)?;
                match rest {
                    [] => (res, owned(ns), None, None),
                    [name] => (res, owned(ns), owned(name), None),
                    [name, sub] => (res, owned(ns), owned(name), owned(sub)),
                    _ => return Err(ApiError::NoRoute),
                }
            } else if group.is_empty() && rest.is_empty() {
                (find("namespaces")?, None, owned(ns), owned(p))
            } else {
                return Err(ApiError::NoRoute);
            }
        }
        [p] => (find(p)?, None, None, None),
        [p, name] if !find(p)?.namespaced => (find(p)?, None, owned(name), None),
        [p, name, sub] if !find(p)?.namespaced => (find(p)?, None, owned(name), owned(sub)),
        _ => return Err(ApiError::NoRoute),
    };
    Ok(Target {
        res: t.0,
        namespace: t.1,
        name: t.2,
        sub: t.3,
    })
}

/// A create or update body as JSON, from JSON or Kubernetes protobuf.
fn body_json(res: &Resource, content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "" | "application/json" => parse_json(body),
        "application/vnd.kubernetes.protobuf" => proto::decode(res.kind, body).map_err(|e| {
            if matches!(e, proto::ProtoError::Unsupported(_)) {
                ApiError::UnsupportedMediaType(e.to_string())
            } else {
                ApiError::BadRequest(e.to_string())
            }
        }),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/vnd.kubernetes.protobuf (not {other:?})"
        ))),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body of the request could not be decoded as JSON: {e}"
        ))
    })
}

async fn read_body<B: RequestBody>(req: Request<B>) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    limited
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))
}

fn with_warnings(mut r: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let v = format!("299 - {}", Value::String(w.clone()));
        if let Ok(h) = HeaderValue::from_str(&v) {
            r.headers_mut().append("Warning", h);
        }
    }
    r
}

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": format!("v1.33.0+keelson-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "n/a (rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("", "v1", &["namespaces", "x", "pods", "p", "status"]).unwrap();
        assert_eq!(t.res.plural, "pods");
        assert_eq!(t.namespace.as_deref(), Some("x"));
        assert_eq!(t.name.as_deref(), Some("p"));
        assert_eq!(t.sub.as_deref(), Some("status"));
        let t = parse_target("", "v1", &["namespaces", "x"]).unwrap();
        assert_eq!(t.res.plural, "namespaces");
        assert_eq!(t.name.as_deref(), Some("x"));
        let t = parse_target("", "v1", &["pods"]).unwrap();
        assert!(t.namespace.is_none() && t.name.is_none());
        assert!(parse_target("", "v1", &["pods", "p"]).is_err());
        assert!(parse_target("", "v1", &["widgets"]).is_err());
        let t = parse_target("coordination.k8s.io", "v1", &["namespaces", "n", "leases"]).unwrap();
        assert_eq!(t.res.plural, "leases");
    }

    #[test]
    fn query_decoding() {
        let q = parse_query(Some("labelSelector=a%3Db%2Cc+in+%28x%29&watch=1&limit=5"));
        assert_eq!(q["labelSelector"], "a=b,c in (x)");
        assert!(is_true(&q, "watch"));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn continue_tokens_round_trip() {
        let c = ListContinue {
            key: "/registry/pods/x/p".into(),
            revision: 7,
        };
        let token = encode_continue(&c);
        assert_eq!(decode_continue(&token, "/registry/pods/").unwrap(), c);
        assert!(decode_continue(&token, "/registry/secrets/").is_err());
        assert!(decode_continue("!!", "/").is_err());
    }
}
