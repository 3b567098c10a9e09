use super::*;
use crate::lifecycle::Blob;

const NOW: i64 = 1_800_000_000;

fn at(days_ago: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(NOW - days_ago * 86_400).unwrap()
}

fn image(digest: &str, tags: &[&str], days_ago: Option<i64>) -> StoredImage {
    StoredImage {
        repository: "repo".into(),
        digest: digest.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        created: days_ago.map(at),
        bytes: 0,
        blobs: Vec::new(),
        children: Vec::new(),
    }
}

fn rule(keep_last: usize, untagged_days: u32, exempt: &[&str]) -> Rule {
    Rule {
        untagged_older_than_days: untagged_days,
        keep_last,
        exempt: exempt.iter().map(|p| Pattern::new(p).unwrap()).collect(),
    }
}

/// `(digest, action)` for each image, the data-driven form every case below checks.
fn check(images: &[StoredImage], rule: &Rule, expected: &[(&str, Action)]) {
    let decisions = decide(images, rule, at(0));
    let got: Vec<(&str, Action)> = images
        .iter()
        .zip(&decisions)
        .map(|(i, d)| (i.digest.as_str(), d.action))
        .collect();
    assert_eq!(got, expected, "{decisions:#?}");
}

use Action::{Delete as D, Keep as K};

#[test]
fn keeps_the_newest_tagged_and_deletes_the_rest() {
    let images = [
        image("a", &["1"], Some(30)),
        image("b", &["2"], Some(20)),
        image("c", &["3"], Some(10)),
        image("d", &["4"], Some(5)),
    ];
    check(
        &images,
        &rule(2, 14, &[]),
        &[("a", D), ("b", D), ("c", K), ("d", K)],
    );
    check(
        &images,
        &rule(0, 14, &[]),
        &[("a", D), ("b", D), ("c", D), ("d", D)],
    );
    check(
        &images,
        &rule(10, 14, &[]),
        &[("a", K), ("b", K), ("c", K), ("d", K)],
    );
    let reasons = decide(&images, &rule(2, 14, &[]), at(0));
    assert_eq!(reasons[0].reason, "tagged, older than the newest 2 (#4)");
    assert_eq!(reasons[3].reason, "newest 2 tagged (#1)");
}

#[test]
fn exempt_tags_survive_and_take_a_place_when_new() {
    let images = [
        image("old-v", &["v1.0"], Some(40)),
        image("old", &["build-1"], Some(30)),
        image("latest", &["latest", "build-3"], Some(1)),
        image("mid", &["build-2"], Some(10)),
    ];
    // `latest` is the newest and exempt: it takes the one place, so build-2 goes.
    check(
        &images,
        &rule(1, 14, &["latest", "v*"]),
        &[("old-v", K), ("old", D), ("latest", K), ("mid", D)],
    );
    let d = decide(&images, &rule(1, 14, &["latest", "v*"]), at(0));
    assert_eq!(d[0].reason, "tag v1.0 is exempt (v*)");
    check(
        &images,
        &rule(2, 14, &["v*"]),
        &[("old-v", K), ("old", D), ("latest", K), ("mid", K)],
    );
}

#[test]
fn untagged_by_age_and_unknown_times_are_kept() {
    let images = [
        image("u-old", &[], Some(15)),
        image("u-new", &[], Some(13)),
        image("u-unknown", &[], None),
        image("t-unknown", &["x"], None),
        image("t-old", &["y"], Some(400)),
    ];
    check(
        &images,
        &rule(0, 14, &[]),
        &[
            ("u-old", D),
            ("u-new", K),
            ("u-unknown", K),
            ("t-unknown", K),
            ("t-old", D),
        ],
    );
    check(
        &images,
        &rule(1, 30, &[]),
        &[
            ("u-old", K),
            ("u-new", K),
            ("u-unknown", K),
            ("t-unknown", K),
            ("t-old", K),
        ],
    );
}

#[test]
fn ties_are_broken_by_digest_not_listing_order() {
    let a = image("a", &["1"], Some(3));
    let b = image("b", &["2"], Some(3));
    check(
        &[a.clone(), b.clone()],
        &rule(1, 14, &[]),
        &[("a", K), ("b", D)],
    );
    check(&[b, a], &rule(1, 14, &[]), &[("b", D), ("a", K)]);
}

