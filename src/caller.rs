//! Who is calling, as the decision sees it: the authenticated [`Caller`] and the [`Bindings`]
//! that say which profiles and principals each caller may use.
//!
//! Pure core, like the decision that reads it: values and matching only. It never reads a
//! credential, a file or the clock — authenticating a caller is the server's job (`auth`), and
//! what reaches this module is its result. A caller id is never a credential, so it may be
//! logged and audited freely.

use std::fmt;
use std::sync::Arc;

/// How the caller was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallerMethod {
    /// No authentication (`auth.methods = ["none"]`): every caller is `anonymous`.
    None,
    /// A bearer JWT verified against the configured keys.
    Jwt,
    /// A TLS client certificate verified against the configured CA bundle.
    Mtls,
}

impl CallerMethod {
    pub const fn as_str(self) -> &'static str {
        match self {
            CallerMethod::None => "none",
            CallerMethod::Jwt => "jwt",
            CallerMethod::Mtls => "mtls",
        }
    }

    pub fn parse(text: &str) -> Option<CallerMethod> {
        match text {
            "none" => Some(CallerMethod::None),
            "jwt" => Some(CallerMethod::Jwt),
            "mtls" => Some(CallerMethod::Mtls),
            _ => None,
        }
    }
}

impl fmt::Display for CallerMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id every unauthenticated caller has.
pub const ANONYMOUS: &str = "anonymous";

/// An authenticated caller: an input of the decision, recorded in every audit record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    pub method: CallerMethod,
    /// `sub` of a JWT; URI SAN, else DNS SAN, else CN of a client certificate; `anonymous`.
    pub id: Arc<str>,
    /// The JWT's `iss`; `None` for other methods.
    pub issuer: Option<Arc<str>>,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller {
            method: CallerMethod::None,
            id: Arc::from(ANONYMOUS),
            issuer: None,
        }
    }
}

impl Default for Caller {
    fn default() -> Self {
        Caller::anonymous()
    }
}

/// A pattern where `*` matches any run of characters (empty included) and everything else
/// matches itself. No other character is special, so ids with `.`, `?` or `[` mean themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
}

impl Pattern {
    pub fn new(text: impl Into<String>) -> Pattern {
        Pattern { text: text.into() }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, candidate: &str) -> bool {
        glob(self.text.as_bytes(), candidate.as_bytes())
    }
}

/// Wildcard matching without backtracking blow-up: the classic two-pointer algorithm, linear
/// in practice and O(n·m) at worst, so a hostile id cannot make a binding slow.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A profile a binding allows: `id@version`, with `*` allowed in either part
/// (`finance-agent@2.*`, `finance-agent@*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfilePattern {
    pub id: Pattern,
    pub version: Pattern,
}

impl ProfilePattern {
    /// Parses `id@version`; `None` when there is no `@` or a part is empty.
    pub fn parse(text: &str) -> Option<ProfilePattern> {
        let (id, version) = text.rsplit_once('@')?;
        if id.is_empty() || version.is_empty() {
            return None;
        }
        Some(ProfilePattern {
            id: Pattern::new(id),
            version: Pattern::new(version),
        })
    }

    fn matches(&self, id: &str, version: &str) -> bool {
        self.id.matches(id) && self.version.matches(version)
    }
}

/// The `actor.principal_id` values a binding allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalPattern {
    /// `{caller}`: exactly the caller's own id.
    CallerItself,
    Matching(Pattern),
}

/// How `{caller}` is written in a binding's `principals`.
pub const CALLER_PLACEHOLDER: &str = "{caller}";

impl PrincipalPattern {
    pub fn parse(text: &str) -> PrincipalPattern {
        if text == CALLER_PLACEHOLDER {
            PrincipalPattern::CallerItself
        } else {
            PrincipalPattern::Matching(Pattern::new(text))
        }
    }

    fn matches(&self, caller: &Caller, principal: &str) -> bool {
        match self {
            PrincipalPattern::CallerItself => *caller.id == *principal,
            PrincipalPattern::Matching(pattern) => pattern.matches(principal),
        }
    }
}

/// One `[[bindings]]` entry: callers matching `caller` may use these profiles as these
/// principals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub caller: Pattern,
    pub profiles: Vec<ProfilePattern>,
    pub principals: Vec<PrincipalPattern>,
}

/// All bindings. An attempt is permitted when one binding matches its caller and allows both
/// its profile and its principal; a caller no binding matches may use nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    pub bindings: Vec<Binding>,
}

/// What an attempt asks to use, as far as bindings care.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    pub profile_id: &'a str,
    pub profile_version: &'a str,
    pub principal_id: &'a str,
}

