//! `kiln registry`: what the registry holds (`repos`), retention (`prune`, dry run unless
//! `--apply`), and a settings check (`check`). The work is in `registry::lifecycle`; this
//! module turns flags into a policy and results into tables or JSON.
//!
//! Secrets (registry passwords, auth tokens) are read from the environment or from a file only
//! its owner can read; nothing here prints them.

use anyhow::Context;
use clap::{Args, Subcommand};
use registry::{
    ConfigErrors,
    lifecycle::{
        self, Action, Catalog, Pattern, Plan, Policy, Quota, RegistryTarget, Rule,
        policy::{self, parse_bytes},
    },
};
use serde_json::json;
use std::{path::PathBuf, time::Duration};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

#[derive(Subcommand)]
pub(crate) enum RegistryCommand {
    /// Repositories: images, tagged and untagged, and bytes (each blob counted once per
    /// repository).
    Repos {
        #[command(flatten)]
        target: TargetArgs,
        /// Only these repositories (names or patterns like `kiln/*`; repeatable).
        #[arg(long = "repo")]
        repos: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Apply a retention policy: lists what would be deleted, and deletes it with --apply.
    Prune(PruneArgs),
    /// Check the registry settings (every problem at once), then that the registry answers.
    Check {
        #[command(flatten)]
        target: TargetArgs,
    },
}

#[derive(Args)]
pub(crate) struct TargetArgs {
    /// A registry `[http[s]://]host[:port][/prefix]` (credentials from
    /// ARTIFACTS_REGISTRY_USERNAME and ARTIFACTS_REGISTRY_PASSWORD[_FILE]); default: the
    /// configured provider (ARTIFACTS_REGISTRY_PROVIDER and its settings).
    #[arg(long)]
    registry: Option<String>,
    /// A file holding the registry password or auth token; it must be readable by its owner
    /// only (chmod 600). Replaces ARTIFACTS_REGISTRY_PASSWORD / OCIR_PASSWORD.
    #[arg(long)]
    password_file: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct PruneArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Only these repositories (names or patterns like `kiln/*`; repeatable). Default: all.
    #[arg(long = "repo")]
    repos: Vec<String>,
    /// Delete untagged images older than this many days [default: 14].
    #[arg(long, conflicts_with = "policy")]
    untagged_older_than: Option<u32>,
    /// Keep this many tagged images per repository, newest by creation time [default: 10].
    #[arg(long, conflicts_with = "policy")]
    keep_last: Option<usize>,
    /// Never delete images with a tag matching this pattern (`latest`, `v*`; repeatable).
    #[arg(long, conflicts_with = "policy")]
    exempt: Vec<String>,
    /// The registry's byte quota (`500MB`, `524288000`), for the report.
    #[arg(long, conflicts_with = "policy")]
    quota_bytes: Option<String>,
    /// Warn from this many bytes on (`350MB`).
    #[arg(long, conflicts_with = "policy")]
    warn_bytes: Option<String>,
    /// A TOML policy file (rules per repository pattern, quota), instead of the flags above.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Delete; without it nothing is changed.
    #[arg(long)]
    apply: bool,
    /// One JSON document on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(command: RegistryCommand) -> anyhow::Result<()> {
    match command {
        RegistryCommand::Repos {
            target,
            repos,
            json,
        } => {
            let target = target.resolve()?;
            let patterns = patterns(&repos)?;
            let catalog = target.catalog.as_ref();
            let names = lifecycle::select_repositories(catalog, &patterns).await?;
            let summaries = lifecycle::summarize(catalog, &names).await?;
            if json {
                let rows: Vec<_> = summaries
                    .iter()
                    .map(|s| {
                        json!({"repository": s.repository, "images": s.images, "tagged": s.tagged,
                               "untagged": s.untagged, "bytes": s.bytes})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let rows = summaries.iter().map(|s| {
                    vec![
                        s.repository.clone(),
                        s.images.to_string(),
                        s.tagged.to_string(),
                        s.untagged.to_string(),
                        human_bytes(s.bytes),
                    ]
                });
                print_table(
                    &["REPOSITORY", "IMAGES", "TAGGED", "UNTAGGED", "SIZE"],
                    rows,
                );
            }
            Ok(())
        }
        RegistryCommand::Prune(args) => prune(args).await,
        RegistryCommand::Check { target } => {
            let target = target.resolve()?;
            for (key, value) in &target.summary {
                println!("{key}: {value}");
            }
            // Listing is the cheapest request that needs working credentials.
            match target.catalog.repositories().await {
                Ok(names) => println!("ok: {} repositories visible", names.len()),
                Err(lifecycle::LifecycleError::CatalogUnsupported { .. }) => {
                    println!("ok: the registry answers (it does not list repositories)")
                }
                Err(e) => return Err(e).context("the registry settings are complete, but"),
            }
            Ok(())
        }
    }
}

impl TargetArgs {
    /// The registry to work on; every settings problem in one error.
    fn resolve(&self) -> anyhow::Result<RegistryTarget> {
        let file = self.password_file.as_ref().map(|p| p.display().to_string());
        let lookup = |key: &str| match (key, &file) {
            // An explicit file wins over passwords in the environment.
            ("ARTIFACTS_REGISTRY_PASSWORD" | "OCIR_PASSWORD", Some(_)) => None,
            ("ARTIFACTS_REGISTRY_PASSWORD_FILE" | "OCIR_PASSWORD_FILE", Some(file)) => {
                Some(file.clone())
            }
            _ => std::env::var(key).ok(),
        };
        let target = match &self.registry {
            Some(url) => RegistryTarget::from_url(url, &lookup),
            None => RegistryTarget::from_lookup(&lookup),
        };
        target.map_err(settings_error)
    }
}

fn settings_error(errors: ConfigErrors) -> anyhow::Error {
    anyhow::anyhow!(
        "registry settings, {} problem(s):\n  - {}",
        errors.0.len(),
        errors.0.join("\n  - ")
    )
}

fn patterns(values: &[String]) -> anyhow::Result<Vec<Pattern>> {
    let mut errors = Vec::new();
    let patterns = values
        .iter()
        .filter_map(|v| Pattern::new(v).map_err(|e| errors.push(e)).ok())
        .collect();
    if errors.is_empty() {
        Ok(patterns)
    } else {
        Err(settings_error(ConfigErrors(errors)))
    }
}

impl PruneArgs {
    /// The policy from the file or the flags; every problem at once.
    fn policy(&self) -> anyhow::Result<Policy> {
        if let Some(path) = &self.policy {
            return read_policy(path);
        }
        let mut errors = Vec::new();
        let exempt = self
            .exempt
            .iter()
            .filter_map(|p| {
                Pattern::new(p)
                    .map_err(|e| errors.push(format!("--exempt: {e}")))
                    .ok()
            })
            .collect();
        let mut bytes = |flag: &str, value: &Option<String>| {
            value.as_deref().and_then(|v| {
                parse_bytes(v)
                    .map_err(|e| errors.push(format!("{flag}: {e}")))
                    .ok()
            })
        };
        let quota = Quota {
            quota_bytes: bytes("--quota-bytes", &self.quota_bytes),
            warn_bytes: bytes("--warn-bytes", &self.warn_bytes),
        };
        if let Err(e) = policy::check_quota(&quota) {
            errors.push(format!("--warn-bytes: {e}"));
        }
        if !errors.is_empty() {
            return Err(settings_error(ConfigErrors(errors)));
        }
        let defaults = Rule::default();
        Ok(Policy {
            default_rule: Rule {
                untagged_older_than_days: self
                    .untagged_older_than
                    .unwrap_or(defaults.untagged_older_than_days),
                keep_last: self.keep_last.unwrap_or(defaults.keep_last),
                exempt,
            },
            rules: Vec::new(),
            quota,
        })
    }
}

/// Reads a TOML policy file; its problems are listed at once.
pub(crate) fn read_policy(path: &std::path::Path) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the policy file {}", path.display()))?;
    Policy::from_toml(&text).map_err(|errors| {
        anyhow::anyhow!(
            "policy file {}, {} problem(s):\n  - {}",
            path.display(),
            errors.0.len(),
            errors.0.join("\n  - ")
        )
    })
}

async fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let policy = args.policy()?;
    let target = args.target.resolve()?;
    let patterns = patterns(&args.repos)?;
    let catalog = target.catalog.as_ref();
    let names = lifecycle::select_repositories(catalog, &patterns).await?;
    let plan = lifecycle::plan(catalog, &names, &policy, OffsetDateTime::now_utc()).await?;
    if args.json {
        let deleted = if args.apply {
            Some(lifecycle::apply(catalog, &plan).await?)
        } else {
            None
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&plan_json(&plan, deleted))?
        );
        return Ok(());
    }
    print_plan(&plan);
    println!();
    print_quota(&plan);
    let doomed = plan.deletions().count();
    if !args.apply {
        println!(
            "dry run: {doomed} of {} images would be deleted; run with --apply to delete them",
            plan.images.len()
        );
        return Ok(());
    }
    let deleted = lifecycle::apply(catalog, &plan).await?;
    println!("deleted {deleted} of {} images", plan.images.len());
    if deleted > 0 {
        println!(
            "(a distribution registry frees the space only after its garbage collection: docker-registry garbage-collect)"
        );
    }
    Ok(())
}

