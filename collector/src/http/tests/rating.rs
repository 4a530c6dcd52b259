//! The CloudKitty-compatible rating API (`/v1`) in process: every hashmap config endpoint and
//! the modules, info, collector, quote and routing endpoints, with their statuses and bodies.
//! (Rating real samples with the CLI and the processing loop stays end to end, in
//! `tests/tests/it/rating.rs`.) The cases read as the end-to-end ones did: a blocking [`Api`]
//! over the in-process router.

use axum::http::Method;
use serde_json::{Value, json};

use super::{ADMIN_SID, TENANT_A_SID, World};
use crate::CollectorConfig;

const HM: &str = "/v1/rating/module_config/hashmap";

/// A world on its own runtime, so that the cases stay plain sequential code.
struct Harness {
    rt: tokio::runtime::Runtime,
    w: World,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(CollectorConfig::default())
    }

    fn with(config: CollectorConfig) -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let w = rt.block_on(World::bare(config));
        Harness { rt, w }
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let a = self.rt.block_on(self.w.call(method, path, headers, body));
        let header = |k: &str| {
            a.headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let text = String::from_utf8_lossy(&a.body).into_owned();
        Answer {
            request_id: header("x-openstack-request-id"),
            cors: header("access-control-allow-origin"),
            status: a.status.as_u16(),
            location: header("location"),
            content_type: header("content-type").unwrap_or_default(),
            body: if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            },
        }
    }
}

/// An HTTP answer: status, Location header, JSON body (Null when empty, a string when not JSON).
struct Answer {
    /// `x-openstack-request-id`.
    request_id: Option<String>,
    /// `access-control-allow-origin`.
    cors: Option<String>,
    status: u16,
    location: Option<String>,
    body: Value,
    content_type: String,
}

/// A client acting with one set of headers.
struct Api<'a> {
    h: &'a Harness,
    headers: Vec<(String, String)>,
}

impl<'a> Api<'a> {
    fn token(h: &'a Harness, sid: &str) -> Api<'a> {
        Api::with(h, &[("X-Auth-Token", sid)])
    }

    fn with(h: &'a Harness, headers: &[(&str, &str)]) -> Api<'a> {
        Api {
            h,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn req(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let mut h: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let text = match &body {
            Some(b) => {
                h.push(("Content-Type", "application/json"));
                b.to_string()
            }
            None => String::new(),
        };
        self.h.call(method, path, &h, &text)
    }

    fn get(&self, path: &str) -> Answer {
        self.req("GET", path, None)
    }

    /// GET that must answer 200; the body.
    fn ok(&self, path: &str) -> Value {
        let a = self.get(path);
        assert_eq!(a.status, 200, "GET {path}: {}", a.body);
        a.body
    }

    fn post(&self, path: &str, body: Value) -> Answer {
        self.req("POST", path, Some(body))
    }

    /// POST that must create (201 + Location); the object.
    fn create(&self, path: &str, body: Value) -> Value {
        let a = self.post(path, body.clone());
        assert_eq!(a.status, 201, "POST {path} {body}: {}", a.body);
        let loc = a.location.expect("Location on 201");
        let id = a
            .body
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| k.ends_with("_id"))
            .unwrap()
            .1
            .as_str()
            .unwrap()
            .to_string();
        assert!(loc.ends_with(&format!("/{id}")), "{loc} names {id}");
        a.body
    }
}

fn fault(a: &Answer, status: u16, msg: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"faultcode": if status >= 500 { "Server" } else { "Client" }, "faultstring": msg, "debuginfo": null})
    );
}

