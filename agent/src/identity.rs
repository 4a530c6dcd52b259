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