fn plan_json(plan: &Plan, deleted: Option<usize>) -> serde_json::Value {
    let images: Vec<_> = plan
        .images
        .iter()
        .map(|(image, decision)| {
            json!({
                "repository": image.repository,
                "digest": image.digest,
                "tags": image.tags,
                "created": image.created.and_then(|c| c.format(&Rfc3339).ok()),
                "bytes": image.bytes,
                "action": decision.action.as_str(),
                "reason": decision.reason,
            })
        })
        .collect();
    json!({
        "registry": plan.location,
        "applied": deleted.is_some(),
        "deleted": deleted.unwrap_or(0),
        "images": images,
        "quota": {
            "used_bytes": plan.quota.used_bytes,
            "kept_bytes": plan.quota.kept_bytes,
            "warn_bytes": plan.quota.quota.warn_bytes,
            "quota_bytes": plan.quota.quota.quota_bytes,
            "status": plan.quota.status(),
        },
    })
}

fn print_plan(plan: &Plan) {
    let rows = plan.images.iter().map(|(image, decision)| {
        vec![
            image.repository.clone(),
            short_digest(&image.digest),
            if image.tags.is_empty() {
                "<none>".to_string()
            } else {
                image.tags.join(",")
            },
            image
                .created
                .map(|c| {
                    format!(
                        "{:04}-{:02}-{:02} {:02}:{:02}",
                        c.year(),
                        u8::from(c.month()),
                        c.day(),
                        c.hour(),
                        c.minute()
                    )
                })
                .unwrap_or_else(|| "?".to_string()),
            human_bytes(image.bytes),
            decision.action.as_str().to_string(),
            decision.reason.clone(),
        ]
    });
    print_table(
        &[
            "REPOSITORY",
            "DIGEST",
            "TAGS",
            "CREATED",
            "SIZE",
            "ACTION",
            "REASON",
        ],
        rows,
    );
}

