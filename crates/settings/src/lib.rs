//! Settings from environment variables, validated up front.
//!
//! [`Env`] reads variables through a lookup function (the process environment, or a table in
//! tests) and collects every missing or invalid one instead of stopping at the first, so
//! [`ConfigErrors`] can list them all in one message and one restart fixes them all. Crates
//! add their own checks as extension traits over [`Env`].
//!
//! Invariant: messages name variables and what is expected, never a secret's value.

use std::fmt;

/// Every problem with a set of settings, one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

/// Variables being read, and the problems found so far.
pub struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    /// The variable that picks a provider (`STORAGE_PROVIDER`), named when a setting the
    /// provider needs is missing.
    selector: &'static str,
    /// The provider it picked, once read.
    pub provider: String,
    pub errors: Vec<String>,
}

impl<'a> Env<'a> {
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<String>, selector: &'static str) -> Self {
        Env {
            lookup,
            selector,
            provider: String::new(),
            errors: Vec::new(),
        }
    }

    /// The raw lookup, for readers of their own (a config file named by a variable).
    pub fn lookup(&self) -> &'a dyn Fn(&str) -> Option<String> {
        self.lookup
    }

    /// A set, non-empty variable, trimmed.
    pub fn get(&self, key: &str) -> Option<String> {
        (self.lookup)(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// `STORAGE_PROVIDER=AWSBucket`: what needs a missing setting.
    pub fn required_for(&self) -> String {
        format!("{}={}", self.selector, self.provider)
    }

    /// A variable the provider needs; records an error when it is missing.
    pub fn require(&mut self, key: &str, what: &str) -> String {
        self.get(key).unwrap_or_else(|| {
            let message = format!("{key} is required for {} ({what})", self.required_for());
            self.errors.push(message);
            String::new()
        })
    }

    /// Records an error unless `value` is empty (already reported missing) or `ok`.
    pub fn check(&mut self, key: &str, value: &str, ok: bool, expected: &str) {
        if !value.is_empty() && !ok {
            self.errors
                .push(format!("{key}={value:?} is invalid: expected {expected}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ConfigErrors, Env};

    #[test]
    fn collects_every_problem() {
        let lookup = |key: &str| match key {
            "SET" => Some("  value ".to_string()),
            "BLANK" => Some("  ".to_string()),
            "BAD" => Some("x".to_string()),
            _ => None,
        };
        let mut env = Env::new(&lookup, "STORAGE_PROVIDER");
        env.provider = "AWSBucket".into();
        assert_eq!(env.get("SET").as_deref(), Some("value"));
        assert_eq!(env.get("BLANK"), None);
        assert_eq!(env.require("MISSING", "a thing"), "");
        let bad = env.require("BAD", "a number");
        env.check("BAD", &bad, bad.parse::<u32>().is_ok(), "a number");
        env.check("MISSING", "", false, "ignored: already reported");
        assert_eq!(
            ConfigErrors(env.errors).to_string(),
            "MISSING is required for STORAGE_PROVIDER=AWSBucket (a thing)\nBAD=\"x\" is invalid: expected a number"
        );
    }
}
