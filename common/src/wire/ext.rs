//! Figures newer than the wire structs: sent in the same JSON objects they extend.
//!
//! [`VmSample`](super::VmSample), [`ProcessSample`](super::ProcessSample) and
//! [`Inventory`](super::Inventory) are built field by field in the collector, so a new Rust
//! field there would break it until it is taught the figure. These figures therefore travel as
//! extra keys of the same JSON objects: a collector that does not know a key ignores it (no
//! struct here denies unknown fields), one that does reads it as an ordinary
//! `#[serde(default)]` field. When the collector adopts a figure, move it into its struct with
//! the same name and `#[serde(default)]`: the JSON does not change.
//!
//! | object | key | type | meaning |
//! |---|---|---|---|
//! | `samples[i].vm` | `cpu_steal_pct` | number or absent | [`VmSampleExt::cpu_steal_pct`] |
//! | `samples[i].vm` | `unreadable_procs` | integer or absent | [`VmSampleExt::unreadable_procs`] |
//! | `samples[i].processes[j]` | `unreadable` | list of field names | [`ProcessSampleExt::unreadable`] (the 11th element of a record in the array form) |
//! | `inventory` (register) | `net_interfaces_counted` | list of names | [`InventoryExt::net_interfaces_counted`] |
//!
//! A figure named in `unreadable` is **null**: the agent could not read it (e.g. `/proc/PID/io`
//! refused with `EACCES` to an agent without `CAP_SYS_PTRACE`); the number beside it is a
//! placeholder 0 kept only so that collectors which predate the key still parse the record.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// Key of [`VmSampleExt::cpu_steal_pct`].
pub const KEY_CPU_STEAL_PCT: &str = "cpu_steal_pct";
/// Key of [`VmSampleExt::unreadable_procs`].
pub const KEY_UNREADABLE_PROCS: &str = "unreadable_procs";
/// Key of [`ProcessSampleExt::unreadable`].
pub const KEY_UNREADABLE: &str = "unreadable";
/// Key of [`InventoryExt::net_interfaces_counted`].
pub const KEY_NET_INTERFACES_COUNTED: &str = "net_interfaces_counted";

/// Names used in [`ProcessSampleExt::unreadable`] for the disk figures.
pub const DISK_FIELDS: [&str; 2] = ["disk_read_kib_per_sec", "disk_write_kib_per_sec"];
/// Names used in [`ProcessSampleExt::unreadable`] for the network figures (no working
/// `sock_diag`, or a kernel whose `tcp_info` has no byte counters).
pub const NET_FIELDS: [&str; 2] = ["net_in_kib_per_sec", "net_out_kib_per_sec"];

/// Whole-VM figures beside [`VmSample`](super::VmSample).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct VmSampleExt {
    /// Share of all CPUs the hypervisor withheld since the previous sample (`steal` of the
    /// aggregate `cpu` line of `/proc/stat`, kernel `fs/proc/stat.c`), 0–100 % of the VM.
    /// `VmSample::cpu_pct` excludes it. `None` on the first sample and on kernels that print
    /// no steal column (before 2.6.11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_steal_pct: Option<f64>,
    /// Processes of this sample with at least one figure the agent could not read (listed in
    /// their [`ProcessSampleExt::unreadable`]); `None` while process sampling is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable_procs: Option<u32>,
}

/// Per-process figures beside [`ProcessSample`](super::ProcessSample).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProcessSampleExt {
    /// Names of the record's figures that are null (could not be read), e.g. [`DISK_FIELDS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// Extra figures of one [`Sample`](super::Sample): the VM's, and those of the processes that
/// have any, by index into `Sample::processes`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SampleExt {
    /// Beside `vm`.
    pub vm: VmSampleExt,
    /// `(index into processes, extension)`, only for records that carry one.
    pub processes: Vec<(usize, ProcessSampleExt)>,
}

/// Inventory figures beside [`Inventory`](super::Inventory).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InventoryExt {
    /// The interfaces whose traffic the VM's network figures count (`net_in`/`net_out`,
    /// `rx_bytes`/`tx_bytes`), sorted.
    #[serde(default)]
    pub net_interfaces_counted: Vec<String>,
}

/// A [`ReportBatch`](super::ReportBatch) serialized with its samples' extension keys, without
/// building a JSON tree (the batch of a 1,000-process tick is ~62 KB of JSON, and a tree of it
/// several MB): the agent's spool form. The same batch as [`merge_samples`] on the serialized
/// batch, with the process records in their array form (see
/// [`ProcessSample`](super::ProcessSample); a record's `unreadable` is its 11th element).
pub struct BatchWithExt<'a> {
    /// The batch.
    pub batch: &'a super::ReportBatch,
    /// One per sample (missing ones add nothing).
    pub exts: &'a [SampleExt],
}

