//! Retention against a real distribution registry: exactly which digests a policy keeps and
//! deletes, dry runs, repeated applies, shared manifests, the quota against the bytes on disk,
//! and a registry with deletes switched off.

mod artifacts;

use crate::common::*;
use registry::{
    Credentials, RegistryError,
    lifecycle::{
        self, Action, Catalog, DistributionCatalog, LifecycleError, Pattern, Policy, Quota, Rule,
    },
};
use std::collections::BTreeMap;
use time::{OffsetDateTime, macros::datetime};

const NOW: OffsetDateTime = datetime!(2024-06-01 00:00 UTC);

fn policy(keep_last: usize, exempt: &[&str]) -> Policy {
    Policy {
        default_rule: Rule {
            untagged_older_than_days: 14,
            keep_last,
            exempt: exempt.iter().map(|p| Pattern::new(p).unwrap()).collect(),
        },
        rules: Vec::new(),
        quota: Quota {
            quota_bytes: Some(1_000_000),
            warn_bytes: Some(1_000),
        },
    }
}

/// Whether `repo:reference` (tag or digest) still resolves.
async fn exists(host: &str, repo: &str, reference: &str) -> bool {
    let response = reqwest::Client::new()
        .head(format!("http://{host}/v2/{repo}/manifests/{reference}"))
        .header("Accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap();
    response.status().is_success()
}

/// The images pushed by [`fill`], by name.
struct Filled {
    images: BTreeMap<&'static str, TestImage>,
    index: Vec<u8>,
}

/// team/app: five images one month apart (`2` is also `v2`, `4` is also `latest`) and an old
/// two-platform index whose platform manifests have no tags; team/other: one image.
async fn fill(host: &str) -> Filled {
    let mut images = BTreeMap::new();
    for (name, created, tags) in [
        ("img1", "2024-01-01T00:00:00Z", &["1"][..]),
        ("img2", "2024-02-01T00:00:00Z", &["2", "v2"]),
        ("img3", "2024-03-01T00:00:00Z", &["3"]),
        ("img4", "2024-04-01T00:00:00.5Z", &["4", "latest"]),
        ("img5", "2024-05-01T00:00:00Z", &["5"]),
    ] {
        let image = TestImage::created(name, "amd64", created);
        for tag in tags {
            push(host, "team/app", tag, &image, None).await;
        }
        images.insert(name, image);
    }
    let amd = TestImage::created("multi-amd64", "amd64", "2023-12-01T00:00:00Z");
    let arm = TestImage::created("multi-arm64", "arm64", "2023-12-02T00:00:00Z");
    for platform in [&amd, &arm] {
        push(host, "team/app", &platform.digest(), platform, None).await;
    }
    let index = index_of(&[&amd, &arm]);
    push_manifest(host, "team/app", "multi", &index, OCI_INDEX, None).await;
    images.insert("multi-amd64", amd);
    images.insert("multi-arm64", arm);
    let other = TestImage::created("other", "amd64", "2020-01-01T00:00:00Z");
    push(host, "team/other", "a", &other, None).await;
    images.insert("other", other);
    Filled { images, index }
}

#[tokio::test]
async fn prune_keeps_exactly_what_the_policy_says() {
    let Some(reg) = TestRegistry::start(None).await else {
        return;
    };
    let host = reg.host.as_str();
    let filled = fill(host).await;
    let digest = |name: &str| filled.images[name].digest();
    let catalog = DistributionCatalog::new(host, None, Credentials::Anonymous, true);

    let repos = lifecycle::select_repositories(&catalog, &[]).await.unwrap();
    assert_eq!(repos, ["team/app", "team/other"]);
    let policy = policy(2, &["v*"]);
    let plan = lifecycle::plan(&catalog, &repos, &policy, NOW)
        .await
        .unwrap();

    let decided: Vec<(String, Vec<String>, Action)> = plan
        .images
        .iter()
        .map(|(i, d)| (i.digest.clone(), i.tags.clone(), d.action))
        .collect();
    let index_digest = sha256(&filled.index);
    let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        decided,
        [
            (digest("img5"), tags(&["5"]), Action::Keep),
            (digest("img4"), tags(&["4", "latest"]), Action::Keep),
            (digest("img3"), tags(&["3"]), Action::Delete),
            // "2" alone would go, but the manifest is also v2, which is exempt.
            (digest("img2"), tags(&["2", "v2"]), Action::Keep),
            (digest("img1"), tags(&["1"]), Action::Delete),
            (index_digest.clone(), tags(&["multi"]), Action::Delete),
            (digest("other"), tags(&["a"]), Action::Keep),
        ]
    );
    let (index_image, _) = &plan.images[5];
    assert_eq!(
        index_image.children,
        [digest("multi-amd64"), digest("multi-arm64")]
    );
    assert_eq!(
        index_image.created,
        Some(datetime!(2023-12-02 00:00 UTC)),
        "an index is as new as its newest platform"
    );
    let img4 = &plan.images[1].0;
    assert_eq!(img4.created, Some(datetime!(2024-04-01 00:00:00.5 UTC)));
    let expected_bytes: usize = filled.images["img4"].blobs().iter().map(|b| b.len()).sum();
    assert_eq!(img4.bytes, expected_bytes as u64, "config + layers");

    // The quota report counts what the registry stores, each shared layer once.
    assert_eq!(plan.quota.used_bytes, reg.blob_bytes_on_disk());
    assert!(plan.quota.kept_bytes < plan.quota.used_bytes);
    assert_eq!(plan.quota.status(), "warn");

    // The plan alone deletes nothing.
    for tag in ["1", "2", "3", "4", "5", "latest", "v2", "multi"] {
        assert!(
            exists(host, "team/app", tag).await,
            "{tag} gone after a dry run"
        );
    }

    let deleted = lifecycle::apply(&catalog, &plan).await.unwrap();
    assert_eq!(deleted, 3);
    for tag in ["1", "3", "multi"] {
        assert!(!exists(host, "team/app", tag).await, "{tag} survived");
    }
    for tag in ["2", "v2", "4", "latest", "5"] {
        assert!(exists(host, "team/app", tag).await, "{tag} deleted");
    }
    assert!(exists(host, "team/other", "a").await);
    // The untagged platform manifests of the deleted index went with it.
    for platform in ["multi-amd64", "multi-arm64"] {
        assert!(!exists(host, "team/app", &digest(platform)).await);
    }

    // Once applied, the same policy finds nothing more to delete, and applying the old plan
    // again changes nothing.
    let again = lifecycle::plan(&catalog, &repos, &policy, NOW)
        .await
        .unwrap();
    assert_eq!(again.deletions().count(), 0);
    assert_eq!(again.images.len(), 4);
    assert_eq!(lifecycle::apply(&catalog, &again).await.unwrap(), 0);
    lifecycle::apply(&catalog, &plan).await.unwrap();
    assert!(exists(host, "team/app", "v2").await);
}

