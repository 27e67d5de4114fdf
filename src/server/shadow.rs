//! Shadow evaluation: candidate profile versions decided beside the enforced one (issue 17).
//!
//! Owns the configured candidates, loading them through the profile store, and turning the
//! candidate's decision into the enforced decision's `shadow` member and metrics. It must never
//! change what the agent is answered or what is forwarded: a candidate that is missing, invalid
//! or panics is reported (log, metric, `/readyz`) and otherwise skipped, and the enforced
//! decision is only ever annotated.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::config::ShadowCandidate;
use crate::decision::{Attempt, Decision};
use crate::profile::{Profile, ProfileStore};
use crate::request::ExecRequest;

use super::Gate;

/// How long a candidate that failed to load is left alone before the next attempt: a broken
/// candidate must not cost a disk read on every request.
const RETRY_BROKEN_AFTER: Duration = Duration::from_secs(5);

/// The configured candidates, by enforced profile id and version.
#[derive(Default)]
pub struct Shadows {
    by_profile: HashMap<String, HashMap<String, Slot>>,
}

/// One candidate and what is known about it so far.
struct Slot {
    candidate: ShadowCandidate,
    // INVARIANT: once set, never replaced; a profile version's bytes never change.
    loaded: OnceLock<Arc<Profile>>,
    broken: Mutex<Option<Broken>>,
}

struct Broken {
    message: String,
    retry_at: Instant,
}

/// How a candidate stands, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateStatus {
    pub profile: String,
    pub candidate: String,
    /// `None` when the candidate is loaded and evaluated; else why it is not.
    pub problem: Option<String>,
}

impl Shadows {
    pub fn new(candidates: &[ShadowCandidate]) -> Shadows {
        let mut by_profile: HashMap<String, HashMap<String, Slot>> = HashMap::new();
        for candidate in candidates {
            by_profile
                .entry(candidate.profile_id.clone())
                .or_default()
                .insert(
                    candidate.profile_version.clone(),
                    Slot {
                        candidate: candidate.clone(),
                        loaded: OnceLock::new(),
                        broken: Mutex::new(None),
                    },
                );
        }
        Shadows { by_profile }
    }

    pub fn is_empty(&self) -> bool {
        self.by_profile.is_empty()
    }

    /// Decides `request` under its profile's candidate, when one is configured, and returns
    /// `enforced` with the disagreement recorded (or unchanged when they agree).
    pub fn annotate(
        &self,
        gate: &Gate,
        enforced: Decision,
        request: &ExecRequest,
        now: SystemTime,
    ) -> Decision {
        let metrics = &gate.metrics;
        let Some(slot) = self
            .by_profile
            .get(&request.profile_id)
            .and_then(|versions| versions.get(&request.profile_version))
        else {
            return enforced;
        };
        let candidate = match slot.profile(&gate.profiles) {
            Ok(profile) => profile,
            Err(_) => {
                metrics.shadow_unavailable.inc();
                return enforced;
            }
        };
        let lookup = Ok(candidate);
        // The candidate is policy nobody has relied on yet: even a panic deciding under it must
        // leave the enforced answer alone.
        let decided = std::panic::catch_unwind(AssertUnwindSafe(|| {
            (gate.decide)(
                Attempt::Request {
                    request,
                    profile: &lookup,
                },
                &gate.context,
                now,
            )
        }));
        let Ok(shadow) = decided else {
            tracing::error!(
                profile = %request.profile_id,
                candidate = %slot.candidate.candidate_version,
                "panic while deciding under the shadow candidate; answer unchanged"
            );
            metrics.shadow_unavailable.inc();
            return enforced;
        };
        metrics.shadow_compared(&enforced, &shadow);
        let outcome = enforced.shadow_of(&shadow, &slot.candidate.candidate_version);
        Decision {
            shadow: outcome,
            ..enforced
        }
    }

    /// Every candidate and whether it can be evaluated; tries to load those not loaded yet.
    pub fn status(&self, store: &ProfileStore) -> Vec<CandidateStatus> {
        let mut all: Vec<CandidateStatus> = self
            .by_profile
            .values()
            .flat_map(HashMap::values)
            .map(|slot| CandidateStatus {
                profile: format!(
                    "{}@{}",
                    slot.candidate.profile_id, slot.candidate.profile_version
                ),
                candidate: slot.candidate.candidate_version.clone(),
                problem: slot.profile(store).err(),
            })
            .collect();
        all.sort_by(|a, b| a.profile.cmp(&b.profile));
        all
    }
}

impl Slot {
    /// The candidate profile, loading it the first time; a failure is remembered for
    /// [`RETRY_BROKEN_AFTER`] and logged when it first appears or changes.
    fn profile(&self, store: &ProfileStore) -> Result<Arc<Profile>, String> {
        if let Some(profile) = self.loaded.get() {
            return Ok(Arc::clone(profile));
        }
        let Ok(mut broken) = self.broken.lock() else {
            return Err("shadow state unavailable".to_owned());
        };
        if let Some(known) = broken.as_ref() {
            if Instant::now() < known.retry_at {
                return Err(known.message.clone());
            }
        }
        let ShadowCandidate {
            profile_id,
            profile_version,
            candidate_version,
        } = &self.candidate;
        match store.get(profile_id, candidate_version) {
            Ok(profile) => {
                tracing::info!(
                    profile = %format!("{profile_id}@{profile_version}"),
                    candidate = %candidate_version,
                    "shadow candidate loaded; disagreements are recorded in the audit log"
                );
                *broken = None;
                Ok(Arc::clone(self.loaded.get_or_init(|| profile)))
            }
            Err(err) => {
                let message = err.to_string();
                if broken.as_ref().is_none_or(|known| known.message != message) {
                    tracing::warn!(
                        profile = %format!("{profile_id}@{profile_version}"),
                        candidate = %candidate_version,
                        error = %message,
                        "shadow candidate cannot be evaluated; answers are unaffected"
                    );
                }
                *broken = Some(Broken {
                    message: message.clone(),
                    retry_at: Instant::now() + RETRY_BROKEN_AFTER,
                });
                Err(message)
            }
        }
    }
}
