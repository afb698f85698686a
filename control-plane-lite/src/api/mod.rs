//! The Kubernetes API over the store: routing, authentication, discovery and the verbs
//! (get, list, watch, create, update, patch, delete) for the kinds in [`resources`].
//!
//! Objects are stored as JSON without `metadata.resourceVersion`; every read sets it from
//! the key's mod revision, so resourceVersion is always the store revision of the last write.

mod apply;
pub mod auth;
pub mod authz;
pub mod events;
pub mod gc;
pub mod object;
pub mod openapi;
pub mod proto;
pub mod proxy;
mod raw;
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
    /// How pod logs/exec/attach/portforward and nodes/proxy reach node agents.
    kubelet: std::sync::OnceLock<proxy::KubeletClient>,
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

/// A JSON body that is already serialized.
fn bytes_response(body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).boxed_unsync());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
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

/// A stored value as clients of `res` see it: [`to_object`], then converted to the resource's
/// version when it is stored in another (`events.k8s.io/v1` Events are core Events).
fn to_object_as(res: &Resource, kv: &KeyValue) -> Result<Value, ApiError> {
    let obj = to_object(kv)?;
    match res.kind {
        Kind::EventV1 => events::core_to_v1(&obj),
        _ => Ok(obj),
    }
}

/// The value to store for an object of `res`, in the storage version.
fn to_stored_as(res: &Resource, obj: &Value) -> Result<Bytes, ApiError> {
    match res.kind {
        Kind::EventV1 => Ok(to_stored(&events::v1_to_core(obj)?)),
        _ => Ok(to_stored(obj)),
    }
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

    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
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
            kubelet: std::sync::OnceLock::new(),
        }
    }

    /// Creates the namespaces every cluster has and the `default/kubernetes` Service, if
    /// missing, and builds the OpenAPI documents.
    pub async fn bootstrap(&self) -> Result<(), ApiError> {
        openapi::warm();
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
        // The API server's own Service, as in every cluster: the first address of the
        // service CIDR, port 443 to the server's port.
        let port: u16 = self
            .server_address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(6443);
        let body = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": object::KUBERNETES_SERVICE_IP.to_string(),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}});
        let target = Target {
            res: Resource::find("", "v1", "services").expect("services are served"),
            namespace: Some("default".into()),
            name: None,
            sub: None,
        };
        match self.create(&target, &HashMap::new(), body).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
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
        if public {
            if path == "/version" {
                return Ok(json_response(StatusCode::OK, &version()));
            }
            return Ok(text_response("ok"));
        }
        let authorization = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        // Discovery is open to every authenticated user; everything else is authorized
        // per request (authz.rs).
        let Some(user) = self.authenticate(cert_user, authorization).await? else {
            return Err(ApiError::Unauthorized);
        };
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
            ["api", "v1", "nodes", name, "proxy", ..] => self.proxy_node(&user, name, req).await,
            ["api", "v1", rest @ ..] => {
                let t = parse_target("", "v1", rest)?;
                self.authorize_and_serve(&user, t, req).await
            }
            ["apis", g, v, rest @ ..] => {
                let t = parse_target(g, v, rest)?;
                self.authorize_and_serve(&user, t, req).await
            }
            ["openapi", "v2"] if get => Ok(openapi::serve_v2(req.headers())),
            ["openapi", "v3"] if get => Ok(json_response(StatusCode::OK, &openapi::root())),
            ["openapi", "v3", rest @ ..] if get => {
                openapi::serve_v3(&rest.join("/"), req.headers(), req.uri().query())
                    .ok_or(ApiError::NoRoute)
            }
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
                self.bind(&t, &q, &body).await?;
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
            return self.proxy_pod(&t, req).await;
        }
        if let Some(sub) = &t.sub
            && !(sub == "status" && t.res.status)
            && !(sub == "finalize" && t.res.kind == Kind::Namespace && method == Method::PUT)
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
                Method::GET => self.list_response(&t, &q, as_table, include).await,
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
                let obj = to_object_as(t.res, &kv)?;
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
            Method::PATCH if apply::is_apply(&content_type) => {
                let body = read_body(req).await?;
                let (obj, warnings, created) = self.apply(&t, &q, &body).await?;
                let code = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok(with_warnings(json_response(code, &obj), &warnings))
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
        self.list_items(t, q, |kv| {
            let obj = to_object_as(t.res, kv)?;
            Ok(filter.matches(&obj).then_some(obj))
        })
        .await
    }

    /// `GET` on a collection. Objects go from their stored bytes to the response without
    /// becoming JSON trees unless a selector or a Table needs their fields.
    async fn list_response(
        &self,
        t: &Target,
        q: &HashMap<String, String>,
        as_table: bool,
        include: IncludeObject,
    ) -> Result<Response<Body>, ApiError> {
        let filter = Filter::from_query(t.res, q)?;
        let page = self
            .list_items(t, q, |kv| {
                if t.res.kind == Kind::EventV1 {
                    // Stored in another version: converted, not passed through.
                    let obj = to_object_as(t.res, kv)?;
                    return Ok(filter.matches(&obj).then(|| obj.to_string().into_bytes()));
                }
                if !filter.is_empty() && !filter.matches(&to_object(kv)?) {
                    return Ok(None);
                }
                raw::with_resource_version(&kv.value, kv.mod_revision)
                    .map(Some)
                    .map_err(|e| {
                        ApiError::Internal(format!("stored object {} is corrupt: {e}", kv.key))
                    })
            })
            .await?;
        let mut meta = json!({"resourceVersion": page.revision.to_string()});
        if let Some(c) = &page.continue_token {
            meta["continue"] = json!(c);
        }
        if as_table {
            // One tree at a time: each object becomes its row's bytes before the next is read.
            let now = now_secs();
            let rows = page
                .items
                .iter()
                .map(|b| {
                    let obj: Value = serde_json::from_slice(b).map_err(|e| {
                        ApiError::Internal(format!("listed object is not json: {e}"))
                    })?;
                    Ok(
                        serde_json::to_vec(&table::row(t.res.kind, &obj, include, now))
                            .expect("a row serializes"),
                    )
                })
                .collect::<Result<Vec<Vec<u8>>, ApiError>>()?;
            let body = raw::table_body(&Value::Array(table::columns(t.res.kind)), &meta, &rows);
            return Ok(bytes_response(body));
        }
        let body = raw::list_body(
            &t.res.api_version(),
            &format!("{}List", t.res.kind_name),
            &meta,
            &page.items,
        );
        Ok(bytes_response(body))
    }

    /// The paging loop of a list: `make` turns each stored object into an item, or None when
    /// the request's selectors exclude it.
    async fn list_items<T>(
        &self,
        t: &Target,
        q: &HashMap<String, String>,
        mut make: impl FnMut(&KeyValue) -> Result<Option<T>, ApiError>,
    ) -> Result<ListPage<T>, ApiError> {
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
                let Some(item) = make(kv)? else {
                    continue;
                };
                items.push(item);
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

    /// Checks that namespace `ns` exists and accepts new content (is not terminating).
    async fn namespace_exists(&self, res: &Resource, name: &str, ns: &str) -> Result<(), ApiError> {
        let nres = Resource::find("", "v1", "namespaces").expect("namespaces are served");
        match self.store.get(&nres.key(None, ns)).await {
            Ok(Some(kv)) => {
                let obj = to_object(&kv)?;
                if obj["metadata"].get("deletionTimestamp").is_some()
                    || obj["status"]["phase"] == "Terminating"
                {
                    return Err(ApiError::Forbidden(format!(
                        "{} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        res.qualified()
                    )));
                }
                Ok(())
            }
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
        self.create_managed(t, q, body, None).await
    }

    /// Creates an object; `managed` is the `managedFields` to store with it (server-side
    /// apply), otherwise none is kept.
    async fn create_managed(
        &self,
        t: &Target,
        q: &HashMap<String, String>,
        body: Value,
        managed: Option<Value>,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let res = t.res;
        let fv = FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?;
        let dry_run = dry_run(q, None)?;
        field_manager(q)?;
        let (mut obj, mut warnings) = object::decode(res, body, fv)?;
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
            if let Some(mf) = managed {
                m.insert("managedFields".into(), mf);
            }
        }
        object::default_on_create(res, &mut obj);
        object::fold_string_data(res, &mut obj);
        if res.kind == Kind::Service {
            object::allocate_service_from_store(self.store.as_ref(), res, &mut obj).await?;
        }
        warnings.extend(object::meta_warnings(&obj));
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
                self.namespace_exists(res, &name, t.namespace.as_deref().unwrap_or_default())
                    .await?;
            }
            if dry_run {
                return Ok((obj, warnings));
            }
            let key = res.key(t.namespace.as_deref(), &name);
            match self.store.create(&key, to_stored_as(res, &obj)?).await {
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
    async fn prepare_update(
        &self,
        t: &Target,
        cur: &Value,
        new: Value,
        fv: FieldValidation,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let res = t.res;
        let (mut new, mut warnings) = object::decode(res, new, fv)?;
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
        let mut meta_causes = Vec::new();
        if let Some(uid) = meta_str(&new, "uid")
            && !uid.is_empty()
            && Some(uid) != meta_str(cur, "uid")
        {
            meta_causes.push(Cause::invalid("metadata.uid", uid, "field is immutable"));
        }
        if cur["metadata"].get("deletionTimestamp").is_some() {
            let old = gc::finalizers(cur);
            if gc::finalizers(&new).iter().any(|f| !old.contains(f)) {
                meta_causes.push(Cause::forbidden(
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        match t.sub.as_deref() {
            Some("status") => {
                let mut merged = cur.clone();
                merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
                new = merged;
            }
            Some("finalize") => {
                // A namespace's finalize subresource changes `spec.finalizers` only.
                let mut merged = cur.clone();
                merged["spec"]["finalizers"] = new["spec"]["finalizers"].clone();
                if merged["spec"]["finalizers"].is_null() {
                    merged["spec"]["finalizers"] = json!([]);
                }
                new = merged;
            }
            _ => {
                if res.status {
                    // The main resource cannot change status (the /status subresource does).
                    new["status"] = cur.get("status").cloned().unwrap_or(Value::Null);
                }
                if res.kind == Kind::Namespace {
                    // Nor a namespace's finalizers (its finalize subresource does).
                    new["spec"] = cur.get("spec").cloned().unwrap_or(Value::Null);
                }
            }
        }
        object::default_on_create(res, &mut new);
        object::keep_service_allocations_from_store(self.store.as_ref(), res, cur, &mut new)
            .await?;
        object::fold_string_data(res, &mut new);
        // Generation counts changes of the spec (of everything but metadata and status for
        // kinds without one).
        let has_spec = cur.get("spec").is_some() || new.get("spec").is_some();
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("metadata");
                m.remove("status");
            }
            v
        };
        let changed = if has_spec {
            cur.get("spec") != new.get("spec")
        } else {
            strip(cur) != strip(&new)
        };
        let generation = cur["metadata"]["generation"].as_i64().unwrap_or(1);
        {
            let m = meta_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "namespace",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
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
            m.remove("selfLink");
        }
        warnings.extend(object::meta_warnings(&new));
        let mut causes = meta_causes;
        causes.extend(object::validate(res, &new));
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
        let obj = to_object_as(t.res, &kv)?;
        Ok((kv, obj))
    }

    async fn write(&self, t: &Target, kv: &KeyValue, mut obj: Value) -> Result<Value, ApiError> {
        let rev = self
            .store
            .update(&t.key(), to_stored_as(t.res, &obj)?, Some(kv.mod_revision))
            .await
            .map_err(|e| t.store_err(e))?;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
        if is_finalized(t.res, &obj) {
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
        let dry_run = dry_run(q, None)?;
        field_manager(q)?;
        let (kv, cur) = self.current(t).await?;
        let (obj, warnings) = self.prepare_update(t, &cur, new, fv).await?;
        if dry_run {
            return Ok((obj, warnings));
        }
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
        let dry_run = dry_run(q, None)?;
        field_manager(q)?;
        if q.contains_key("force") {
            return Err(ApiError::Invalid {
                kind: "PatchOptions.meta.k8s.io".into(),
                name: String::new(),
                causes: vec![Cause::forbidden(
                    "force",
                    "may not be specified for non-apply patch",
                )],
            });
        }
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
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (not {other:?})"
                    )));
                }
            }
            let (obj, warnings) = self.prepare_update(t, &cur, doc, fv).await?;
            if dry_run {
                return Ok((obj, warnings));
            }
            match self.write(t, &kv, obj).await {
                Err(ApiError::Conflict { .. }) if attempt < 5 => continue,
                r => return r.map(|o| (o, warnings)),
            }
        }
        unreachable!("the patch loop returns")
    }

    /// Deletes one object: at once, or by setting its deletion timestamp when finalizers (a
    /// propagation policy's among them), a pod's grace period or a namespace's contents hold
    /// it. With `dryRun=All` nothing is written and the would-be result is returned.
    async fn delete(
        &self,
        t: &Target,
        q: &HashMap<String, String>,
        opts: &Value,
    ) -> Result<Value, ApiError> {
        let dry_run = dry_run(q, Some(opts))?;
        let policy = gc::propagation(opts, q)?;
        if t.res.kind == Kind::Namespace && gc::IMMORTAL_NAMESPACES.contains(&t.name()) {
            return Err(ApiError::Forbidden(format!(
                "namespaces {:?} is forbidden: this namespace may not be deleted",
                t.name()
            )));
        }
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
        let old_finalizers = gc::finalizers(&cur);
        let new_finalizers = gc::finalizers_on_delete(&old_finalizers, policy);
        // Namespaces stored before they carried the `kubernetes` finalizer get it now.
        let legacy_namespace = t.res.kind == Kind::Namespace && cur["spec"]["finalizers"].is_null();
        let namespace_held = legacy_namespace
            || (t.res.kind == Kind::Namespace
                && cur["spec"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty()));
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
        let held = !new_finalizers.is_empty() || namespace_held;
        if held || pod_grace > 0 {
            let mut obj = cur.clone();
            let finalizers_changed = {
                let mut a = old_finalizers.clone();
                let mut b = new_finalizers.clone();
                a.sort();
                b.sort();
                a != b
            };
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
            if already && new_grace == current_grace && !finalizers_changed {
                return Ok(cur);
            }
            if held || new_grace > 0 {
                let at = object::unix_now() + new_grace;
                if !already || new_grace < current_grace {
                    m.insert("deletionTimestamp".into(), json!(object::rfc3339(at)));
                }
                m.insert("deletionGracePeriodSeconds".into(), json!(new_grace));
                if !already && let Some(g) = m.get("generation").and_then(Value::as_i64) {
                    m.insert("generation".into(), json!(g + 1));
                }
                gc::set_finalizers(&mut obj, new_finalizers);
                if t.res.kind == Kind::Namespace {
                    obj["status"]["phase"] = json!("Terminating");
                    if legacy_namespace {
                        obj["spec"]["finalizers"] = json!([gc::NAMESPACE_FINALIZER]);
                    }
                }
                if dry_run {
                    return Ok(obj);
                }
                let out = self.write(t, &kv, obj).await?;
                if namespace_held && !already {
                    // Most namespaces empty at once; what stays (terminating pods, finalizers)
                    // is finished by the garbage collector's sweeps.
                    if let Err(e) = self.finalize_namespace(t.name()).await {
                        tracing::warn!(namespace = t.name(), error = %e, "finalizing namespace");
                    }
                }
                return Ok(out);
            }
        }
        if dry_run {
            return Ok(cur);
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
        dry_run(q, Some(opts))?;
        gc::propagation(opts, q)?;
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

    /// `pods/binding`: assigns an unassigned pod to the binding's target node. With
    /// `dryRun=All` everything is checked and nothing written. A binding with a
    /// `metadata.uid` binds only the pod of that uid.
    async fn bind(
        &self,
        t: &Target,
        q: &HashMap<String, String>,
        binding: &Value,
    ) -> Result<(), ApiError> {
        let dry_run = dry_run(q, None)?;
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
            if let Some(uid) = meta_str(binding, "uid").filter(|u| !u.is_empty())
                && Some(uid) != meta_str(&pod, "uid")
            {
                return Err(ApiError::ConflictMessage(format!(
                    "Operation cannot be fulfilled on pods/binding {:?}: Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    t.name(),
                    meta_str(&pod, "uid").unwrap_or_default()
                )));
            }
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
            if dry_run {
                return Ok(());
            }
            match self.write(t, &kv, pod).await {
                Err(ApiError::Conflict { .. }) if attempt < 5 => continue,
                r => return r.map(|_| ()),
            }
        }
        unreachable!("the bind loop returns")
    }
}

