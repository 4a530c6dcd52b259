//! Persistence of the running network totals ([`crate::sampler::ifaces::NetState`]) in the
//! state directory, written each tick (temp file + rename, so a crash leaves the old or the new).

use std::io;
use std::path::Path;

use crate::sampler::ifaces::NetState;

/// The saved state; `None` when there is none or it cannot be read (logged).
pub fn load(path: &Path) -> Option<NetState> {
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

/// Writes `state` atomically.
pub fn save(path: &Path, state: &NetState) -> io::Result<()> {
    let bytes = serde_json::to_vec(state).map_err(io::Error::other)?;
    let tmp = path.with_extension("tmp");
    // The agent runs as root: a planted `….tmp` symlink must not make it write through the link.
    // Remove whatever is there (a link is removed, not followed) and create the file exclusively
    // (O_CREAT|O_EXCL never follows a link). No fsync: it is rewritten every tick, and after a
    // crash the rename leaves the previous tick's file or this one.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    io::Write::write_all(&mut f, &bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.json");
        assert_eq!(load(&path), None);
        let state = NetState {
            boot_id: "b".into(),
            rx_total: 5,
            tx_total: 6,
            ifaces: Vec::new(),
        };
        save(&path, &state).unwrap();
        assert_eq!(load(&path), Some(state));
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(load(&path), None);
    }

    #[test]
    fn a_planted_tmp_symlink_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.json");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("n.tmp")).unwrap();
        let state = NetState {
            boot_id: "b".into(),
            rx_total: 1,
            tx_total: 2,
            ifaces: Vec::new(),
        };
        save(&path, &state).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(load(&path), Some(state));
        assert!(
            !std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
