//! Which tools the loaded profiles allow without an upstream: reported at start, in `/readyz`
//! and in a metric, never a reason to refuse a start (a profile pushed to running gates would
//! otherwise crash-loop the next rollout).
//!
//! Reads profiles through the store (as deciding does); it must never change a decision.

use std::collections::BTreeMap;

use crate::profile::ProfileStore;

use super::Upstream;

/// A tool that a profile allows and no upstream serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingUpstream {
    pub tool: String,
    pub profile_id: String,
    pub profile_version: String,
}

impl std::fmt::Display for MissingUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tool `{}` (allowed by profile `{}` version `{}`) has no `[upstreams.\"{}\"]`: its \
             ALLOWs are recorded with outcome error `no_upstream` and never forwarded",
            self.tool, self.profile_id, self.profile_version, self.tool
        )
    }
}

/// Every tool that a valid profile under `profiles_root` allows without an upstream, in
/// profile order. Loads the profiles it lists (as deciding would), so a version pushed after
/// start is seen the next time this runs.
pub fn tools_without_upstream(
    profiles: &ProfileStore,
    upstreams: &BTreeMap<String, Upstream>,
) -> Vec<MissingUpstream> {
    let Ok(listed) = profiles.list() else {
        return Vec::new();
    };
    let mut missing = Vec::new();
    for (id, version) in listed {
        if !crate::profile::is_valid_ref(&id) || !crate::profile::is_valid_ref(&version) {
            continue;
        }
        let Ok(profile) = profiles.get(&id, &version) else {
            continue;
        };
        for tool in profile.tools() {
            if !upstreams.contains_key(&tool.name) {
                missing.push(MissingUpstream {
                    tool: tool.name.clone(),
                    profile_id: id.clone(),
                    profile_version: version.clone(),
                });
            }
        }
    }
    missing
}