/// The quota lines: printed on every run, whether or not anything is deleted.
fn print_quota(plan: &Plan) {
    let q = &plan.quota;
    let limit = |v: Option<u64>| v.map_or_else(|| "not set".to_string(), human_bytes);
    println!(
        "registry bytes: {} used ({} after this prune), warning at {}, quota {}: {}",
        human_bytes(q.used_bytes),
        human_bytes(q.kept_bytes),
        limit(q.quota.warn_bytes),
        limit(q.quota.quota_bytes),
        match q.status() {
            "over" => "OVER QUOTA",
            "warn" => "WARNING, above the warning threshold",
            _ => "ok",
        }
    );
}

fn short_digest(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

/// Decimal units, as registries bill (OCIR's 500 MB).
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Left-aligned columns as wide as their widest cell (the last column is not padded).
fn print_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows)
        .collect();
    let mut widths = vec![0; header.len()];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let last = row.len().saturating_sub(1);
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i == last {
                    cell.clone()
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        println!("{}", line.join("  "));
    }
}

/// The scheduled prune of `kiln up`: every `interval`, the policy is applied to the configured
/// provider. Failures are logged and retried at the next tick; the quota report is logged, as a
/// warning above the threshold.
pub(crate) struct ScheduledPrune {
    pub(crate) interval: Duration,
    pub(crate) policy: Policy,
    pub(crate) target: RegistryTarget,
}