impl Serialize for BatchWithExt<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let b = self.batch;
        let samples: Vec<SampleOut<'_>> = b
            .samples
            .iter()
            .enumerate()
            .map(|(i, sample)| SampleOut {
                sample,
                ext: self.exts.get(i),
            })
            .collect();
        let mut st = s.serialize_struct("ReportBatch", 7)?;
        st.serialize_field("batch_id", &b.batch_id)?;
        st.serialize_field("instance_id", &b.instance_id)?;
        st.serialize_field("seq", &b.seq)?;
        st.serialize_field("samples", &samples)?;
        st.serialize_field("dropped_samples_total", &b.dropped_samples_total)?;
        if !b.cdn.is_empty() {
            st.serialize_field("cdn", &b.cdn)?;
        }
        if b.cdn_tail.is_some() {
            st.serialize_field("cdn_tail", &b.cdn_tail)?;
        }
        st.end()
    }
}

struct SampleOut<'a> {
    sample: &'a super::Sample,
    ext: Option<&'a SampleExt>,
}

#[derive(Serialize)]
struct Flat<'a, T: Serialize, E: Serialize> {
    #[serde(flatten)]
    base: &'a T,
    #[serde(flatten)]
    ext: E,
}

impl Serialize for SampleOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let vm = Flat {
            base: &self.sample.vm,
            ext: self.ext.map(|e| e.vm).unwrap_or_default(),
        };
        let procs = self.sample.processes.as_ref().map(|ps| {
            let ext = self.ext.map_or(&[][..], |e| e.processes.as_slice());
            ProcsOut { ps, ext }
        });
        let mut st = s.serialize_struct("Sample", 2)?;
        st.serialize_field("vm", &vm)?;
        st.serialize_field("processes", &procs)?;
        st.end()
    }
}

struct ProcsOut<'a> {
    ps: &'a [super::ProcessSample],
    /// Sorted by index.
    ext: &'a [(usize, ProcessSampleExt)],
}

impl Serialize for ProcsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.ps.len()))?;
        let mut ext = self.ext.iter().peekable();
        for (i, p) in self.ps.iter().enumerate() {
            while ext.next_if(|(j, _)| *j < i).is_some() {}
            // The extension's list when it has one, else the record's own.
            let unreadable = ext
                .next_if(|(j, _)| *j == i)
                .map(|(_, e)| e.unreadable.as_slice())
                .filter(|u| !u.is_empty())
                .unwrap_or(&p.unreadable);
            seq.serialize_element(&ProcessRow { p, unreadable })?;
        }
        seq.end()
    }
}

/// A process record in its array form (see [`ProcessSample`](super::ProcessSample)): the same
/// fields in declaration order ([`PROCESS_FIELDS`](super::PROCESS_FIELDS)), `unreadable` (the
/// last) only when not empty.
struct ProcessRow<'a> {
    p: &'a super::ProcessSample,
    unreadable: &'a [String],
}

impl Serialize for ProcessRow<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        // Every field named, so a field added to the struct does not compile until written here.
        let super::ProcessSample {
            pid,
            start_time,
            cmd,
            cpu_pct,
            mem_pct,
            disk_read_kib_per_sec,
            disk_write_kib_per_sec,
            net_in_kib_per_sec,
            net_out_kib_per_sec,
            shutdown_time,
            unreadable: _,
        } = self.p;
        let mut t = s.serialize_tuple(10 + usize::from(!self.unreadable.is_empty()))?;
        t.serialize_element(pid)?;
        t.serialize_element(start_time)?;
        t.serialize_element(cmd)?;
        t.serialize_element(cpu_pct)?;
        t.serialize_element(mem_pct)?;
        t.serialize_element(disk_read_kib_per_sec)?;
        t.serialize_element(disk_write_kib_per_sec)?;
        t.serialize_element(net_in_kib_per_sec)?;
        t.serialize_element(net_out_kib_per_sec)?;
        t.serialize_element(shutdown_time)?;
        if !self.unreadable.is_empty() {
            t.serialize_element(self.unreadable)?;
        }
        t.end()
    }
}

/// A batch's JSON (a [`ReportBatch`](super::ReportBatch)'s, as the spool writes it) that
/// serialises with every process record of the array form written as an object
/// ([`PROCESS_FIELDS`](super::PROCESS_FIELDS) as keys), for a collector that does not read
/// arrays. Streamed: each level is read as borrowed raw values and written out once. Only the
/// records change: every other key and value keeps its text (numbers are not re-read).
///
/// Serialising fails (a custom error) when the batch is not a JSON object, `samples` is not a
/// list of objects, a key repeats in the batch or a sample (the collector would refuse that
/// batch; its keys are not merged here), or a record array is longer than the fields.
pub struct WithProcessObjects<'a>(pub &'a RawValue);

