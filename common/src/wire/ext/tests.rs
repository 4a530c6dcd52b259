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
    // The streaming form writes the same JSON.
    let streamed = serde_json::to_value(BatchWithExt {
        batch: &batch(),
        exts: &[ext],
    })
    .unwrap();
    assert_eq!(streamed, v);
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
    assert_eq!(streamed, before);
}
