use super::*;
use crate::wire::{ProcessSample, ReportBatch, Sample, VmSample};
use serde_json::value::RawValue;

fn batch() -> ReportBatch {
    ReportBatch {
        batch_id: uuid::Uuid::nil(),
        instance_id: "i".into(),
        seq: 1,
        samples: vec![Sample {
            vm: VmSample::default(),
            processes: Some(vec![
                ProcessSample {
                    pid: 1,
                    start_time: 1.0,
                    cmd: "init".into(),
                    cpu_pct: 0.0,
                    mem_pct: 0.0,
                    disk_read_kib_per_sec: 0.0,
                    disk_write_kib_per_sec: 0.0,
                    net_in_kib_per_sec: 0.0,
                    net_out_kib_per_sec: 0.0,
                    shutdown_time: None,
                    unreadable: Vec::new(),
                };
                2
            ]),
        }],
        dropped_samples_total: 0,
        cdn: Vec::new(),
        cdn_tail: None,
    }
}

#[test]
fn extension_keys_land_in_their_objects_and_old_structs_still_parse() {
    let mut v = serde_json::to_value(batch()).unwrap();
    let ext = SampleExt {
        vm: VmSampleExt {
            cpu_steal_pct: Some(50.0),
            unreadable_procs: Some(1),
        },
        processes: vec![(
            1,
            ProcessSampleExt {
                unreadable: DISK_FIELDS.iter().map(|s| s.to_string()).collect(),
            },
        )],
    };
    merge_samples(&mut v, std::slice::from_ref(&ext));
    // The streaming form writes the same batch, its process records as arrays (the
    // extension as the 11th element).
    let streamed = serde_json::to_value(BatchWithExt {
        batch: &batch(),
        exts: &[ext],
    })
    .unwrap();
    assert_eq!(
        streamed["samples"][0]["processes"],
        serde_json::json!([
            [1, 1.0, "init", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, null],
            [
                1,
                1.0,
                "init",
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                null,
                DISK_FIELDS
            ]
        ])
    );
    assert_eq!(streamed["samples"][0]["vm"], v["samples"][0]["vm"]);
    assert_eq!(
        serde_json::from_value::<ReportBatch>(streamed).unwrap(),
        serde_json::from_value::<ReportBatch>(v.clone()).unwrap()
    );
    assert_eq!(v["samples"][0]["vm"][KEY_CPU_STEAL_PCT], 50.0);
    assert_eq!(v["samples"][0]["vm"][KEY_UNREADABLE_PROCS], 1);
    assert!(
        v["samples"][0]["processes"][0]
            .get(KEY_UNREADABLE)
            .is_none()
    );
    assert_eq!(
        v["samples"][0]["processes"][1][KEY_UNREADABLE],
        serde_json::json!(DISK_FIELDS)
    );
    // The wire structs read the keys into their fields (a collector that predates them would
    // read the same JSON and ignore the keys).
    let back: ReportBatch = serde_json::from_value(v.clone()).unwrap();
    let mut want = batch();
    want.samples[0].vm.cpu_steal_pct = Some(50.0);
    want.samples[0].vm.unreadable_procs = Some(1);
    if let Some(p) = want.samples[0].processes.as_mut() {
        p[1].unreadable = DISK_FIELDS.iter().map(|s| s.to_string()).collect();
    }
    assert_eq!(back, want);
    // One that knows them reads them.
    let vm: VmSampleExt = serde_json::from_value(v["samples"][0]["vm"].clone()).unwrap();
    assert_eq!(vm.cpu_steal_pct, Some(50.0));
    let p: ProcessSampleExt =
        serde_json::from_value(v["samples"][0]["processes"][1].clone()).unwrap();
    assert_eq!(p.unreadable.len(), 2);
}

#[test]
fn absent_figures_add_no_keys() {
    let mut v = serde_json::to_value(batch()).unwrap();
    let before = v.clone();
    merge_samples(&mut v, &[SampleExt::default()]);
    assert_eq!(v, before);
    let streamed = serde_json::to_value(BatchWithExt {
        batch: &batch(),
        exts: &[SampleExt::default()],
    })
    .unwrap();
    assert_eq!(streamed["samples"][0]["vm"], before["samples"][0]["vm"]);
    for row in streamed["samples"][0]["processes"].as_array().unwrap() {
        assert_eq!(row.as_array().map(Vec::len), Some(10), "{row}");
    }
    assert_eq!(
        serde_json::from_value::<ReportBatch>(streamed).unwrap(),
        batch()
    );
}

