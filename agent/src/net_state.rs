//! Persistence of the running network totals ([`crate::sampler::ifaces::NetState`]) in the
//! state directory: `net-totals.slots`, a [`crate::slots`] file rewritten in place (`pwrite` +
//! `fdatasync`) each tick the totals or baselines changed, before the batch that carries them.
//!
//! The sync makes "a restart never continues from totals below what was sent" hold across a
//! power loss too: the batch is fsynced after this record. A torn write leaves the previous
//! tick's record (checksummed slots), from which a restart in the same boot adds the traffic
//! since, so nothing is lost. An older agent's `net-totals.json` is read once, when there is no
//! slot file, and removed after the first write. A record that cannot be read (both slots
//! damaged) is logged and the totals start anew, as with no saved state (see
//! [`crate::sampler::ifaces`]).

use std::io;
use std::path::{Path, PathBuf};

use crate::sampler::ifaces::NetState;
use crate::slots::{SlotError, SlotFile};

/// The network totals' slot file in the state directory.
pub const NET_STATE_SLOTS: &str = "net-totals.slots";
/// The file of agents before the slot file; read once for the upgrade.
pub const NET_STATE_LEGACY: &str = "net-totals.json";

/// The network totals' file, open for the per-tick writes.
#[derive(Debug)]
pub struct NetStateFile {
    path: PathBuf,
    file: Option<SlotFile>,
    /// An older agent's `net-totals.json`, removed after the first write.
    legacy: Option<PathBuf>,
    /// What the file holds now: a tick that changed nothing writes nothing.
    written: Option<NetState>,
    buf: Vec<u8>,
}

impl NetStateFile {
    /// Opens the totals in `state_dir` and returns them (`None` when there are none or they
    /// cannot be read; logged).
    pub fn open(state_dir: &Path) -> (NetStateFile, Option<NetState>) {
        let path = state_dir.join(NET_STATE_SLOTS);
        let legacy_path = state_dir.join(NET_STATE_LEGACY);
        let legacy = legacy_path.exists().then(|| legacy_path.clone());
        let (file, saved) = match SlotFile::open(&path) {
            Ok(Some((file, payload))) => match serde_json::from_slice(&payload) {
                Ok(s) => (Some(file), Some(s)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "Damaged network totals; starting anew.");
                    (Some(file), None)
                }
            },
            Ok(None) => (None, load_json(&legacy_path)),
            Err(e @ SlotError::Damaged { .. }) => {
                // Rewritten by the next write (a new file: the old one is replaced).
                tracing::warn!(error = %e, "Damaged network totals; starting anew.");
                (None, None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read the network totals; starting anew.");
                (None, None)
            }
        };
        let file = NetStateFile {
            path,
            file,
            legacy,
            written: saved.clone(),
            buf: Vec::new(),
        };
        (file, saved)
    }

    /// Writes `state` durably unless the file already holds it.
    pub fn save(&mut self, state: &NetState) -> Result<(), SlotError> {
        if self.written.as_ref() == Some(state) {
            return Ok(());
        }
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, state).map_err(|e| SlotError::Io {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        match self.file.as_mut() {
            Some(f) => f.write(&self.buf, true)?,
            None => self.file = Some(SlotFile::create(&self.path, &self.buf)?),
        }
        match self.written.as_mut() {
            // Reuses the interface list's allocations.
            Some(w) => w.clone_from(state),
            None => self.written = Some(state.clone()),
        }
        if let Some(legacy) = self.legacy.take() {
            let _ = std::fs::remove_file(legacy);
        }
        Ok(())
    }
}

/// The totals as the agent would resume them from `state_dir` (for tests and tools).
pub fn load(state_dir: &Path) -> Option<NetState> {
    match SlotFile::open(&state_dir.join(NET_STATE_SLOTS)) {
        Ok(Some((_, payload))) => serde_json::from_slice(&payload).ok(),
        Ok(None) => load_json(&state_dir.join(NET_STATE_LEGACY)),
        Err(_) => None,
    }
}

/// An older agent's `net-totals.json`; `None` when there is none or it cannot be read (logged).
fn load_json(path: &Path) -> Option<NetState> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "Cannot read the network totals; starting anew.");
            return None;
        }
    };
    match serde_json::from_slice(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "Damaged network totals; starting anew.");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::ifaces::IfaceState;

    fn state(rx: u64) -> NetState {
        NetState {
            boot_id: "b".into(),
            rx_total: rx,
            tx_total: 6,
            ifaces: vec![IfaceState {
                name: "eth0".into(),
                ifindex: Some(2),
                counted: true,
                rx,
                tx: 6,
            }],
        }
    }

    #[test]
    fn round_trip_and_unchanged_ticks_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, saved) = NetStateFile::open(dir.path());
        assert_eq!(saved, None);
        f.save(&state(5)).unwrap();
        assert_eq!(load(dir.path()), Some(state(5)));
        let path = dir.path().join(NET_STATE_SLOTS);
        let image = std::fs::read(&path).unwrap();
        f.save(&state(5)).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            image,
            "nothing changed, nothing written"
        );
        f.save(&state(7)).unwrap();
        drop(f);
        let (_, saved) = NetStateFile::open(dir.path());
        assert_eq!(saved, Some(state(7)));
    }

    #[test]
    fn upgrade_reads_the_json_once_then_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join(NET_STATE_LEGACY);
        std::fs::write(&legacy, serde_json::to_vec(&state(9)).unwrap()).unwrap();
        let (mut f, saved) = NetStateFile::open(dir.path());
        assert_eq!(saved, Some(state(9)));
        // The same totals: nothing to write yet, so the old file stays the record.
        f.save(&state(9)).unwrap();
        assert!(legacy.exists());
        f.save(&state(10)).unwrap();
        assert!(!legacy.exists());
        assert_eq!(NetStateFile::open(dir.path()).1, Some(state(10)));
    }

    #[test]
    fn damage_starts_anew_and_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, _) = NetStateFile::open(dir.path());
        f.save(&state(1)).unwrap();
        drop(f);
        let path = dir.path().join(NET_STATE_SLOTS);
        std::fs::write(&path, b"{not slots").unwrap();
        let (mut f, saved) = NetStateFile::open(dir.path());
        assert_eq!(saved, None);
        f.save(&state(2)).unwrap();
        assert_eq!(load(dir.path()), Some(state(2)));
        // An older agent's damaged JSON: also anew.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NET_STATE_LEGACY), b"{not json").unwrap();
        assert_eq!(NetStateFile::open(dir.path()).1, None);
    }
}