#[tokio::test]
async fn a_registry_without_deletes_says_so() {
    let Some(reg) = TestRegistry::start_with(None, false).await else {
        return;
    };
    let image = TestImage::created("x", "amd64", "2024-01-01T00:00:00Z");
    push(&reg.host, "team/app", "1", &image, None).await;
    let catalog = DistributionCatalog::new(&reg.host, None, Credentials::Anonymous, true);
    let plan = lifecycle::plan(&catalog, &["team/app".into()], &policy(0, &[]), NOW)
        .await
        .unwrap();
    assert_eq!(plan.deletions().count(), 1);
    let err = lifecycle::apply(&catalog, &plan).await.unwrap_err();
    assert!(matches!(err, LifecycleError::DeleteRefused { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("refuses to delete") && text.contains("storage.delete.enabled"),
        "{text}"
    );
    assert!(exists(&reg.host, "team/app", "1").await);
}

#[tokio::test]
async fn credentials_are_used_and_required() {
    const USER: (&str, &str) = ("kiln", "lifecycle-pass-42");
    let Some(reg) = TestRegistry::start(Some(USER)).await else {
        return;
    };
    let image = TestImage::created("x", "amd64", "2024-01-01T00:00:00Z");
    push(&reg.host, "team/app", "1", &image, Some(USER)).await;

    let anonymous = DistributionCatalog::new(&reg.host, None, Credentials::Anonymous, true);
    let err = anonymous.repositories().await.unwrap_err();
    assert!(
        matches!(
            err,
            LifecycleError::Registry(RegistryError::CredentialsRequired { .. })
        ),
        "{err}"
    );
    let wrong = Credentials::Basic {
        username: USER.0.into(),
        password: "nope".into(),
    };
    let err = DistributionCatalog::new(&reg.host, None, wrong, true)
        .images("team/app")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("nope"), "{err}");

    let right = Credentials::Basic {
        username: USER.0.into(),
        password: USER.1.into(),
    };
    let catalog = DistributionCatalog::new(&reg.host, None, right, true);
    assert_eq!(catalog.repositories().await.unwrap(), ["team/app"]);
    let plan = lifecycle::plan(&catalog, &["team/app".into()], &policy(0, &[]), NOW)
        .await
        .unwrap();
    assert_eq!(lifecycle::apply(&catalog, &plan).await.unwrap(), 1);
    assert_eq!(catalog.images("team/app").await.unwrap(), []);
}