/// The object form's keys are `PROCESS_FIELDS`, in order: the array form's positions.
#[test]
fn process_fields_are_the_object_keys_in_order() {
    let mut p = batch().samples[0].processes.as_ref().unwrap()[0].clone();
    p.unreadable = vec!["x".into()];
    let v = serde_json::to_value(&p).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, crate::wire::PROCESS_FIELDS);
}

/// An extension's `unreadable` wins over the record's own; an empty one leaves the record's.
#[test]
fn the_extensions_unreadable_wins_over_the_records_own() {
    let mut b = batch();
    if let Some(ps) = b.samples[0].processes.as_mut() {
        ps[0].unreadable = vec!["net_in_kib_per_sec".into()];
        ps[1].unreadable = vec!["net_in_kib_per_sec".into()];
    }
    let ext = SampleExt {
        vm: VmSampleExt::default(),
        processes: vec![
            (0, ProcessSampleExt::default()),
            (
                1,
                ProcessSampleExt {
                    unreadable: DISK_FIELDS.iter().map(|s| s.to_string()).collect(),
                },
            ),
        ],
    };
    let v = serde_json::to_value(BatchWithExt {
        batch: &b,
        exts: &[ext],
    })
    .unwrap();
    let rows = &v["samples"][0]["processes"];
    assert_eq!(rows[0][10], serde_json::json!(["net_in_kib_per_sec"]));
    assert_eq!(rows[1][10], serde_json::json!(DISK_FIELDS));
}

/// Turning array records back into objects changes nothing else: unknown keys and number
/// texts stay as written, object records stay, a record longer than the fields is an error.
#[test]
fn array_records_become_objects_and_everything_else_keeps_its_text() {
    let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
    let text = raw(concat!(
        r#"{"batch_id":"00000000-0000-0000-0000-000000000000","instance_id":"i","seq":1,"#,
        r#""samples":[{"vm":{"sampled_at_ms":1,"cpu_pct":0.30000000000000004,"future_key":[1e400]},"#,
        r#""processes":[[1,1.5,"a",0.1,0.2,0.0,0.0,0.0,0.0,null],"#,
        r#"{"pid":2,"start_time":2.5,"cmd":"b","cpu_pct":0.0,"mem_pct":0.0,"#,
        r#""disk_read_kib_per_sec":0.0,"disk_write_kib_per_sec":0.0,"#,
        r#""net_in_kib_per_sec":0.0,"net_out_kib_per_sec":0.0,"shutdown_time":null,"x":1},"#,
        r#"[3,3.5,"c",0.1,0.2,0.0,0.0,0.0,0.0,7.25,["disk_read_kib_per_sec"]]]},"#,
        r#"{"vm":{"sampled_at_ms":2},"processes":null}],"#,
        r#""dropped_samples_total":0,"later_key":{"k":1}}"#
    ));
    let out = batch_with_process_objects(&text).unwrap();
    assert_eq!(
        out.get(),
        concat!(
            r#"{"batch_id":"00000000-0000-0000-0000-000000000000","instance_id":"i","seq":1,"#,
            r#""samples":[{"vm":{"sampled_at_ms":1,"cpu_pct":0.30000000000000004,"future_key":[1e400]},"#,
            r#""processes":[{"pid":1,"start_time":1.5,"cmd":"a","cpu_pct":0.1,"mem_pct":0.2,"#,
            r#""disk_read_kib_per_sec":0.0,"disk_write_kib_per_sec":0.0,"#,
            r#""net_in_kib_per_sec":0.0,"net_out_kib_per_sec":0.0,"shutdown_time":null},"#,
            r#"{"pid":2,"start_time":2.5,"cmd":"b","cpu_pct":0.0,"mem_pct":0.0,"#,
            r#""disk_read_kib_per_sec":0.0,"disk_write_kib_per_sec":0.0,"#,
            r#""net_in_kib_per_sec":0.0,"net_out_kib_per_sec":0.0,"shutdown_time":null,"x":1},"#,
            r#"{"pid":3,"start_time":3.5,"cmd":"c","cpu_pct":0.1,"mem_pct":0.2,"#,
            r#""disk_read_kib_per_sec":0.0,"disk_write_kib_per_sec":0.0,"#,
            r#""net_in_kib_per_sec":0.0,"net_out_kib_per_sec":0.0,"shutdown_time":7.25,"#,
            r#""unreadable":["disk_read_kib_per_sec"]}]},"#,
            r#"{"vm":{"sampled_at_ms":2},"processes":null}],"#,
            r#""dropped_samples_total":0,"later_key":{"k":1}}"#
        )
    );
    // The spool form of a whole batch converts to what the object form reads as.
    let b = batch();
    let spooled = serde_json::value::to_raw_value(&BatchWithExt {
        batch: &b,
        exts: &[],
    })
    .unwrap();
    let objects = batch_with_process_objects(&spooled).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(objects.get()).unwrap(),
        serde_json::to_value(&b).unwrap()
    );
    // What the collector would refuse is not turned into something it reads: a repeated key
    // (its derived `Deserialize` refuses duplicate fields) is an error here, not merged.
    for bad in [
        r#"{"samples":[{"processes":[[1,1.5,"a",0.1,0.2,0.0,0.0,0.0,0.0,null,[],1]]}]}"#,
        r#"{"samples":{}}"#,
        r#"[1]"#,
        r#"{"samples":[],"samples":[{"processes":null}]}"#,
        r#"{"samples":[{"processes":null,"processes":[[1,1.5,"a",0.1,0.2,0.0,0.0,0.0,0.0,null]]}]}"#,
        r#"{"samples":[{"processes":[[1,[2],"a"]],"vm":{}}],"seq":1,"seq":2}"#,
    ] {
        assert!(batch_with_process_objects(&raw(bad)).is_err(), "{bad}");
    }
}

