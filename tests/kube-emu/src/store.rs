//! The object store: every object of every served resource, one global
//! resourceVersion counter, and a bounded history of watch events.
//!
//! Everything here is synchronous and runs under one mutex, which is what
//! makes resourceVersion ordering and watch event ordering trivially right.

use std::collections::{BTreeMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::patch;
use crate::validate;

/// One served resource type. The table below is also what discovery lists.
#[derive(Debug)]
pub struct ResourceType {
    /// API group; "" is the core group served under /api/v1.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The name used in error messages: "secrets", "leases.coordination.k8s.io".
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn id(&self) -> String {
        format!("{}/{}", self.api_version(), self.plural)
    }

    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }
}

const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

pub static RESOURCES: [ResourceType; 6] = [
    ResourceType {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
    },
    ResourceType {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
    },
    ResourceType {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
    },
];

pub fn verbs() -> &'static [&'static str] {
    VERBS
}

pub fn find_resource(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn namespaces_resource() -> &'static ResourceType {
    &RESOURCES[0]
}

/// An error answered as a Kubernetes `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, res: &ResourceType, name: &str) -> Self {
        let mut d = Map::new();
        d.insert("name".into(), json!(name));
        if !res.group.is_empty() {
            d.insert("group".into(), json!(res.group));
        }
        d.insert("kind".into(), json!(res.plural));
        self.details = Some(Value::Object(d));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn not_found(res: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", res.qualified(), name),
        )
        .with_details(res, name)
    }

    pub fn already_exists(res: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", res.qualified(), name),
        )
        .with_details(res, name)
    }

    pub fn conflict(res: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                res.qualified(),
                name,
                why
            ),
        )
        .with_details(res, name)
    }

    pub fn stale(res: &ResourceType, name: &str) -> Self {
        Self::conflict(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(res: &ResourceType, name: &str, causes: Vec<validate::FieldErr>) -> Self {
        let texts: Vec<String> = causes.iter().map(|c| c.to_string()).collect();
        let joined = if texts.len() == 1 {
            texts[0].clone()
        } else {
            format!("[{}]", texts.join(", "))
        };
        let mut err = Self::new(
            422,
            "Invalid",
            format!("{} \"{}\" is invalid: {}", res.kind, name, joined),
        );
        let mut d = Map::new();
        d.insert("name".into(), json!(name));
        if !res.group.is_empty() {
            d.insert("group".into(), json!(res.group));
        }
        d.insert("kind".into(), json!(res.kind));
        d.insert(
            "causes".into(),
            Value::Array(
                causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect(),
            ),
        );
        err.details = Some(Value::Object(d));
        err
    }

    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, kept so that watches can resume from a resourceVersion.
/// `old` lets a filtered watch turn label changes into ADDED/DELETED.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub resource: &'static ResourceType,
    pub namespace: String,
    pub kind: EventType,
    pub object: Value,
    pub old: Option<Value>,
}

/// (resource id, namespace or "" when cluster-scoped, name)
type Key = (String, String, String);

fn key(res: &ResourceType, ns: &str, name: &str) -> Key {
    (
        res.id(),
        if res.namespaced {
            ns.to_string()
        } else {
            String::new()
        },
        name.to_string(),
    )
}

pub struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Event>,
    history_limit: usize,
    /// Watches from a resourceVersion below this cannot be served (410).
    compacted_rv: u64,
    uid_counter: u64,
    /// Tells waiting watches that `rv` moved.
    notify: watch::Sender<u64>,
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"][field] = value;
}