/// [`WithProcessObjects`] written out.
///
/// Errors: as [`WithProcessObjects`].
pub fn batch_with_process_objects(batch: &RawValue) -> serde_json::Result<Box<RawValue>> {
    serde_json::value::to_raw_value(&WithProcessObjects(batch))
}

impl Serialize for WithProcessObjects<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write_object(s, self.0, "samples", |samples| List(samples, RawSample))
    }
}

/// One sample: its `processes` (a list, or null) rewritten record by record.
struct RawSample<'a>(&'a RawValue);

impl Serialize for RawSample<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        write_object(s, self.0, "processes", |records| List(records, RecordOut))
    }
}

/// A JSON list (`.0`), each element written through `.1`; null is written as it is.
struct List<'a, F>(&'a RawValue, F);

impl<'a, F, T> Serialize for List<'a, F>
where
    F: Fn(&'a RawValue) -> T,
    T: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let Some(list): Option<Vec<&'a RawValue>> =
            serde_json::from_str(self.0.get()).map_err(S::Error::custom)?
        else {
            return self.0.serialize(s);
        };
        let mut seq = s.serialize_seq(Some(list.len()))?;
        for item in list {
            seq.serialize_element(&(self.1)(item))?;
        }
        seq.end()
    }
}

/// One process record: an array becomes an object, anything else is written as it is.
struct RecordOut<'a>(&'a RawValue);

impl Serialize for RecordOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        if !self.0.get().starts_with('[') {
            return self.0.serialize(s);
        }
        let fields: Vec<&RawValue> =
            serde_json::from_str(self.0.get()).map_err(S::Error::custom)?;
        if fields.len() > super::PROCESS_FIELDS.len() {
            return Err(S::Error::custom("process record longer than its fields"));
        }
        let mut m = s.serialize_map(Some(fields.len()))?;
        for (k, v) in super::PROCESS_FIELDS.iter().zip(fields) {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Writes the JSON object `raw` with the value of `key` through `inner`, every other entry as
/// written. Errors: `raw` is not an object, or a key repeats.
fn write_object<'a, S, T>(
    s: S,
    raw: &'a RawValue,
    key: &str,
    inner: impl Fn(&'a RawValue) -> T,
) -> Result<S::Ok, S::Error>
where
    S: serde::Serializer,
    T: Serialize,
{
    use serde::ser::{Error, SerializeMap};
    let Entries(entries) = serde_json::from_str(raw.get()).map_err(S::Error::custom)?;
    let mut m = s.serialize_map(Some(entries.len()))?;
    for (k, v) in entries {
        if k == key {
            m.serialize_entry(&k, &inner(v))?;
        } else {
            m.serialize_entry(&k, v)?;
        }
    }
    m.end()
}

/// A JSON object's entries in order, values as written; a repeated key is an error.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Entries<'a>, M::Error> {
                use serde::de::Error;
                let mut out: Vec<(String, &'a RawValue)> = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(M::Error::custom(format_args!("duplicate key {k:?}")));
                    }
                    let v: &'de RawValue = map.next_value()?;
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// Merges the fields of `ext` (a struct serializing to an object) into the JSON object `target`.
/// Does nothing when either is not an object.
pub fn merge_object<T: Serialize>(target: &mut Value, ext: &T) {
    let (Some(obj), Ok(Value::Object(extra))) = (target.as_object_mut(), serde_json::to_value(ext))
    else {
        return;
    };
    for (k, v) in extra {
        obj.insert(k, v);
    }
}

/// Merges `exts[i]` into `samples[i]` of a serialized [`ReportBatch`](super::ReportBatch).
pub fn merge_samples(batch: &mut Value, exts: &[SampleExt]) {
    let Some(samples) = batch.get_mut("samples").and_then(Value::as_array_mut) else {
        return;
    };
    for (sample, ext) in samples.iter_mut().zip(exts) {
        if let Some(vm) = sample.get_mut("vm") {
            merge_object(vm, &ext.vm);
        }
        let Some(procs) = sample.get_mut("processes").and_then(Value::as_array_mut) else {
            continue;
        };
        for (i, p) in &ext.processes {
            if let Some(rec) = procs.get_mut(*i) {
                merge_object(rec, p);
            }
        }
    }
}

#[cfg(test)]
mod tests;
