//! The retention policy and its engine: a pure function from the images of a repository and a
//! [`Rule`] to one [`Decision`] per image, with the reason.
//!
//! Rules, in the order they are checked for each image of one repository:
//! 1. An image whose manifest is referenced by a kept index of the same repository is kept.
//! 2. Tagged images are ranked by creation time, newest first (ties by digest, so the result
//!    does not depend on listing order). The newest `keep_last` are kept. An image carrying a
//!    tag that matches an `exempt` pattern is kept wherever it ranks (it still takes one of the
//!    `keep_last` places when it is among the newest). A tagged image without a creation time is
//!    kept: its age is unknown. Every other tagged image is deleted.
//! 3. Untagged images older than `untagged_older_than_days` are deleted; younger ones, and ones
//!    without a creation time, are kept.
//!
//! An image is a manifest digest, so all its tags share one decision: a manifest that any kept
//! tag points to is never deleted.
//!
//! Policy files are TOML ([`Policy::from_toml`]); every problem in one is reported at once.

use super::StoredImage;
use crate::ConfigErrors;
use globset::{Glob, GlobMatcher};
use serde::Deserialize;
use std::{
    collections::{BTreeSet, HashSet},
    fmt,
};
use time::{Duration, OffsetDateTime};

/// Untagged images older than this many days are deleted unless the policy says otherwise.
pub const DEFAULT_UNTAGGED_OLDER_THAN_DAYS: u32 = 14;
/// This many tagged images are kept per repository unless the policy says otherwise.
pub const DEFAULT_KEEP_LAST: usize = 10;

/// A tag pattern (`latest`, `v*`, `release-?`): `*` and `?` as in shell globs, `[…]` classes.
#[derive(Clone)]
pub struct Pattern {
    text: String,
    matcher: GlobMatcher,
}

impl Pattern {
    pub fn new(text: &str) -> Result<Pattern, String> {
        let glob = Glob::new(text).map_err(|e| format!("pattern {text:?} is invalid: {e}"))?;
        Ok(Pattern {
            text: text.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        self.matcher.is_match(value)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// What to keep in one repository.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub untagged_older_than_days: u32,
    pub keep_last: usize,
    /// Images with a tag matching one of these are never deleted.
    pub exempt: Vec<Pattern>,
}

impl Default for Rule {
    fn default() -> Self {
        Rule {
            untagged_older_than_days: DEFAULT_UNTAGGED_OLDER_THAN_DAYS,
            keep_last: DEFAULT_KEEP_LAST,
            exempt: Vec::new(),
        }
    }
}

/// Byte limits, reported on every run (nothing is deleted to meet them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// The ceiling (OCIR's free tier: 500 MB).
    pub quota_bytes: Option<u64>,
    /// Warn from here on.
    pub warn_bytes: Option<u64>,
}

/// Rules for all repositories: the first [`Policy::rules`] entry whose pattern matches a
/// repository's name applies to it, else [`Policy::default_rule`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub default_rule: Rule,
    pub rules: Vec<(Pattern, Rule)>,
    pub quota: Quota,
}

impl Policy {
    /// The rule for `repository`.
    pub fn rule_for(&self, repository: &str) -> &Rule {
        self.rules
            .iter()
            .find(|(pattern, _)| pattern.matches(repository))
            .map_or(&self.default_rule, |(_, rule)| rule)
    }