/// RFC 3339 UTC timestamp with seconds precision, as the API server writes.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Object without resourceVersion, to detect no-op updates.
fn without_rv(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    o
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (notify, _) = watch::channel(0);
        Store {
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit,
            compacted_rv: 0,
            uid_counter: 0,
            notify,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    pub fn namespace_exists(&self, ns: &str) -> bool {
        self.objects
            .contains_key(&key(namespaces_resource(), "", ns))
    }

    fn new_uid(&mut self) -> String {
        self.uid_counter += 1;
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0) as u64;
        let a = seed.rotate_left(17) ^ self.uid_counter.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            a & 0xfff,
            (self.uid_counter >> 12) & 0xfff,
            self.uid_counter & 0xffff_ffff_ffff
        )
    }

    fn record(
        &mut self,
        res: &'static ResourceType,
        ns: &str,
        kind: EventType,
        object: Value,
        old: Option<Value>,
    ) {
        self.history.push_back(Event {
            rv: self.rv,
            resource: res,
            namespace: ns.to_string(),
            kind,
            object,
            old,
        });
        while self.history.len() > self.history_limit {
            if let Some(ev) = self.history.pop_front() {
                self.compacted_rv = ev.rv;
            }
        }
        self.notify.send_replace(self.rv);
    }

    /// Forget all history: any watch resuming from an older version gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_rv = self.rv;
        self.notify.send_replace(self.rv);
    }

    /// Events after `rv`, or Err(oldest servable rv) when they are gone.
    pub fn events_since(&self, rv: u64) -> Result<Vec<Event>, u64> {
        if rv < self.compacted_rv {
            return Err(self.compacted_rv);
        }
        Ok(self.history.iter().filter(|e| e.rv > rv).cloned().collect())
    }

    pub fn get(&self, res: &'static ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&key(res, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// All objects of a type, sorted by namespace then name; `ns` None = all.
    pub fn list(&self, res: &'static ResourceType, ns: Option<&str>) -> Vec<Value> {
        let id = res.id();
        self.objects
            .iter()
            .filter(|((r, n, _), _)| *r == id && ns.is_none_or(|want| !res.namespaced || n == want))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Fill in what the server owns and check the object (shared by all writes).
    fn prepare(
        &self,
        res: &'static ResourceType,
        ns: &str,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: the body must be a JSON object",
                res.kind, res.version, res.kind
            )));
        }
        for (field, want) in [
            ("kind", res.kind.to_string()),
            ("apiVersion", res.api_version()),
        ] {
            match obj.get(field).and_then(Value::as_str) {
                None | Some("") => obj[field] = json!(want),
                Some(got) if got != want => {
                    return Err(ApiError::bad_request(format!(
                        "{} in version \"{}\" cannot be handled as a {}: {field} {got:?} does not match the expected {want:?}",
                        res.kind, res.version, res.kind
                    )));
                }
                Some(_) => {}
            }
        }
        if res.namespaced {
            set_meta(obj, "namespace", json!(ns));
        } else if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("namespace");
        }
        validate::normalize(res, obj)?;
        validate::validate(res, obj, old)
    }

    pub fn create(
        &mut self,
        res: &'static ResourceType,
        ns: &str,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let given_ns = meta_str(&obj, "namespace").to_string();
        if res.namespaced && !given_ns.is_empty() && given_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if meta_str(&obj, "name").is_empty() {
            let prefix = meta_str(&obj, "generateName").to_string();
            if !prefix.is_empty() {
                let suffix: String = self
                    .new_uid()
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .take(5)
                    .collect();
                set_meta(&mut obj, "name", json!(format!("{prefix}{suffix}")));
            }
        }
        let name = meta_str(&obj, "name").to_string();
        if res.namespaced && !self.namespace_exists(ns) {
            return Err(ApiError::not_found(namespaces_resource(), ns));
        }
        // resourceVersion must not be set on create; uid is the server's.
        if !meta_str(&obj, "resourceVersion").is_empty() {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        self.prepare(res, ns, &mut obj, None)?;
        if self.objects.contains_key(&key(res, ns, &name)) {
            return Err(ApiError::already_exists(res, &name));
        }
        let uid = self.new_uid();
        set_meta(&mut obj, "uid", json!(uid));
        set_meta(&mut obj, "creationTimestamp", json!(now_rfc3339()));
        if dry_run {
            // A real server leaves resourceVersion empty on a dry-run create.
            return Ok(obj);
        }
        self.rv += 1;
        set_meta(&mut obj, "resourceVersion", json!(self.rv.to_string()));
        self.objects.insert(key(res, ns, &name), obj.clone());
        self.record(res, ns, EventType::Added, obj.clone(), None);
        Ok(obj)
    }

    /// PUT semantics. `obj` carries the caller's resourceVersion (if any),
    /// which must equal the stored one.
    pub fn update(
        &mut self,
        res: &'static ResourceType,
        ns: &str,
        name: &str,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self.get(res, ns, name)?;
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let body_name = meta_str(&obj, "name");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let given_ns = meta_str(&obj, "namespace");
        if res.namespaced && !given_ns.is_empty() && given_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let given_rv = meta_str(&obj, "resourceVersion");
        if !given_rv.is_empty() && given_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::stale(res, name));
        }
        let given_uid = meta_str(&obj, "uid");
        let old_uid = meta_str(&old, "uid");
        if !given_uid.is_empty() && given_uid != old_uid {
            return Err(ApiError::conflict(
                res,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {given_uid}, UID in object meta: {old_uid}"
                ),
            ));
        }
        set_meta(&mut obj, "uid", json!(old_uid));
        set_meta(
            &mut obj,
            "creationTimestamp",
            old["metadata"]["creationTimestamp"].clone(),
        );
        set_meta(
            &mut obj,
            "resourceVersion",
            json!(meta_str(&old, "resourceVersion")),
        );
        self.prepare(res, ns, &mut obj, Some(&old))?;
        if without_rv(&obj) == without_rv(&old) {
            // No change: a real server neither bumps resourceVersion nor emits an event.
            return Ok(old);
        }
        if dry_run {
            return Ok(obj);
        }
        self.rv += 1;
        set_meta(&mut obj, "resourceVersion", json!(self.rv.to_string()));
        self.objects.insert(key(res, ns, name), obj.clone());
        self.record(res, ns, EventType::Modified, obj.clone(), Some(old));
        Ok(obj)
    }

    /// PATCH: apply the patch to the stored object, then update. A
    /// resourceVersion inside the patch is a precondition, as on a real server.
    pub fn patch(
        &mut self,
        res: &'static ResourceType,
        ns: &str,
        name: &str,
        kind: patch::PatchKind,
        body: &Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self.get(res, ns, name)?;
        let patched = patch::apply(kind, &old, body)?;
        self.update(res, ns, name, patched, dry_run)
    }

    /// DELETE with optional preconditions from DeleteOptions.
    pub fn delete(
        &mut self,
        res: &'static ResourceType,
        ns: &str,
        name: &str,
        options: &Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self.get(res, ns, name)?;
        if let Some(want) = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            let have = meta_str(&old, "resourceVersion");
            if want != have {
                return Err(ApiError::conflict(
                    res,
                    name,
                    &format!(
                        "the ResourceVersion in the precondition ({want}) does not match the ResourceVersion in record ({have}). The object might have been modified"
                    ),
                ));
            }
        }
        if let Some(want) = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
        {
            let have = meta_str(&old, "uid");
            if want != have {
                return Err(ApiError::conflict(
                    res,
                    name,
                    &format!(
                        "the UID in the precondition ({want}) does not match the UID in record ({have}). The object might have been deleted and then recreated"
                    ),
                ));
            }
        }
        if dry_run {
            return Ok(old);
        }
        if res.is("", "namespaces") {
            // No Terminating phase here: the namespace's content goes at once.
            let inside: Vec<Key> = self
                .objects
                .keys()
                .filter(|(r, n, _)| !r.ends_with("/namespaces") && n == name)
                .cloned()
                .collect();
            for k in inside {
                if let Some(r) = RESOURCES.iter().find(|r| r.id() == k.0) {
                    self.remove(r, &k.1, &k.2);
                }
            }
        }
        Ok(self.remove(res, ns, name).unwrap_or(old))
    }

    fn remove(&mut self, res: &'static ResourceType, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self.objects.remove(&key(res, ns, name))?;
        self.rv += 1;
        set_meta(&mut obj, "resourceVersion", json!(self.rv.to_string()));
        self.record(res, ns, EventType::Deleted, obj.clone(), None);
        Some(obj)
    }
}