impl ScheduledPrune {
    /// The scheduled prune `kiln up` was asked for (`None` when off); problems are added to
    /// `problems` so `kiln up` reports them with all others.
    pub(crate) fn from_settings(
        interval: Option<&str>,
        policy: Option<&std::path::Path>,
        problems: &mut Vec<String>,
    ) -> Option<ScheduledPrune> {
        let interval = match parse_interval(interval.unwrap_or_default()) {
            Ok(interval) => interval,
            Err(e) => {
                problems.push(format!("KILN_REGISTRY_PRUNE_INTERVAL: {e}"));
                None
            }
        };
        let policy = match policy.map(read_policy).transpose() {
            Ok(policy) => policy.unwrap_or_default(),
            Err(e) => {
                problems.push(format!("KILN_REGISTRY_PRUNE_POLICY: {e:#}"));
                return None;
            }
        };
        let interval = interval?;
        match RegistryTarget::from_lookup(&|key| std::env::var(key).ok()) {
            Ok(target) => Some(ScheduledPrune {
                interval,
                policy,
                target,
            }),
            Err(errors) => {
                problems.extend(
                    errors
                        .0
                        .into_iter()
                        .map(|e| format!("KILN_REGISTRY_PRUNE_INTERVAL is set, but: {e}")),
                );
                None
            }
        }
    }

    pub(crate) fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.once().await;
            }
        })
    }

    async fn once(&self) {
        let catalog: &dyn Catalog = self.target.catalog.as_ref();
        let result = async {
            let names = lifecycle::select_repositories(catalog, &[]).await?;
            let plan =
                lifecycle::plan(catalog, &names, &self.policy, OffsetDateTime::now_utc()).await?;
            let deleted = lifecycle::apply(catalog, &plan).await?;
            Ok::<_, lifecycle::LifecycleError>((plan, deleted))
        }
        .await;
        match result {
            Ok((plan, deleted)) => {
                let q = &plan.quota;
                let kept = plan
                    .images
                    .iter()
                    .filter(|(_, d)| d.action == Action::Keep)
                    .count();
                if q.status() == "ok" {
                    tracing::info!(registry = %plan.location, deleted, kept, used_bytes = q.used_bytes, "scheduled registry prune");
                } else {
                    tracing::warn!(registry = %plan.location, deleted, kept, used_bytes = q.used_bytes, warn_bytes = ?q.quota.warn_bytes, quota_bytes = ?q.quota.quota_bytes, status = q.status(), "scheduled registry prune: registry above its byte threshold");
                }
            }
            Err(error) => {
                tracing::warn!(registry = %catalog.describe(), %error, "scheduled registry prune failed")
            }
        }
    }
}

/// `30m`, `6h`, `1d`, `3600` (seconds); `0` or `off` is `None` (no scheduled prune).
pub(crate) fn parse_interval(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    if text.is_empty() || text == "0" || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let (number, unit) = policy::split_number(text)
        .ok_or_else(|| format!("{text:?} is not an interval like 30m, 6h or 1d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?} is not an interval like 30m, 6h or 1d")),
    };
    match number.checked_mul(seconds) {
        Some(s) if s >= 60 => Ok(Some(Duration::from_secs(s))),
        Some(_) => Err(format!("{text:?} is shorter than a minute")),
        None => Err(format!("{text:?} is too long")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_sizes() {
        assert_eq!(parse_interval("6h"), Ok(Some(Duration::from_secs(21_600))));
        assert_eq!(parse_interval("off"), Ok(None));
        assert_eq!(parse_interval(""), Ok(None));
        assert!(parse_interval("5s").is_err());
        assert!(parse_interval("1w").is_err());
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(350_000_000), "350.0 MB");
        assert_eq!(
            short_digest("sha256:0123456789abcdef"),
            "sha256:0123456789ab"
        );
    }
}