    /// Parses a policy file:
    ///
    /// ```toml
    /// [defaults]                    # every field optional
    /// untagged_older_than_days = 14
    /// keep_last = 10
    /// exempt = ["latest", "v*"]
    ///
    /// [quota]
    /// quota_bytes = "500MB"         # or a number of bytes
    /// warn_bytes = "350MB"
    ///
    /// [[repository]]                # first match wins; unset fields come from [defaults]
    /// name = "kiln/templates/*"     # a repository name or pattern
    /// keep_last = 3
    /// exempt = ["prod-*"]
    /// ```
    pub fn from_toml(text: &str) -> Result<Policy, ConfigErrors> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            ConfigErrors(vec![format!(
                "policy file: {}",
                e.to_string().trim_end().replace('\n', " ")
            )])
        })?;
        let mut errors = Vec::new();
        let defaults = file.defaults.unwrap_or_default();
        let default_rule = defaults.apply(&Rule::default(), "[defaults]", &mut errors);
        let mut rules = Vec::new();
        for (i, entry) in file.repository.iter().enumerate() {
            let at = format!("[[repository]] #{} ({:?})", i + 1, entry.name);
            let pattern = Pattern::new(&entry.name)
                .map_err(|e| errors.push(format!("{at}: {e}")))
                .ok();
            let rule = entry.rule.apply(&default_rule, &at, &mut errors);
            rules.extend(pattern.map(|p| (p, rule)));
        }
        let quota = file.quota.unwrap_or_default();
        let mut bytes = |key: &str, value: Option<ByteSize>| {
            value.and_then(|v| {
                v.bytes()
                    .map_err(|e| errors.push(format!("[quota] {key}: {e}")))
                    .ok()
            })
        };
        let quota = Quota {
            quota_bytes: bytes("quota_bytes", quota.quota_bytes),
            warn_bytes: bytes("warn_bytes", quota.warn_bytes),
        };
        if let Err(e) = check_quota(&quota) {
            errors.push(format!("[quota]: {e}"));
        }
        if errors.is_empty() {
            Ok(Policy {
                default_rule,
                rules,
                quota,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// A warning threshold above the ceiling is a typo.
pub fn check_quota(quota: &Quota) -> Result<(), String> {
    match (quota.warn_bytes, quota.quota_bytes) {
        (Some(warn), Some(ceiling)) if warn > ceiling => Err(format!(
            "the warning threshold ({warn} bytes) is above the quota ({ceiling} bytes)"
        )),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    defaults: Option<RuleFields>,
    quota: Option<QuotaFields>,
    #[serde(default)]
    repository: Vec<RepositoryRule>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFields {
    untagged_older_than_days: Option<u32>,
    keep_last: Option<usize>,
    exempt: Option<Vec<String>>,
}

impl RuleFields {
    /// `base` with the fields set here replaced; bad patterns go to `errors`.
    fn apply(&self, base: &Rule, at: &str, errors: &mut Vec<String>) -> Rule {
        let exempt = match &self.exempt {
            None => base.exempt.clone(),
            Some(patterns) => patterns
                .iter()
                .filter_map(|p| {
                    Pattern::new(p)
                        .map_err(|e| errors.push(format!("{at} exempt: {e}")))
                        .ok()
                })
                .collect(),
        };
        Rule {
            untagged_older_than_days: self
                .untagged_older_than_days
                .unwrap_or(base.untagged_older_than_days),
            keep_last: self.keep_last.unwrap_or(base.keep_last),
            exempt,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoryRule {
    name: String,
    #[serde(flatten)]
    rule: RuleFields,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaFields {
    quota_bytes: Option<ByteSize>,
    warn_bytes: Option<ByteSize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ByteSize {
    Number(u64),
    Text(String),
}

impl ByteSize {
    fn bytes(&self) -> Result<u64, String> {
        match self {
            ByteSize::Number(n) => Ok(*n),
            ByteSize::Text(text) => parse_bytes(text),
        }
    }
}

/// `"500MB"` → `(500, "MB")`: the leading decimal number and what follows; `None` without a
/// number.
pub fn split_number(text: &str) -> Option<(u64, &str)> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    Some((number.parse().ok()?, unit))
}

/// `500000000`, `500MB`, `350 MiB`, `2G`: decimal units (k, M, G, T) and binary ones (KiB, MiB…).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = split_number(text)
        .ok_or_else(|| format!("{text:?} is not a size like 500MB or 524288000"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// What happens to one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Keep,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Keep => "keep",
            Action::Delete => "delete",
        }
    }
}

/// The engine's verdict on one image, in the order of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
}

/// Decides, for the images of one repository, which to keep and which to delete (see the
/// module docs for the rules). Returns one decision per image, in input order. Pure: `now` is
/// passed in.
pub fn decide(images: &[StoredImage], rule: &Rule, now: OffsetDateTime) -> Vec<Decision> {
    let mut decisions: Vec<Option<Decision>> = vec![None; images.len()];

    let mut tagged: Vec<usize> = (0..images.len())
        .filter(|&i| !images[i].tags.is_empty())
        .collect();
    // Newest first; images without a creation time are handled on their own below.
    tagged.sort_by(|&a, &b| {
        images[b]
            .created
            .cmp(&images[a].created)
            .then_with(|| images[a].digest.cmp(&images[b].digest))
    });
    let mut rank = 0;
    for &i in &tagged {
        let image = &images[i];
        let exempt = image.tags.iter().find_map(|tag| {
            rule.exempt
                .iter()
                .find(|p| p.matches(tag))
                .map(|p| (tag, p.as_str()))
        });
        let decision = if let Some((tag, pattern)) = exempt {
            if image.created.is_some() {
                rank += 1;
            }
            keep(format!("tag {tag} is exempt ({pattern})"))
        } else if image.created.is_none() {
            keep("creation time unknown".into())
        } else {
            rank += 1;
            if rank <= rule.keep_last {
                keep(format!("newest {} tagged (#{rank})", rule.keep_last))
            } else {
                delete(format!(
                    "tagged, older than the newest {} (#{rank})",
                    rule.keep_last
                ))
            }
        };
        decisions[i] = Some(decision);
    }

    let max_age = Duration::days(i64::from(rule.untagged_older_than_days));
    for (i, image) in images.iter().enumerate() {
        if !image.tags.is_empty() {
            continue;
        }
        decisions[i] = Some(match image.created {
            None => keep("untagged, creation time unknown".into()),
            Some(created) => {
                let age = now - created;
                let days = age.whole_days();
                if age > max_age {
                    delete(format!(
                        "untagged, {days} days old (> {})",
                        rule.untagged_older_than_days
                    ))
                } else {
                    keep(format!(
                        "untagged, {days} days old (<= {})",
                        rule.untagged_older_than_days
                    ))
                }
            }
        });
    }

    // A manifest a kept index references stays, whatever the rules above said about it:
    // deleting it would break the index. Kept indexes may make more images kept, never fewer,
    // so one pass over a fixed point is enough.
    loop {
        let referenced: HashSet<&str> = images
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| d.as_ref().is_some_and(|d| d.action == Action::Keep))
            .flat_map(|(image, _)| image.children.iter().map(String::as_str))
            .collect();
        let mut changed = false;
        for (image, decision) in images.iter().zip(decisions.iter_mut()) {
            if decision
                .as_ref()
                .is_some_and(|d| d.action == Action::Delete)
                && referenced.contains(image.digest.as_str())
            {
                *decision = Some(keep("referenced by a kept index".into()));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    decisions
        .into_iter()
        .map(|d| d.unwrap_or_else(|| keep("not examined".into())))
        .collect()
}

fn keep(reason: String) -> Decision {
    Decision {
        action: Action::Keep,
        reason,
    }
}

fn delete(reason: String) -> Decision {
    Decision {
        action: Action::Delete,
        reason,
    }
}

/// Where the registry stands against the quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaReport {
    /// Bytes of every distinct blob (manifests, configs, layers) of the images looked at.
    pub used_bytes: u64,
    /// The same, counting only the images kept.
    pub kept_bytes: u64,
    pub quota: Quota,
}

impl QuotaReport {
    /// Counts each blob once per registry (layers shared between images or repositories are
    /// stored once by a distribution registry).
    pub fn new<'a>(
        images: impl IntoIterator<Item = (&'a StoredImage, Action)>,
        quota: Quota,
    ) -> QuotaReport {
        let mut all = BTreeSet::new();
        let mut kept = BTreeSet::new();
        for (image, action) in images {
            for blob in &image.blobs {
                all.insert((blob.digest.as_str(), blob.size));
                if action == Action::Keep {
                    kept.insert((blob.digest.as_str(), blob.size));
                }
            }
        }
        QuotaReport {
            used_bytes: all.iter().map(|(_, size)| size).sum(),
            kept_bytes: kept.iter().map(|(_, size)| size).sum(),
            quota,
        }
    }

    /// `ok`, `warn` (at or above the warning threshold) or `over` (at or above the quota).
    pub fn status(&self) -> &'static str {
        if self.quota.quota_bytes.is_some_and(|q| self.used_bytes >= q) {
            "over"
        } else if self.quota.warn_bytes.is_some_and(|w| self.used_bytes >= w) {
            "warn"
        } else {
            "ok"
        }
    }
}

#[cfg(test)]
mod tests;