#[test]
fn manifests_of_a_kept_index_are_kept() {
    let mut index = image("index", &["multi"], Some(1));
    index.children = vec!["child".into(), "grandchild-index".into()];
    let mut nested = image("grandchild-index", &["nested"], Some(50));
    nested.children = vec!["deep".into()];
    let images = [
        index,
        image("child", &["amd64-only"], Some(60)),
        nested,
        image("deep", &[], Some(90)),
        image("other", &["z"], Some(70)),
    ];
    check(
        &images,
        &rule(1, 14, &[]),
        &[
            ("index", K),
            ("child", K),
            ("grandchild-index", K),
            ("deep", K),
            ("other", D),
        ],
    );
    let d = decide(&images, &rule(1, 14, &[]), at(0));
    assert_eq!(d[1].reason, "referenced by a kept index");
}

#[test]
fn policy_files_parse_with_defaults_and_first_match() {
    let policy = Policy::from_toml(
        r#"
        [defaults]
        keep_last = 5
        exempt = ["latest"]

        [quota]
        quota_bytes = "500MB"
        warn_bytes = 350000000

        [[repository]]
        name = "kiln/templates/*"
        keep_last = 2
        exempt = ["prod-*"]

        [[repository]]
        name = "kiln/*"
        untagged_older_than_days = 1
        "#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        policy.quota,
        Quota {
            quota_bytes: Some(500_000_000),
            warn_bytes: Some(350_000_000)
        }
    );
    let t = policy.rule_for("kiln/templates/base");
    assert_eq!((t.keep_last, t.untagged_older_than_days), (2, 14));
    assert_eq!(t.exempt, [Pattern::new("prod-*").unwrap()]);
    let k = policy.rule_for("kiln/other");
    assert_eq!((k.keep_last, k.untagged_older_than_days), (5, 1));
    assert_eq!(k.exempt, [Pattern::new("latest").unwrap()]);
    assert_eq!(policy.rule_for("elsewhere"), &policy.default_rule);
    assert_eq!(Policy::from_toml("").unwrap(), Policy::default());
}

#[test]
fn policy_files_report_every_problem() {
    let Err(errors) = Policy::from_toml(
        r#"
        [defaults]
        exempt = ["[oops"]
        [quota]
        quota_bytes = "5 parsecs"
        warn_bytes = "1x"
        [[repository]]
        name = "a/[b"
        "#,
    ) else {
        panic!("accepted")
    };
    assert_eq!(errors.0.len(), 4, "{errors}");
    let Err(errors) = Policy::from_toml("[defaults]\nkeep_latest = 3\n") else {
        panic!("accepted")
    };
    assert!(errors.to_string().contains("keep_latest"), "{errors}");
    let Err(errors) = Policy::from_toml("[quota]\nquota_bytes = 10\nwarn_bytes = 20\n") else {
        panic!("accepted")
    };
    assert!(errors.to_string().contains("above the quota"), "{errors}");
}

#[test]
fn sizes() {
    assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
    assert_eq!(parse_bytes("350 MiB"), Ok(350 << 20));
    assert_eq!(parse_bytes("42"), Ok(42));
    assert!(parse_bytes("MB").is_err());
    assert!(parse_bytes("99999999999TB").is_err());
}

#[test]
fn quota_counts_each_blob_once() {
    let blob = |d: &str, size| Blob {
        digest: d.into(),
        size,
    };
    let mut a = image("a", &["1"], Some(1));
    a.blobs = vec![blob("m1", 10), blob("shared", 100), blob("c1", 1)];
    let mut b = image("b", &["2"], Some(2));
    b.blobs = vec![blob("m2", 20), blob("shared", 100), blob("only-b", 1000)];
    let quota = Quota {
        quota_bytes: Some(1200),
        warn_bytes: Some(1000),
    };
    let report = QuotaReport::new([(&a, Action::Keep), (&b, Action::Delete)], quota);
    assert_eq!(report.used_bytes, 10 + 100 + 1 + 20 + 1000);
    assert_eq!(report.kept_bytes, 111);
    assert_eq!(report.status(), "warn");
    let report = QuotaReport::new([(&a, Action::Keep)], quota);
    assert_eq!(report.status(), "ok");
}