/// The array form is the struct's fields in declaration order: every figure lands in its
/// field, an 11th element is `unreadable`, and what is not a record of this shape is refused
/// (a wrong length, a wrong type, a trailing element), as a wrong object is.
#[test]
fn array_records_read_into_the_same_fields_and_malformed_ones_are_refused() {
    let p: ProcessSample = serde_json::from_str(
        r#"[7, 1.5, "nginx", 1.25, 2.5, 3.0, 4.0, 5.0, 6.0, 99.0, ["net_in_kib_per_sec"]]"#,
    )
    .unwrap();
    assert_eq!(
        p,
        ProcessSample {
            pid: 7,
            start_time: 1.5,
            cmd: "nginx".into(),
            cpu_pct: 1.25,
            mem_pct: 2.5,
            disk_read_kib_per_sec: 3.0,
            disk_write_kib_per_sec: 4.0,
            net_in_kib_per_sec: 5.0,
            net_out_kib_per_sec: 6.0,
            shutdown_time: Some(99.0),
            unreadable: vec!["net_in_kib_per_sec".into()],
        }
    );
    // Written by the streaming form, read back: the same record.
    let mut b = batch();
    if let Some(ps) = b.samples[0].processes.as_mut() {
        ps[0] = p;
    }
    let text = serde_json::to_string(&BatchWithExt {
        batch: &b,
        exts: &[],
    })
    .unwrap();
    assert_eq!(serde_json::from_str::<ReportBatch>(&text).unwrap(), b);
    for bad in [
        r#"[7, 1.5, "nginx", 1.25, 2.5, 3.0, 4.0, 5.0, 6.0]"#,
        r#"[7, 1.5, "nginx", 1.25, 2.5, 3.0, 4.0, 5.0, 6.0, null, [], 1]"#,
        r#"["7", 1.5, "nginx", 1.25, 2.5, 3.0, 4.0, 5.0, 6.0, null]"#,
        r#"[-7, 1.5, "nginx", 1.25, 2.5, 3.0, 4.0, 5.0, 6.0, null]"#,
        r#"[7, 1.5, 3, 1.25, 2.5, 3.0, 4.0, 5.0, 6.0, null]"#,
        r#"[7, 1.5, "nginx", "1.25", 2.5, 3.0, 4.0, 5.0, 6.0, null]"#,
        r#"[7, 1.5, "nginx", 1.25, 2.5, 3.0, 4.0, 5.0, 6.0, null, "x"]"#,
        r#"[]"#,
    ] {
        assert!(
            serde_json::from_str::<ProcessSample>(bad).is_err(),
            "{bad} was read"
        );
    }
}