/// One page of a list, before rendering.
struct ListPage<T = Value> {
    items: Vec<T>,
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

/// `dryRun` of a write (the query, or a delete's options): only `All` is accepted.
fn dry_run(q: &HashMap<String, String>, opts: Option<&Value>) -> Result<bool, ApiError> {
    let mut values: Vec<String> = q.get("dryRun").into_iter().cloned().collect();
    if let Some(list) = opts.and_then(|o| o["dryRun"].as_array()) {
        values.extend(list.iter().filter_map(Value::as_str).map(str::to_string));
    }
    let mut on = false;
    for v in values.iter().filter(|v| !v.is_empty()) {
        if v != "All" {
            return Err(ApiError::BadRequest(format!(
                "dryRun: Unsupported value: {v:?}: supported values: \"All\""
            )));
        }
        on = true;
    }
    Ok(on)
}

/// `fieldManager` of a write, checked as Kubernetes checks it (at most 128 printable
/// characters). Recorded only by server-side apply.
fn field_manager(q: &HashMap<String, String>) -> Result<Option<&str>, ApiError> {
    let Some(m) = q
        .get("fieldManager")
        .map(String::as_str)
        .filter(|m| !m.is_empty())
    else {
        return Ok(None);
    };
    if m.chars().count() > 128 || m.chars().any(|c| c.is_control()) {
        return Err(ApiError::BadRequest(format!(
            "fieldManager: Invalid value: {m:?}: must be at most 128 printable characters"
        )));
    }
    Ok(Some(m))
}

/// Whether a deleted object is free to go: its deletion timestamp is set and no finalizer,
/// grace period or (for a namespace) namespace finalizer holds it any more.
fn is_finalized(res: &Resource, obj: &Value) -> bool {
    obj["metadata"].get("deletionTimestamp").is_some()
        && obj["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty)
        && obj["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0)
            == 0
        && (res.kind != Kind::Namespace
            || obj["spec"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty))
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