#[test]
fn hashmap_config_api_statuses_and_bodies() {
    let h = Harness::new();
    let api = Api::token(&h, ADMIN_SID);
    let missing = "6a3fb9e8-1c5f-4b7b-9d3e-0d3b7f0e2a11";

    assert_eq!(api.ok(&format!("{HM}/types")), json!(["flat", "rate"]));
    assert_eq!(api.ok(&format!("{HM}/services/")), json!({"services": []}));
    let svc = api.create(&format!("{HM}/services"), json!({"name": "compute"}));
    let sid_ = svc["service_id"].as_str().unwrap().to_string();
    assert_eq!(api.ok(&format!("{HM}/services/{sid_}")), svc);
    assert_eq!(
        api.ok(&format!("{HM}/services")),
        json!({"services": [svc]})
    );
    fault(
        &api.post(&format!("{HM}/services"), json!({"name": "compute"})),
        409,
        &format!("Service compute already exists (UUID: {sid_})"),
    );
    fault(
        &api.post(
            &format!("{HM}/services"),
            json!({"name": "x", "colour": "red"}),
        ),
        400,
        "Unknown attribute for argument service_data: colour",
    );
    fault(
        &api.post(&format!("{HM}/services"), json!({})),
        400,
        "Invalid input for field/attribute name. Value: 'None'. Mandatory field missing.",
    );
    fault(
        &api.get(&format!("{HM}/services/{missing}")),
        404,
        &format!("No such service: None (UUID: {missing})"),
    );
    fault(
        &api.get(&format!("{HM}/services/not-a-uuid")),
        400,
        "Invalid input for field/attribute service_id. Value: 'not-a-uuid'. Value should be UUID format",
    );

    // Fields.
    fault(
        &api.get(&format!("{HM}/fields")),
        400,
        "Missing argument: \"service_id\"",
    );
    let field = api.create(
        &format!("{HM}/fields"),
        json!({"service_id": sid_, "name": "flavor"}),
    );
    let fid = field["field_id"].as_str().unwrap().to_string();
    assert_eq!(
        field,
        json!({"field_id": fid, "name": "flavor", "service_id": sid_})
    );
    assert_eq!(
        api.ok(&format!("{HM}/fields?service_id={sid_}")),
        json!({"fields": [field]})
    );
    assert_eq!(
        api.ok(&format!("{HM}/services/{sid_}/fields")),
        json!({"fields": [field]})
    );
    assert_eq!(api.ok(&format!("{HM}/fields/{fid}")), field);
    fault(
        &api.post(
            &format!("{HM}/fields"),
            json!({"service_id": sid_, "name": "flavor"}),
        ),
        409,
        &format!("Field flavor already exists (UUID: {fid})"),
    );
    fault(
        &api.post(
            &format!("{HM}/fields"),
            json!({"service_id": missing, "name": "x"}),
        ),
        400,
        &format!("No such service: None (UUID: {missing})"),
    );
    fault(
        &api.get(&format!("{HM}/fields/{missing}")),
        404,
        &format!("No such field: {missing}"),
    );

    // Groups.
    let group = api.create(&format!("{HM}/groups"), json!({"name": "premium"}));
    let gid = group["group_id"].as_str().unwrap().to_string();
    assert_eq!(api.ok(&format!("{HM}/groups")), json!({"groups": [group]}));
    assert_eq!(api.ok(&format!("{HM}/groups/{gid}")), group);
    fault(
        &api.post(&format!("{HM}/groups"), json!({"name": "premium"})),
        409,
        &format!("Group premium already exists (UUID: {gid})"),
    );
    fault(
        &api.get(&format!("{HM}/groups/{missing}")),
        404,
        &format!("No such group: None (UUID: {missing})"),
    );

    // Mappings: shape, validation, duplicates, update, group lookups, delete.
    let m = api.create(
        &format!("{HM}/mappings"),
        json!({"field_id": fid, "value": "m1.small", "cost": "1.50", "group_id": gid}),
    );
    let mid = m["mapping_id"].as_str().unwrap().to_string();
    assert_eq!(
        m,
        json!({"mapping_id": mid, "value": "m1.small", "type": "flat", "cost": "1.5",
               "service_id": null, "field_id": fid, "group_id": gid, "tenant_id": null})
    );
    let sm = api.create(
        &format!("{HM}/mappings"),
        json!({"service_id": sid_, "cost": 2, "type": "rate"}),
    );
    assert_eq!(
        (&sm["value"], &sm["cost"], &sm["type"]),
        (&Value::Null, &json!("2"), &json!("rate"))
    );
    let bad: Vec<(Value, String)> = vec![
        (json!({"field_id": fid, "value": "x"}), "Invalid input for field/attribute cost. Value: 'None'. Mandatory field missing.".into()),
        (json!({"field_id": fid, "service_id": sid_, "value": "x", "cost": 1}), "You can only specify one parent.".into()),
        (json!({"value": "x", "cost": 1}), "You must specify one parent.".into()),
        (json!({"service_id": sid_, "value": "x", "cost": 1}), "You can't specify a value and a service_id.".into()),
        (json!({"field_id": fid, "cost": 1}), "You must specify a value for a field mapping.".into()),
        (json!({"field_id": fid, "value": "x", "cost": 1, "type": "bogus"}), "Invalid input for field/attribute type. Value: 'bogus'. Value should be one of: flat, rate".into()),
        (json!({"field_id": missing, "value": "x", "cost": 1}), format!("No such field: {missing}")),
        (json!({"field_id": fid, "value": "x", "cost": "1e20"}), "Invalid input for field/attribute cost. Value: '1e20'. Value should have at most 12 integer digits.".into()),
    ];
    for (body, msg) in bad {
        fault(&api.post(&format!("{HM}/mappings"), body), 400, &msg);
    }
    let a = api.post(
        &format!("{HM}/mappings"),
        json!({"field_id": fid, "value": "x", "cost": "abc"}),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body["faultstring"]
            .as_str()
            .unwrap()
            .starts_with("Invalid input for field/attribute cost.")
    );
    fault(
        &api.post(
            &format!("{HM}/mappings"),
            json!({"field_id": fid, "value": "m1.small", "cost": 9, "group_id": gid}),
        ),
        409,
        &format!("Mapping 'm1.small' already exists for field '{fid}', tenant: 'None'"),
    );
    fault(
        &api.post(
            &format!("{HM}/mappings"),
            json!({"service_id": sid_, "cost": 1, "type": "rate"}),
        ),
        409,
        &format!("Mapping 'None' already exists for service '{sid_}', tenant: 'None'"),
    );
    // The same value for a tenant, or in another group, is not a duplicate.
    api.create(&format!("{HM}/mappings"), json!({"field_id": fid, "value": "m1.small", "cost": 1, "tenant_id": "t1", "group_id": gid}));
    api.create(
        &format!("{HM}/mappings"),
        json!({"field_id": fid, "value": "m1.small", "cost": 1}),
    );
    fault(
        &api.get(&format!("{HM}/mappings")),
        400,
        "You must specify either service_id, field_id or group_id (or all=true).",
    );
    assert_eq!(
        api.ok(&format!("{HM}/mappings?field_id={fid}"))["mappings"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        api.ok(&format!(
            "{HM}/mappings?field_id={fid}&filter_tenant=true&tenant_id=t1"
        ))["mappings"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.ok(&format!("{HM}/mappings?field_id={fid}&filter_tenant=true"))["mappings"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        api.ok(&format!("{HM}/mappings?field_id={fid}&no_group=true"))["mappings"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.ok(&format!("{HM}/services/{sid_}/mappings"))["mappings"],
        json!([sm])
    );
    assert_eq!(api.ok(&format!("{HM}/mappings/{mid}")), m);
    assert_eq!(
        api.ok(&format!("{HM}/mappings/group?mapping_id={mid}")),
        group
    );
    let smid = sm["mapping_id"].as_str().unwrap();
    fault(
        &api.get(&format!("{HM}/mappings/group?mapping_id={smid}")),
        404,
        &format!("Mapping has no group (UUID: {smid})"),
    );
    assert_eq!(
        api.ok(&format!("{HM}/groups/mappings?group_id={gid}"))["mappings"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    fault(
        &api.get(&format!("{HM}/mappings/{missing}")),
        404,
        &format!("No such mapping: {missing}"),
    );
    // PUT: 302 with Location and no body; the change is visible.
    let mut edited = m.clone();
    edited["cost"] = json!("1.75");
    let a = api.req("PUT", &format!("{HM}/mappings/{mid}"), Some(edited));
    assert_eq!(a.status, 302, "{}", a.body);
    assert!(
        a.location
            .unwrap()
            .ends_with(&format!("{HM}/mappings/{mid}"))
    );
    assert_eq!(a.body, Value::Null);
    assert_eq!(api.ok(&format!("{HM}/mappings/{mid}"))["cost"], "1.75");
    fault(
        &api.req(
            "PUT",
            &format!("{HM}/mappings/{missing}"),
            Some(json!({"cost": 1})),
        ),
        404,
        &format!("No such mapping: {missing}"),
    );
    fault(
        &api.req(
            "PUT",
            &format!("{HM}/mappings/{mid}"),
            Some(json!({"value": null})),
        ),
        400,
        "You must specify a value for a field mapping.",
    );
    // The client's form: DELETE on the collection with the id in the body.
    let a = api.req(
        "DELETE",
        &format!("{HM}/mappings/"),
        Some(json!({"mapping_id": smid})),
    );
    assert_eq!((a.status, a.body), (204, Value::Null));
    fault(
        &api.req("DELETE", &format!("{HM}/mappings/{smid}"), None),
        404,
        &format!("No such mapping: {smid}"),
    );

    // Thresholds.
    fault(
        &api.post(
            &format!("{HM}/thresholds"),
            json!({"service_id": sid_, "cost": 1}),
        ),
        400,
        "Invalid input for field/attribute level. Value: 'None'. Mandatory field missing.",
    );
    let t = api.create(
        &format!("{HM}/thresholds"),
        json!({"service_id": sid_, "level": "2.00000000", "cost": "0.9", "type": "rate"}),
    );
    let tid = t["threshold_id"].as_str().unwrap().to_string();
    assert_eq!(
        t,
        json!({"threshold_id": tid, "level": "2", "type": "rate", "cost": "0.9",
               "service_id": sid_, "field_id": null, "group_id": null, "tenant_id": null})
    );
    fault(
        &api.post(
            &format!("{HM}/thresholds"),
            json!({"service_id": sid_, "level": 2, "cost": 1}),
        ),
        409,
        &format!("Threshold '2' already exists for service '{sid_}', tenant: 'None'"),
    );
    assert_eq!(
        api.ok(&format!("{HM}/thresholds?service_id={sid_}")),
        json!({"thresholds": [t]})
    );
    assert_eq!(api.ok(&format!("{HM}/thresholds/{tid}")), t);
    fault(
        &api.get(&format!("{HM}/thresholds/group?threshold_id={tid}")),
        404,
        &format!("Threshold has no group (UUID: {tid})"),
    );
    let a = api.req(
        "PUT",
        &format!("{HM}/thresholds/{tid}"),
        Some(json!({"group_id": gid})),
    );
    assert_eq!(a.status, 302);
    assert_eq!(
        api.ok(&format!("{HM}/thresholds/group?threshold_id={tid}")),
        group
    );
    fault(
        &api.get(&format!("{HM}/thresholds/{missing}")),
        404,
        &format!("No such threshold: {missing}"),
    );

    // Deleting a group without recursive keeps its rules (back in the default group); with
    // recursive they go. Deleting a service cascades to its fields and rules.
    let g2 = api.create(&format!("{HM}/groups"), json!({"name": "tmp"}));
    let g2id = g2["group_id"].as_str().unwrap();
    let a = api.req("DELETE", &format!("{HM}/groups/{gid}"), None);
    assert_eq!(a.status, 204);
    assert_eq!(
        api.ok(&format!("{HM}/mappings/{mid}"))["group_id"],
        Value::Null
    );
    let r = api.create(
        &format!("{HM}/mappings"),
        json!({"field_id": fid, "value": "big", "cost": 1, "group_id": g2id}),
    );
    assert_eq!(
        api.req(
            "DELETE",
            &format!("{HM}/groups/{g2id}?recursive=true"),
            None
        )
        .status,
        204
    );
    assert_eq!(
        api.get(&format!(
            "{HM}/mappings/{}",
            r["mapping_id"].as_str().unwrap()
        ))
        .status,
        404
    );
    fault(
        &api.req("DELETE", &format!("{HM}/groups/{gid}"), None),
        404,
        &format!("No such group: None (UUID: {gid})"),
    );
    assert_eq!(
        api.req("DELETE", &format!("{HM}/services/{sid_}"), None)
            .status,
        204
    );
    assert_eq!(api.get(&format!("{HM}/fields/{fid}")).status, 404);
    assert_eq!(api.get(&format!("{HM}/mappings/{mid}")).status, 404);
    assert_eq!(api.get(&format!("{HM}/thresholds/{tid}")).status, 404);
    fault(
        &api.req("DELETE", &format!("{HM}/services/{sid_}"), None),
        404,
        &format!("No such service: None (UUID: {sid_})"),
    );
}

#[test]
fn modules_info_collector_quote_and_routing() {
    let h = Harness::new();
    let api = Api::token(&h, ADMIN_SID);

    // Modules.
    let modules = api.ok("/v1/rating/modules");
    assert_eq!(
        modules,
        json!({"modules": [
            {"module_id": "hashmap", "description": "HashMap rating module.", "enabled": true, "hot-config": true, "priority": 1},
            {"module_id": "noop", "description": "Dummy test module.", "enabled": true, "hot-config": false, "priority": 1},
            {"module_id": "pyscripts", "description": "PyScripts rating module (vmmon never runs scripts; it cannot be enabled).", "enabled": false, "hot-config": false, "priority": 1}
        ]})
    );
    assert_eq!(
        api.ok("/v1/billing/modules/"),
        modules,
        "billing alias, trailing slash"
    );
    let a = api.req(
        "PUT",
        "/v1/rating/modules/hashmap",
        Some(json!({"module_id": "hashmap", "enabled": false, "priority": 3})),
    );
    assert_eq!(a.status, 302);
    assert!(a.location.unwrap().ends_with("/v1/rating/modules/hashmap"));
    assert_eq!(api.ok("/v1/rating/modules/hashmap")["enabled"], false);
    assert_eq!(api.ok("/v1/rating/modules/hashmap")["priority"], 3);
    fault(
        &api.get("/v1/rating/modules/nope"),
        404,
        "Module not found.",
    );
    fault(
        &api.req(
            "PUT",
            "/v1/rating/modules/nope",
            Some(json!({"module_id": "nope"})),
        ),
        404,
        "Module not found.",
    );
    fault(
        &api.req(
            "PUT",
            "/v1/rating/modules/hashmap",
            Some(json!({"enabled": true})),
        ),
        400,
        "Invalid input for field/attribute module_id. Value: 'None'. Mandatory field missing.",
    );
    fault(
        &api.req(
            "PUT",
            "/v1/rating/modules/hashmap",
            Some(json!({"module_id": "hashmap", "colour": 1})),
        ),
        400,
        "Unknown attribute for argument module: colour",
    );
    fault(
        &api.req(
            "PUT",
            "/v1/rating/modules/pyscripts",
            Some(json!({"module_id": "pyscripts", "enabled": true})),
        ),
        400,
        "pyscripts cannot be enabled: vmmon never runs operator-supplied scripts",
    );
    // The seed's form: PUT on the collection with module_id in the body.
    assert_eq!(
        api.req(
            "PUT",
            "/v1/rating/modules",
            Some(json!({"module_id": "hashmap", "enabled": true}))
        )
        .status,
        302
    );
    assert_eq!(api.ok("/v1/rating/modules/hashmap")["enabled"], true);
    let a = api.get("/v1/rating/reload_modules");
    assert_eq!((a.status, a.body), (204, Value::Null));
    fault(
        &api.get("/v1/rating/module_config/noop/anything"),
        409,
        "Module is not configurable",
    );
    assert_eq!(
        api.get("/v1/rating/module_config/pyscripts/scripts").status,
        409
    );
    fault(
        &api.get("/v1/rating/module_config/nope/x"),
        404,
        "Module not found.",
    );

    // Info (open).
    let anon = Api::with(&h, &[]);
    let metrics = anon.ok("/v1/info/metrics");
    let ids: Vec<&str> = metrics["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["metric_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![
            "instance",
            "cpu.hours",
            "network.in",
            "network.out",
            "disk.size"
        ]
    );
    for alias in ["/v1/info/metric", "/v1/info/services/", "/v1/info/service"] {
        assert_eq!(anon.ok(alias), metrics, "{alias}");
    }
    let inst = anon.ok("/v1/info/metrics/instance");
    assert_eq!(inst["unit"], "instance");
    assert!(
        inst["metadata"]
            .as_array()
            .unwrap()
            .contains(&json!("cpu_num"))
    );
    assert!(
        inst["metadata"]
            .as_array()
            .unwrap()
            .contains(&json!("mem_size"))
    );
    assert_eq!(anon.ok("/v1/info/service/cpu.hours")["unit"], "hour");
    fault(&anon.get("/v1/info/metrics/uptime"), 404, "uptime");
    let config = anon.ok("/v1/info/config");
    assert_eq!(config["metrics"]["uptime"]["alt_name"], "instance");
    assert_eq!(config["metrics"]["uptime"]["mutate"], "NUMBOOL");
    assert_eq!(config["metrics"]["net_out_bytes"]["factor"], "1/1000000000");

    // Collector mappings and states (deprecated key-value store).
    assert_eq!(api.ok("/v1/collector/mappings/"), json!({"mappings": []}));
    let a = api.post(
        "/v1/collector/mappings/",
        json!({"collector": "vmmon", "service": "instance"}),
    );
    assert_eq!(
        (a.status, &a.body),
        (200, &json!({"service": "instance", "collector": "vmmon"}))
    );
    let a = api.req("POST", "/v1/collector/mappings/gnocchi/instance", None);
    assert_eq!(
        (a.status, &a.body),
        (200, &json!({"service": "instance", "collector": "gnocchi"})),
        "upsert"
    );
    api.post(
        "/v1/collector/mappings",
        json!({"collector": "vmmon", "service": "disk.size"}),
    );
    assert_eq!(
        api.ok("/v1/collector/mappings?collector=vmmon"),
        json!({"mappings": [{"service": "disk.size", "collector": "vmmon"}]})
    );
    assert_eq!(
        api.ok("/v1/collector/mappings/instance"),
        json!({"service": "instance", "collector": "gnocchi"})
    );
    fault(
        &api.get("/v1/collector/mappings/nope"),
        404,
        "No mapping for service: nope",
    );
    let a = api.req(
        "DELETE",
        "/v1/collector/mappings/",
        Some(json!({"service": "instance"})),
    );
    assert_eq!((a.status, a.body), (204, Value::Null));
    fault(
        &api.req("DELETE", "/v1/collector/mappings/instance", None),
        404,
        "No mapping for service: instance",
    );
    assert_eq!(
        api.ok("/v1/collector/fake1/states"),
        json!({"name": "fake1", "enabled": false})
    );
    let a = api.req(
        "PUT",
        "/v1/collector/states",
        Some(json!({"name": "fake1", "enabled": true})),
    );
    assert_eq!(
        (a.status, a.body),
        (200, json!({"name": "fake1", "enabled": true}))
    );
    assert_eq!(
        api.ok("/v1/collector/states?name=fake1"),
        json!({"name": "fake1", "enabled": true})
    );
    assert_eq!(api.ok("/v1/collector/states/fake1")["enabled"], true);
    fault(
        &api.req(
            "PUT",
            "/v1/collector/states/fake1",
            Some(json!({"name": "fake1"})),
        ),
        400,
        "Invalid input for field/attribute enabled. Value: 'None'. Mandatory field missing.",
    );

    // Quote (open): global rules only, nested and flat descriptions.
    let svc = api.create(&format!("{HM}/services"), json!({"name": "instance"}));
    let f = api.create(
        &format!("{HM}/fields"),
        json!({"service_id": svc["service_id"], "name": "flavor_name"}),
    );
    for (v, cost) in [("1c2g", "0.02"), ("2c4g", "0.05"), ("4c8g", "0.12")] {
        api.create(
            &format!("{HM}/mappings"),
            json!({"field_id": f["field_id"], "value": v, "cost": cost}),
        );
    }
    api.create(
        &format!("{HM}/mappings"),
        json!({"field_id": f["field_id"], "value": "1c2g", "cost": "5", "tenant_id": "proj-b"}),
    );
    let out = api.create(&format!("{HM}/services"), json!({"name": "network.out"}));
    api.create(
        &format!("{HM}/mappings"),
        json!({"service_id": out["service_id"], "cost": "0.08"}),
    );
    api.create(
        &format!("{HM}/thresholds"),
        json!({"service_id": out["service_id"], "level": 1, "cost": "0.5", "type": "rate"}),
    );
    // A quote needs a session like the rest of /v1 (upstream requires a token too).
    assert_eq!(
        anon.post("/v1/rating/quote/", json!({"resources": []}))
            .status,
        401
    );
    let quote = |body: Value| {
        let a = api.post("/v1/rating/quote/", body.clone());
        assert_eq!(a.status, 200, "{body}: {}", a.body);
        a.body
    };
    assert_eq!(
        quote(
            json!({"resources": [{"service": "instance", "volume": "1", "desc": {"metadata": {"flavor_name": "1c2g"}}}]})
        ),
        json!(0.02)
    );
    assert_eq!(
        quote(
            json!({"resources": [{"service": "instance", "volume": 2, "desc": {"flavor_name": "2c4g", "vcpus": 2, "image_id": "x"}}]})
        ),
        json!(0.1)
    );
    assert_eq!(
        quote(json!({"resources": [
            {"service": "instance", "volume": "1", "desc": {"groupby": {"flavor_name": "4c8g"}, "metadata": {"cpu_num": 4}}},
            {"service": "instance", "volume": "1", "desc": {"flavor_name": "1c2g"}},
            {"service": "network.out", "volume": "2"},
            {"service": "unrated", "volume": "100"}
        ]})),
        json!(0.22)
    );
    assert_eq!(
        quote(
            json!({"resources": [{"service": "instance", "volume": "1", "desc": {"flavor_name": "8c16g"}}]})
        ),
        json!(0.0)
    );
    for (body, status) in [
        (json!({"resources": [{"volume": "1"}]}), 400),
        (json!({"resources": [{"service": "instance"}]}), 400),
        (
            json!({"resources": [{"service": "instance", "volume": "x"}]}),
            400,
        ),
        (
            json!({"resources": [{"service": "instance", "volume": "1", "desc": {"tags": ["a"]}}]}),
            400,
        ),
        (
            json!({"resources": [{"service": "instance", "volume": "1", "colour": 1}]}),
            400,
        ),
        (json!({"other": []}), 400),
    ] {
        let a = api.post("/v1/rating/quote", body.clone());
        assert_eq!(a.status, status, "{body}: {}", a.body);
        assert_eq!(a.body["faultcode"], "Client");
    }
    let a = Api::with(
        &h,
        &[
            ("Content-Type", "application/json"),
            ("X-Auth-Token", ADMIN_SID),
        ],
    )
    .req("POST", "/v1/rating/quote", None);
    assert_eq!(a.status, 400);
    let raw = h.call(
        "POST",
        "/v1/rating/quote",
        &[("X-Auth-Token", ADMIN_SID)],
        "{not json",
    );
    assert_eq!(raw.status, 400);

    // Routing: unknown URLs get a plain 404, wrong methods a 405; /v1 describes itself.
    let a = api.get("/v1/nope");
    assert_eq!(a.status, 404);
    assert!(
        a.content_type.starts_with("text/plain"),
        "{}",
        a.content_type
    );
    assert_eq!(api.get("/v1/rating/nope").status, 404);
    assert_eq!(api.get(&format!("{HM}/nope")).status, 404);
    assert_eq!(api.req("DELETE", "/v1/rating/quote", None).status, 405);
    assert_eq!(
        api.req("POST", "/v1/report/total", Some(json!({}))).status,
        405
    );
    assert_eq!(api.ok("/v1")["id"], "v1");
    // Bad parameters are 400 with a fault body.
    fault(
        &api.get("/v1/report/total?begin=yesterday"),
        400,
        "Invalid input for field/attribute begin. Value: 'yesterday'. Value should be an ISO-8601 date or datetime.",
    );
    assert_eq!(api.get("/v1/report/total?all_tenants=maybe").status, 400);
}

fn put(api: &Api<'_>, path: &str, body: Value) -> Answer {
    api.req("PUT", path, Some(body))
}

/// `/v2` in process: versions, HEAD, faults, request ids, CORS, and every v2 resource's statuses,
/// bodies and errors; pushed dataframes are summarised exactly.
#[test]
fn v2_api_shapes_statuses_and_errors() {
    let mut config = CollectorConfig::default();
    config.rating.cors_allowed_origins = vec!["https://horizon.example".into()];
    let h = Harness::with(config);
    let admin = Api::token(&h, ADMIN_SID);
    let anon = Api::with(&h, &[("Host", "ck.example:8889")]);
    let tenant = Api::token(&h, TENANT_A_SID);

    // Versions: GET / lists both, /v1 and /v2 their own; HEAD answers with no body.
    let root = anon.ok("/");
    assert_eq!(root["versions"][1]["id"], "v2");
    assert_eq!(
        root["versions"][0]["links"][0]["href"],
        "http://ck.example:8889/v1"
    );
    assert_eq!(
        anon.ok("/v2"),
        json!({"id": "v2", "links": [{"href": "http://ck.example:8889/v2", "rel": "self"}],
               "status": "EXPERIMENTAL"})
    );
    assert_eq!(anon.ok("/v1")["status"], "CURRENT");
    for path in ["/v1", "/v2", "/v1/info/metrics"] {
        let a = anon.req("HEAD", path, None);
        assert_eq!((a.status, &a.body), (200, &Value::Null), "HEAD {path}");
    }
    // Every answer carries an OpenStack request id; unknown routes answer in v2's fault format.
    let a = anon.get("/v2/nope");
    assert_eq!(a.status, 404);
    assert!(a.body["message"].as_str().unwrap().contains("not found"));
    assert!(a.request_id.unwrap().starts_with("req-"));
    assert_eq!(anon.req("DELETE", "/v2/summary", None).status, 405);
    // CORS: an allowed origin gets its headers (also on a preflight), another none.
    let cors = Api::with(&h, &[("Origin", "https://horizon.example")]);
    assert_eq!(
        cors.get("/v2").cors.as_deref(),
        Some("https://horizon.example")
    );
    let pre = Api::with(
        &h,
        &[
            ("Origin", "https://horizon.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
    )
    .req("OPTIONS", "/v2/summary", None);
    assert_eq!(
        (pre.status, pre.cors.as_deref()),
        (200, Some("https://horizon.example"))
    );
    let other = Api::with(&h, &[("Origin", "https://evil.example")]);
    assert_eq!(other.get("/v2").cors, None);

    // Policies: anonymous 401, a tenant 403 on admin resources (v2's words).
    assert_eq!(anon.get("/v2/rating/modules").status, 401);
    let a = tenant.get("/v2/scope");
    assert_eq!(
        (a.status, &a.body),
        (
            403,
            &json!({"message": "You are not authorized to perform this action"})
        )
    );

    // Modules: v2 shape (hot_config), PUT 204, errors.
    assert_eq!(
        admin.ok("/v2/rating/modules/noop"),
        json!({"module_id": "noop", "description": "Dummy test module.", "enabled": true,
               "hot_config": false, "priority": 1})
    );
    let cases: Vec<(&str, Value, u16, Option<&str>)> = vec![
        (
            "/v2/rating/modules/hashmap",
            json!({"priority": 5}),
            204,
            None,
        ),
        (
            "/v2/rating/modules/hashmap",
            json!({"enabled": false}),
            204,
            None,
        ),
        (
            "/v2/rating/modules/hashmap",
            json!({"enabled": true}),
            204,
            None,
        ),
        (
            "/v2/rating/modules/nope",
            json!({"enabled": true}),
            404,
            Some("Module 'nope' not found"),
        ),
        (
            "/v2/rating/modules/hashmap",
            json!({"priority": 0}),
            400,
            None,
        ),
        (
            "/v2/rating/modules/hashmap",
            json!({"colour": 1}),
            400,
            None,
        ),
        (
            "/v2/rating/modules/pyscripts",
            json!({"enabled": true}),
            400,
            None,
        ),
    ];
    for (path, body, status, msg) in cases {
        let a = put(&admin, path, body.clone());
        assert_eq!(a.status, status, "PUT {path} {body}: {}", a.body);
        if let Some(m) = msg {
            assert_eq!(a.body["message"], m);
        }
    }
    let m = admin.ok("/v2/rating/modules");
    assert_eq!(m["modules"][0]["priority"], 5);
    assert_eq!(m["modules"][0]["enabled"], true);

    // Dataframes: empty window 404; pushes are checked whole (nothing stored on a bad one).
    let w = "begin=2019-07-23T00:00:00&end=2019-07-24T00:00:00";
    let a = admin.get(&format!("/v2/dataframes?{w}"));
    assert_eq!(
        (a.status, &a.body),
        (
            404,
            &json!({"message": "No resource found for provided filters."})
        )
    );
    let point = |project: &str, qty: Value, price: Value| {
        json!({"vol": {"unit": "GiB", "qty": qty}, "rating": {"price": price},
               "groupby": {"project_id": project, "id": "v1"}, "metadata": {"flavor": "m1"}})
    };
    let frame = json!({"period": {"begin": "20190723T120000Z", "end": "20190723T130000Z"},
        "usage": {"volume": [point("pa", json!(1.2), json!("0.04")),
                             point("pb", json!("2"), json!(0.1))],
                  "image": [point("pa", json!(3), json!("0.0000001"))]}});
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"dataframes": []}),
            "Parameter dataframes must not be empty.",
        ),
        (
            json!({"dataframes": [frame.clone(), {"period": {"begin": "20190723T120000Z",
            "end": "20190723T130000Z"}}]}),
            "usage",
        ),
        (
            json!({"dataframes": [{"period": {"begin": "20190723TZ", "end": "20190723TZ"},
            "usage": {}}]}),
            "period.begin",
        ),
        (
            json!({"dataframes": [{"period": {"begin": "20190723T120000Z",
            "end": "20190723T130000Z"}, "usage": {"x": [{"vol": {"unit": "u", "qty": 1}}]}}]}),
            "rating.price",
        ),
    ];
    for (body, msg) in bad {
        let a = admin.post("/v2/dataframes", body.clone());
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert!(
            a.body["message"].as_str().unwrap().contains(msg),
            "{}",
            a.body
        );
    }
    assert_eq!(admin.get(&format!("/v2/dataframes?{w}")).status, 404);
    assert_eq!(
        tenant
            .post("/v2/dataframes", json!({"dataframes": [frame.clone()]}))
            .status,
        403
    );
    let a = admin.post("/v2/dataframes", json!({"dataframes": [frame]}));
    assert_eq!(a.status, 204, "{}", a.body);

    let df = admin.ok(&format!("/v2/dataframes?{w}"));
    assert_eq!(df["total"], 3);
    assert_eq!(
        df["dataframes"][0]["period"],
        json!({"begin": "2019-07-23T12:00:00+00:00", "end": "2019-07-23T13:00:00+00:00"})
    );
    assert_eq!(
        df["dataframes"][0]["usage"]["volume"][0],
        json!({"vol": {"unit": "GiB", "qty": 1.2}, "rating": {"price": 0.04},
               "groupby": {"project_id": "pa"}, "metadata": {"flavor": "m1", "id": "v1"}})
    );
    // A tenant sees only its project; filters and paging.
    assert_eq!(tenant.ok(&format!("/v2/dataframes?{w}"))["total"], 2);
    assert_eq!(
        admin.ok(&format!("/v2/dataframes?{w}&filters=type:image"))["total"],
        1
    );
    let page = admin.ok(&format!("/v2/dataframes?{w}&offset=1&limit=1"));
    assert_eq!(page["total"], 3);
    // Points by period, project, type: pa/image, pa/volume, pb/volume.
    assert_eq!(
        page["dataframes"][0]["usage"],
        json!({"volume": [{"vol": {"unit": "GiB", "qty": 1.2}, "rating": {"price": 0.04},
               "groupby": {"project_id": "pa"}, "metadata": {"flavor": "m1", "id": "v1"}}]})
    );

    // Summary: exact sums, groupings, formats, paging, tenant scoping, errors.
    let s = admin.ok(&format!("/v2/summary?{w}"));
    assert_eq!(
        s,
        json!({"total": 1, "columns": ["begin", "end", "qty", "rate"],
               "results": [["2019-07-23T00:00:00+00:00", "2019-07-24T00:00:00+00:00", 6.2,
                            0.1400001]], "format": "table"})
    );
    let s = admin.ok(&format!(
        "/v2/summary?{w}&groupby=type,project_id&response_format=object"
    ));
    assert_eq!(s["total"], 3);
    assert_eq!(
        s["results"][0],
        json!({"begin": "2019-07-23T00:00:00+00:00", "end": "2019-07-24T00:00:00+00:00",
               "qty": 3, "rate": 0.0000001, "type": "image", "project_id": "pa"})
    );
    let s = admin.ok(&format!("/v2/summary?{w}&groupby=time&groupby=flavor"));
    assert_eq!(
        s["columns"],
        json!(["begin", "end", "qty", "rate", "flavor"])
    );
    assert_eq!(s["results"][0][0], "2019-07-23T12:00:00+00:00");
    let s = admin.ok(&format!("/v2/summary?{w}&groupby=time-d&groupby=time-y"));
    assert_eq!(
        s["results"][0].as_array().unwrap()[4..],
        [json!("204"), json!("2019")]
    );
    let s = admin.ok(&format!(
        "/v2/summary?{w}&groupby=project_id&limit=1&offset=1"
    ));
    assert_eq!(
        (s["total"].clone(), s["results"][0][4].clone()),
        (json!(2), json!("pb"))
    );
    let s = tenant.ok(&format!("/v2/summary?{w}&filters=project_id:pb"));
    assert_eq!(
        s["results"][0][3], 0.0400001,
        "a tenant's filter is forced to its project"
    );
    assert_eq!(
        admin.ok("/v2/summary?begin=2017-01-01&end=2017-01-02"),
        json!({"total": 0, "columns": [], "results": [], "format": "table"})
    );
    for bad in [
        "/v2/summary?response_format=csv",
        "/v2/summary?groupby=time-x",
        "/v2/summary?limit=0",
        "/v2/summary?offset=-1",
        "/v2/summary?begin=yesterday",
        "/v2/summary?filters=novalue",
    ] {
        let a = admin.get(bad);
        assert_eq!(a.status, 400, "{bad}: {}", a.body);
        assert!(a.body["message"].is_string(), "{bad}");
    }

    // Scopes: projects with ratings or instances; errors of reset and patch.
    let sc = admin.ok("/v2/scope");
    let ids: Vec<&str> = sc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scope_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["pa", "pb"]);
    assert_eq!(sc["results"][0]["scope_key"], "project_id");
    assert_eq!(admin.get("/v2/scope?scope_id=nope").status, 404);
    assert_eq!(
        admin.ok("/v2/scope?limit=1&offset=1")["results"][0]["scope_id"],
        "pb"
    );
    let scope_cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "PUT",
            json!({"scope_key": "project_id", "last_processed_timestamp": "2019-07-16"}),
            400,
            "Either all_scopes or a scope_id should be specified.",
        ),
        (
            "PUT",
            json!({"scope_id": "pa"}),
            400,
            "Variable 'last_processed_timestamp' cannot be empty/None.",
        ),
        (
            "PUT",
            json!({"scope_id": "nope", "state": "2019-07-16"}),
            404,
            "No resource found for provided filters.",
        ),
        (
            "PUT",
            json!({"scope_id": "pa", "all_scopes": true, "state": "2019-07-16"}),
            400,
            "exclusion",
        ),
        (
            "PUT",
            json!({"all_scopes": true, "state": "2999-01-01"}),
            400,
            "forward",
        ),
        ("PATCH", json!({"active": false}), 400, "scope_id"),
        (
            "PATCH",
            json!({"scope_id": "nope", "active": false}),
            404,
            "No resource found",
        ),
    ];
    for (method, body, status, msg) in scope_cases {
        let a = admin.req(method, "/v2/scope", Some(body.clone()));
        assert_eq!(a.status, status, "{method} {body}: {}", a.body);
        assert!(
            a.body["message"].as_str().unwrap().contains(msg),
            "{}",
            a.body
        );
    }
    let a = admin.req(
        "PATCH",
        "/v2/scope",
        Some(json!({"scope_id": "pb", "active": false})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        (a.body["active"].clone(), a.body["scope_id"].clone()),
        (json!(false), json!("pb"))
    );
    assert!(a.body["scope_activation_toggle_date"].is_string());
    assert_eq!(
        admin.ok("/v2/scope?active=0")["results"][0]["scope_id"],
        "pb"
    );

    // Reprocesses: validation in upstream's words; empty list.
    assert_eq!(admin.ok("/v2/task/reprocesses"), json!({"results": []}));
    let re = |scopes: Value, start: &str, end: &str, reason: &str| {
        json!({"scope_ids": scopes, "start_reprocess_time": start, "end_reprocess_time": end,
               "reason": reason})
    };
    let re_cases: Vec<(Value, &str)> = vec![
        (
            re(
                json!(["ALL", "pa"]),
                "2019-07-23T12:00:00",
                "2019-07-23T13:00:00",
                "r",
            ),
            "Cannot use 'ALL'",
        ),
        (
            re(
                json!("pa"),
                "2019-07-23T12:00:00",
                "2019-07-23T13:00:00",
                "  ",
            ),
            "Empty or blank reason",
        ),
        (
            re(
                json!("pa"),
                "2019-07-23T13:00:00",
                "2019-07-23T12:00:00",
                "r",
            ),
            "cannot be less than",
        ),
        (
            re(
                json!("pa"),
                "2019-07-23T12:30:00",
                "2019-07-23T12:45:00",
                "r",
            ),
            "A valid time window near the provided one is ['2019-07-23 12:00:00+00:00', \
          '2019-07-23 13:00:00+00:00']",
        ),
        (
            re(
                json!("nope"),
                "2019-07-23T12:00:00",
                "2019-07-23T13:00:00",
                "r",
            ),
            "do not exist",
        ),
        (
            re(
                json!("pa"),
                "2999-01-01T00:00:00",
                "2999-01-01T01:00:00",
                "r",
            ),
            "starting after the last possible timestamp",
        ),
        (json!({"scope_ids": "pa"}), "required key not provided"),
    ];
    for (body, msg) in re_cases {
        let a = admin.post("/v2/task/reprocesses", body.clone());
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert!(
            a.body["message"].as_str().unwrap().contains(msg),
            "{body}: {}",
            a.body
        );
    }
    assert_eq!(admin.get("/v2/task/reprocesses?order=sideways").status, 400);
}

/// Hashmap validity periods (upstream 2025.2): a rule charges only inside its period; a price is
/// replaced at a date by ending the old rule and starting the new one (no 409); a future start
/// does not charge now; started rules may only get an end.
#[test]
fn hashmap_rules_charge_only_inside_their_validity_period() {
    use crate::rating::hashmap::HashmapRules;
    use crate::rating::period::iso;
    let h = Harness::new();
    let api = Api::token(&h, ADMIN_SID);
    let svc = api.create(&format!("{HM}/services"), json!({"name": "instance"}));
    let now = crate::store::now_ms();
    let day = 86_400_000;
    let (past, soon, later) = (iso(now - 10 * day), iso(now + day), iso(now + 10 * day));
    // A past start needs force.
    let a = api.post(
        &format!("{HM}/mappings"),
        json!({"service_id": svc["service_id"], "cost": "1", "start": past}),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body["faultstring"]
            .as_str()
            .unwrap()
            .starts_with("Cannot create a rule with start in the past.")
    );
    let old = api.create(
        &format!("{HM}/mappings?force=true"),
        json!({"service_id": svc["service_id"], "cost": "1", "start": past, "name": "old"}),
    );
    assert_eq!(
        (old["start"].clone(), old["name"].clone()),
        (json!(past), json!("old"))
    );
    // The replacement overlaps the old open-ended rule: 409 until the old one ends.
    let next = json!({"service_id": svc["service_id"], "cost": "2", "start": soon});
    assert_eq!(
        api.post(&format!("{HM}/mappings"), next.clone()).status,
        409
    );
    let loc = format!("{HM}/mappings/{}", old["mapping_id"].as_str().unwrap());
    // Started: only end may change.
    let a = put(&api, &loc, json!({"cost": "5"}));
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body["faultstring"]
            .as_str()
            .unwrap()
            .contains("only the attribute [end]")
    );
    assert_eq!(put(&api, &loc, json!({"end": soon})).status, 302);
    assert_eq!(api.ok(&loc)["end"], json!(soon));
    let new = api.create(&format!("{HM}/mappings"), next);
    // Once ended, a started rule is frozen; end before start is refused.
    assert_eq!(put(&api, &loc, json!({"end": later})).status, 400);
    let a = api.post(
        &format!("{HM}/thresholds"),
        json!({"service_id": svc["service_id"], "level": "1", "cost": "1", "start": later,
               "end": soon}),
    );
    assert_eq!(a.status, 400);
    assert!(
        a.body["faultstring"]
            .as_str()
            .unwrap()
            .contains("start after end")
    );
    // Rules without dates still show no validity attributes (the v1 wire is unchanged).
    let plain = api.create(
        &format!("{HM}/thresholds"),
        json!({"service_id": svc["service_id"], "level": "3", "cost": "1"}),
    );
    assert!(
        plain.get("start").is_none() && plain.get("name").is_none(),
        "{plain}"
    );

    // Pricing: the old cost now, the new one from its start, never both.
    let rules: HashmapRules =
        h.rt.block_on(h.w.app.store.read(crate::store::rating::hashmap_rules))
            .unwrap();
    let point = crate::rating::DataPoint {
        unit: "instance".into(),
        qty: rust_decimal::Decimal::ONE,
        price: rust_decimal::Decimal::ZERO,
        groupby: serde_json::Map::new(),
        metadata: serde_json::Map::new(),
    };
    let price = |at: i64| {
        crate::rating::decimal::to_text(
            rules
                .at(at)
                .compile(None)
                .price("instance", &point)
                .unwrap(),
        )
    };
    assert_eq!(price(now), "1");
    assert_eq!(price(now + 2 * day), "2");
    assert_eq!(price(now - 20 * day), "0", "before the old rule's start");
    assert_eq!(new["start"], json!(soon));
    // The quote uses the rules in force now.
    let q = api.post(
        "/v1/rating/quote",
        json!({"resources": [{"service": "instance", "volume": "1", "desc": {}}]}),
    );
    assert_eq!(q.body, json!(1.0));
}
