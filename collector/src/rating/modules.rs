//! Rating modules: the built-in list, their stored state, and the order they run in.
//!
//! Enabled modules run in descending priority (the highest number first), ties in load order
//! (hashmap, noop, pyscripts). Each sees the previous module's output; hashmap adds its price to
//! whatever is already on a datapoint. `noop` is always enabled with priority 1 and changes
//! nothing. `pyscripts` is listed for compatibility but never runs code: it cannot be enabled.

/// A built-in module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Id in the API.
    pub id: &'static str,
    /// Description shown by `/v1/rating/modules`.
    pub description: &'static str,
    /// Whether its rules can change while running (`hot-config`).
    pub hot_config: bool,
    /// Whether it has a config API under `/v1/rating/module_config/<id>`.
    pub configurable: bool,
    /// State before anyone set one.
    pub default_enabled: bool,
}

/// Id of the hashmap module.
pub const HASHMAP: &str = "hashmap";
/// Id of the noop module.
pub const NOOP: &str = "noop";
/// Id of the pyscripts module.
pub const PYSCRIPTS: &str = "pyscripts";
/// Priority of a module nobody configured.
pub const DEFAULT_PRIORITY: i64 = 1;

/// Built-in modules in load order.
pub const MODULES: &[ModuleInfo] = &[
    ModuleInfo {
        id: HASHMAP,
        description: "HashMap rating module.",
        hot_config: true,
        configurable: true,
        // Upstream starts with hashmap disabled, the most common "every price is 0" report;
        // vmmon enables it (with no rules it prices nothing anyway).
        default_enabled: true,
    },
    ModuleInfo {
        id: NOOP,
        description: "Dummy test module.",
        hot_config: false,
        configurable: false,
        default_enabled: true,
    },
    ModuleInfo {
        id: PYSCRIPTS,
        description: "PyScripts rating module (vmmon never runs scripts; it cannot be enabled).",
        hot_config: false,
        configurable: false,
        default_enabled: false,
    },
];

/// A module's effective state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleState {
    /// The module.
    pub info: ModuleInfo,
    /// Enabled.
    pub enabled: bool,
    /// Priority (higher runs first).
    pub priority: i64,
}

/// The module with this id.
pub fn find(id: &str) -> Option<&'static ModuleInfo> {
    MODULES.iter().find(|m| m.id == id)
}

/// Effective states of every module, in load order, from stored `(id, enabled, priority)` rows.
pub fn states(stored: &[(String, bool, i64)]) -> Vec<ModuleState> {
    MODULES
        .iter()
        .map(|m| {
            let row = stored.iter().find(|(id, _, _)| id == m.id);
            let (enabled, priority) = match (m.id, row) {
                (NOOP, _) => (true, DEFAULT_PRIORITY),
                (PYSCRIPTS, r) => (false, r.map(|r| r.2).unwrap_or(DEFAULT_PRIORITY)),
                (_, Some((_, e, p))) => (*e, *p),
                (_, None) => (m.default_enabled, DEFAULT_PRIORITY),
            };
            ModuleState {
                info: *m,
                enabled,
                priority,
            }
        })
        .collect()
}

/// Ids of the enabled modules in the order they run.
pub fn run_order(states: &[ModuleState]) -> Vec<&'static str> {
    let mut on: Vec<(usize, &ModuleState)> = states
        .iter()
        .enumerate()
        .filter(|(_, s)| s.enabled)
        .collect();
    on.sort_by(|a, b| b.1.priority.cmp(&a.1.priority).then(a.0.cmp(&b.0)));
    on.into_iter().map(|(_, s)| s.info.id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::type_complexity)]
    fn defaults_and_order() {
        let s = states(&[]);
        let listed: Vec<(&str, bool, i64)> = s
            .iter()
            .map(|m| (m.info.id, m.enabled, m.priority))
            .collect();
        assert_eq!(
            listed,
            vec![
                ("hashmap", true, 1),
                ("noop", true, 1),
                ("pyscripts", false, 1)
            ]
        );
        assert_eq!(run_order(&s), vec!["hashmap", "noop"]);
        let cases: Vec<(Vec<(String, bool, i64)>, Vec<&str>)> = vec![
            (vec![("hashmap".into(), true, 0)], vec!["noop", "hashmap"]),
            (vec![("hashmap".into(), true, 5)], vec!["hashmap", "noop"]),
            (vec![("hashmap".into(), false, 5)], vec!["noop"]),
            // noop cannot be disabled and pyscripts cannot be enabled.
            (
                vec![("noop".into(), false, 9), ("pyscripts".into(), true, 9)],
                vec!["hashmap", "noop"],
            ),
        ];
        for (stored, want) in cases {
            assert_eq!(run_order(&states(&stored)), want, "{stored:?}");
        }
    }
}
