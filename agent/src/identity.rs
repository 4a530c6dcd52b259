//! Which instance this agent reports for (SPEC §2): config, then cloud-init's instance id, then
//! the DMI product uuid, then /etc/machine-id.

use std::path::{Path, PathBuf};

/// Where identity is looked up, in order (a seam for tests).
#[derive(Debug, Clone)]
pub struct IdentitySources {
    /// Candidate files, first non-empty wins.
    pub files: Vec<PathBuf>,
}

impl Default for IdentitySources {
    fn default() -> Self {
        IdentitySources {
            files: vec![
                PathBuf::from("/var/lib/cloud/data/instance-id"),
                PathBuf::from("/sys/class/dmi/id/product_uuid"),
                PathBuf::from("/etc/machine-id"),
            ],
        }
    }
}

/// The instance id: `configured` if given, else the first usable file.
pub fn resolve_instance_id(configured: Option<&str>, sources: &IdentitySources) -> Option<String> {
    if let Some(id) = configured.map(str::trim).filter(|s| !s.is_empty()) {
        return Some(id.to_string());
    }
    sources.files.iter().find_map(|p| read_id(p))
}

fn read_id(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = text.trim();
    // cloud-init writes "iid-datasource-none" when it has no real id: not an identity.
    if id.is_empty() || id == "iid-datasource-none" || id.len() > 128 {
        return None;
    }
    Some(id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_config_then_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "iid-datasource-none\n").unwrap();
        std::fs::write(&b, "ABC-123\n").unwrap();
        let src = IdentitySources {
            files: vec![dir.path().join("missing"), a, b],
        };
        assert_eq!(
            resolve_instance_id(Some("cfg-id"), &src).as_deref(),
            Some("cfg-id")
        );
        assert_eq!(resolve_instance_id(None, &src).as_deref(), Some("abc-123"));
        assert_eq!(
            resolve_instance_id(None, &IdentitySources { files: vec![] }),
            None
        );
    }
}

/// File in the state dir holding the agent's own identity (`agent_uid`) and the boot it is for.
pub const AGENT_UID_FILE: &str = "agent-uid.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedUid {
    agent_uid: String,
    boot_id: String,
}

/// Who this agent is, for the collector to tell two agents reporting one instance id apart (a
/// VM cloned from an image): a random id kept in `state_dir`, renewed whenever the kernel's boot
/// id (`/proc/sys/kernel/random/boot_id`) differs from the one it was made for. An image cloned
/// with the state dir therefore still gets its own id at its first boot, while the original keeps
/// its id until it reboots. An unwritable state dir gives a fresh id per start (logged).
pub fn agent_uid(state_dir: &Path, boot_id: &str) -> String {
    let path = state_dir.join(AGENT_UID_FILE);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(saved) = serde_json::from_str::<SavedUid>(&text)
        && saved.boot_id == boot_id
        && !boot_id.is_empty()
        && vmmon_common::vocab::validate_instance_id(&saved.agent_uid).is_ok()
    {
        return saved.agent_uid;
    }
    let uid = uuid::Uuid::new_v4().to_string();
    let saved = SavedUid {
        agent_uid: uid.clone(),
        boot_id: boot_id.to_string(),
    };
    let tmp = state_dir.join(format!("{AGENT_UID_FILE}.tmp"));
    let written = serde_json::to_vec(&saved)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            let _ = std::fs::remove_file(&tmp);
            // create_new: never follow a planted link or overwrite another file.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        });
    if let Err(e) = written {
        tracing::warn!(error = %e, path = %path.display(), "Cannot keep the agent's identity; using a new one for this run.");
    }
    uid
}

#[cfg(test)]
mod uid_tests {
    use super::*;

    #[test]
    fn the_uid_lasts_for_a_boot_and_is_renewed_by_another() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent_uid(dir.path(), "boot-1");
        assert_eq!(agent_uid(dir.path(), "boot-1"), a, "same boot: same agent");
        let b = agent_uid(dir.path(), "boot-2");
        assert_ne!(
            b, a,
            "a clone booting with a copy of the state dir (or a reboot) is new"
        );
        assert_eq!(agent_uid(dir.path(), "boot-2"), b);
        // A copy of the state dir taken during boot-2, used in another boot: new again.
        let clone = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir.path().join(AGENT_UID_FILE),
            clone.path().join(AGENT_UID_FILE),
        )
        .unwrap();
        assert_ne!(agent_uid(clone.path(), "boot-3"), b);
        assert_eq!(uuid::Uuid::parse_str(&b).unwrap().get_version_num(), 4);
    }
}
