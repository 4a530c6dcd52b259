//! The CloudKitty-compatible rating API (`/v1`) in process: every hashmap config endpoint and
//! the modules, info, collector, quote and routing endpoints, with their statuses and bodies.
//! (Rating real samples with the CLI and the processing loop stays end to end, in
//! `tests/tests/it/rating.rs`.) The cases read as the end-to-end ones did: a blocking [`Api`]
//! over the in-process router.

use axum::http::Method;
use serde_json::{Value, json};

use super::{ADMIN_SID, World};
use crate::CollectorConfig;

const HM: &str = "/v1/rating/module_config/hashmap";

/// A world on its own runtime, so that the cases stay plain sequential code.
struct Harness {
    rt: tokio::runtime::Runtime,
    w: World,
}

impl Harness {
    fn new() -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let w = rt.block_on(World::bare(CollectorConfig::default()));
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
