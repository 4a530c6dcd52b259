use super::*;
use crate::wire::{ProcessSample, ReportBatch, Sample, VmSample};

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
        exts: &[],
    })
    .unwrap();
    assert_eq!(
        serde_json::from_value::<ReportBatch>(streamed).unwrap(),
        batch()
    );
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