impl Bindings {
    /// `Ok` when permitted, else why not, in words for the `detail` (names the caller and what
    /// it asked for; never a credential).
    pub fn permit(&self, caller: &Caller, asked: Asked<'_>) -> Result<(), String> {
        let mut matching = self
            .bindings
            .iter()
            .filter(|b| b.caller.matches(&caller.id))
            .peekable();
        if matching.peek().is_none() {
            return Err(format!("caller `{}` has no binding", caller.id));
        }
        let mut profile_allowed = false;
        for binding in matching {
            let profile = binding
                .profiles
                .iter()
                .any(|p| p.matches(asked.profile_id, asked.profile_version));
            if !profile {
                continue;
            }
            profile_allowed = true;
            if binding
                .principals
                .iter()
                .any(|p| p.matches(caller, asked.principal_id))
            {
                return Ok(());
            }
        }
        if profile_allowed {
            Err(format!(
                "caller `{}` may not act as principal `{}` with profile `{}` version `{}`",
                caller.id, asked.principal_id, asked.profile_id, asked.profile_version
            ))
        } else {
            Err(format!(
                "caller `{}` may not use profile `{}` version `{}`",
                caller.id, asked.profile_id, asked.profile_version
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(id: &str) -> Caller {
        Caller {
            method: CallerMethod::Mtls,
            id: Arc::from(id),
            issuer: None,
        }
    }

    #[test]
    fn glob_matches_stars_anywhere_and_nothing_else() {
        let cases = [
            ("a*", "a", true),
            ("a*", "abc", true),
            ("*", "", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbbd", false),
            ("2.*", "2.1.0", true),
            ("2.*", "20.1", false),
            ("a.c", "abc", false),
            ("a?c", "abc", false),
            ("*/sa/*", "spiffe://td/ns/x/sa/y", true),
            ("", "", true),
            ("", "x", false),
            ("a**b", "ab", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(
                Pattern::new(pattern).matches(text),
                want,
                "{pattern} ~ {text}"
            );
        }
    }

    #[test]
    // A hostile caller id must not make matching explode (exponential backtracking).
    fn glob_is_fast_on_pathological_input() {
        let pattern = Pattern::new(format!("{}b", "*a".repeat(50)));
        let text = "a".repeat(10_000);
        assert!(!pattern.matches(&text));
    }

    #[test]
    fn profile_patterns_parse() {
        assert!(ProfilePattern::parse("finance@2.*").is_some());
        assert!(ProfilePattern::parse("finance").is_none());
        assert!(ProfilePattern::parse("@1").is_none());
        assert!(ProfilePattern::parse("x@").is_none());
    }

    #[test]
    fn bindings_table() {
        let bindings = Bindings {
            bindings: vec![
                Binding {
                    caller: Pattern::new("spiffe://cluster.local/ns/agents/sa/*"),
                    profiles: vec![ProfilePattern::parse("finance-agent@2.*").unwrap()],
                    principals: vec![PrincipalPattern::parse("{caller}")],
                },
                Binding {
                    caller: Pattern::new("ops"),
                    profiles: vec![ProfilePattern::parse("ops@*").unwrap()],
                    principals: vec![PrincipalPattern::parse("user:*")],
                },
            ],
        };
        let agent = "spiffe://cluster.local/ns/agents/sa/finance";
        let ask = |profile: &'static str, version: &'static str, principal: &'static str| Asked {
            profile_id: profile,
            profile_version: version,
            principal_id: principal,
        };
        // (caller, asked, permitted, detail fragment)
        let cases: Vec<(&str, Asked<'_>, Option<&str>)> = vec![
            (agent, ask("finance-agent", "2.1.0", agent), None),
            (
                agent,
                ask("ops", "1.0.0", agent),
                Some("may not use profile `ops`"),
            ),
            (
                agent,
                ask("finance-agent", "3.0.0", agent),
                Some("version `3.0.0`"),
            ),
            (
                agent,
                ask("finance-agent", "2.1.0", "user:bob"),
                Some("principal `user:bob`"),
            ),
            ("ops", ask("ops", "9", "user:alice"), None),
            (
                "ops",
                ask("ops", "9", "ops"),
                Some("may not act as principal `ops`"),
            ),
            (
                "stranger",
                ask("ops", "9", "user:alice"),
                Some("caller `stranger` has no binding"),
            ),
        ];
        for (id, asked, want) in cases {
            let got = bindings.permit(&caller(id), asked);
            match want {
                None => assert_eq!(got, Ok(()), "{id} {asked:?}"),
                Some(fragment) => {
                    let detail = got.expect_err(id);
                    assert!(detail.contains(fragment), "{detail}");
                }
            }
        }
    }
}
