use super::*;
use std::{collections::HashMap, os::unix::fs::PermissionsExt};

fn parse(vars: &[(&str, &str)]) -> Result<StorageConfig, ConfigErrors> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    StorageConfig::from_env(Path::new("/var/lib/kiln"), |k| vars.get(k).cloned())
}

fn errors(vars: &[(&str, &str)]) -> Vec<String> {
    parse(vars).unwrap_err().0
}

#[test]
fn local_is_the_default_with_paths_under_kiln_home() {
    let config = parse(&[]).unwrap();
    assert_eq!(
        config.provider,
        Provider::Local {
            root: "/var/lib/kiln/storage/templates".into()
        }
    );
    assert_eq!(config.cache_dir, Path::new("/var/lib/kiln/cache/chunks"));
    assert_eq!(config.cache_bytes, 10 << 30);
    let config = parse(&[
        ("LOCAL_TEMPLATE_STORAGE_BASE_PATH", "/srv/s"),
        ("TEMPLATE_BUCKET_NAME", "b"),
        ("STORAGE_CACHE_DIR", "/c"),
        ("STORAGE_CACHE_BYTES", "512MiB"),
    ])
    .unwrap();
    assert_eq!(config.provider.describe(), "Local '/srv/s/b'");
    assert_eq!(config.cache_bytes, 512 << 20);
}

#[test]
fn every_missing_or_invalid_setting_is_reported_at_once() {
    let errors = errors(&[
        ("STORAGE_PROVIDER", "AWSBucket"),
        ("STORAGE_CACHE_BYTES", "lots"),
        ("S3_USE_PATH_STYLE", "maybe"),
    ]);
    let text = errors.join("\n");
    for expected in [
        "STORAGE_CACHE_BYTES=\"lots\" is invalid",
        "TEMPLATE_BUCKET_NAME is required for STORAGE_PROVIDER=AWSBucket",
        "AWS_REGION is required",
        "AWS_ACCESS_KEY_ID is required",
        "AWS_SECRET_ACCESS_KEY or AWS_SECRET_ACCESS_KEY_FILE is required",
        "S3_USE_PATH_STYLE=\"maybe\" is invalid",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(errors.len(), 6, "{text}");
}

#[test]
fn secret_values_never_appear_in_messages_or_debug() {
    let secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";
    let text = errors(&[
        ("STORAGE_PROVIDER", "AWSBucket"),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_SECRET_ACCESS_KEY_FILE", "/nonexistent"),
        ("AWS_SESSION_TOKEN", secret),
        ("AWS_ENDPOINT_URL", "http://s3.example.com"),
    ])
    .join("\n");
    assert!(!text.contains(secret), "{text}");
    assert!(text.contains("AWS_SECRET_ACCESS_KEY and AWS_SECRET_ACCESS_KEY_FILE are both set"));
    assert!(text.contains("plain http:// is allowed only for a loopback address"));

    let config = parse(&[
        ("STORAGE_PROVIDER", "AWSBucket"),
        ("TEMPLATE_BUCKET_NAME", "kiln"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "AKID"),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_SESSION_TOKEN", secret),
    ])
    .unwrap();
    assert!(!format!("{config:?}").contains(secret));
    assert_eq!(config.provider.describe(), "AWSBucket 'kiln'");
}

#[test]
fn a_secret_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "file-secret-value\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path_str = path.display().to_string();
    let vars = [
        ("STORAGE_PROVIDER", "AzureBucket"),
        ("TEMPLATE_BUCKET_NAME", "c"),
        ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
        ("AZURE_STORAGE_ACCOUNT_KEY_FILE", path_str.as_str()),
    ];
    let text = errors(&vars).join("\n");
    assert!(
        text.contains("readable by group or others (mode 0644)"),
        "{text}"
    );
    assert!(text.contains(&path_str), "{text}");
    assert!(!text.contains("file-secret-value"), "{text}");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    match parse(&vars).unwrap().provider {
        Provider::Azure { key, .. } => assert_eq!(key.expose(), "file-secret-value"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn path_style_defaults_to_true_only_with_an_endpoint() {
    let base = [
        ("STORAGE_PROVIDER", "AWSBucket"),
        ("TEMPLATE_BUCKET_NAME", "kiln"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "AKID"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
    ];
    let path_style = |extra: &[(&str, &str)]| {
        let vars: Vec<_> = base.iter().chain(extra).copied().collect();
        match parse(&vars).unwrap().provider {
            Provider::Aws { path_style, .. } => path_style,
            other => panic!("{other:?}"),
        }
    };
    assert!(!path_style(&[]));
    assert!(path_style(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")]));
    assert!(!path_style(&[
        ("AWS_ENDPOINT_URL", "https://s3.example.com"),
        ("S3_USE_PATH_STYLE", "false")
    ]));
}

#[test]
fn oci_uses_the_compat_endpoint_of_namespace_and_region() {
    let config = parse(&[
        ("STORAGE_PROVIDER", "OCIBucket"),
        ("TEMPLATE_BUCKET_NAME", "kiln-templates"),
        ("OCI_NAMESPACE", "axaxnpcrorw5"),
        ("OCI_REGION", "us-ashburn-1"),
        ("OCI_S3_ACCESS_KEY_ID", "ak"),
        ("OCI_S3_SECRET_ACCESS_KEY", "sk"),
    ])
    .unwrap();
    assert_eq!(
        config.provider.describe(),
        "OCIBucket 'kiln-templates' at https://axaxnpcrorw5.compat.objectstorage.us-ashburn-1.oraclecloud.com/"
    );
    let text = errors(&[
        ("STORAGE_PROVIDER", "OCIBucket"),
        ("TEMPLATE_BUCKET_NAME", "b"),
        ("OCI_NAMESPACE", "ns"),
        ("OCI_REGION", "iad"),
        ("OCI_AUTH", "instance_principal"),
    ])
    .join("\n");
    assert!(text.contains("OCI_REGION=\"iad\" is invalid"), "{text}");
}

const OCI: [(&str, &str); 4] = [
    ("STORAGE_PROVIDER", "OCIBucket"),
    ("TEMPLATE_BUCKET_NAME", "kiln-templates"),
    ("OCI_NAMESPACE", "axaxnpcrorw5"),
    ("OCI_REGION", "us-ashburn-1"),
];

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    OCI.iter().chain(extra).copied().collect()
}

#[test]
fn oci_auth_selects_the_native_api_at_the_regional_endpoint() {
    let config = parse(&with(&[("OCI_AUTH", "instance_principal")])).unwrap();
    assert_eq!(
        config.provider.describe(),
        "OCIBucket 'kiln-templates' at https://objectstorage.us-ashburn-1.oraclecloud.com/ (native API, instance principal)"
    );
    assert!(matches!(
        config.provider,
        Provider::OciNative {
            auth: OciAuth::InstancePrincipal,
            ..
        }
    ));
    // The provider builds without contacting anything (the token is fetched on first use).
    config.provider.build().unwrap();
}

#[test]
fn oci_api_key_profiles_are_loaded_at_configuration_time() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, "not a key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config_file = dir.path().join("config");
    std::fs::write(
        &config_file,
        format!(
            "[DEFAULT]\nuser=ocid1.user.oc1..u\nfingerprint=aa:bb\nkey_file={}\ntenancy=ocid1.tenancy.oc1..t\n",
            key.display()
        ),
    )
    .unwrap();
    let path = config_file.display().to_string();
    let vars = |profile| {
        with(&[
            ("OCI_AUTH", "api_key"),
            ("OCI_PROFILE", profile),
            ("OCI_CONFIG_FILE", path.as_str()),
        ])
    };
    let text = errors(&vars("OTHER")).join("\n");
    assert!(text.contains("OCI_AUTH=api_key"), "{text}");
    assert!(text.contains("no profile [OTHER]"), "{text}");
    let text = errors(&vars("DEFAULT")).join("\n");
    assert!(text.contains("readable by group or others"), "{text}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = errors(&vars("DEFAULT")).join("\n");
    assert!(text.contains("not a PEM key"), "{text}");
    assert!(!text.contains("not a key\""), "{text}");
}

#[test]
fn oci_auth_and_s3_keys_together_are_a_conflict_reported_with_the_rest() {
    let text = errors(&[
        ("STORAGE_PROVIDER", "OCIBucket"),
        ("OCI_AUTH", "instance_principal"),
        ("OCI_S3_ACCESS_KEY_ID", "ak"),
        ("OCI_S3_SECRET_ACCESS_KEY", "do-not-print-me"),
    ])
    .join("\n");
    for expected in [
        "OCI_AUTH and OCI_S3_ACCESS_KEY_ID, OCI_S3_SECRET_ACCESS_KEY are both set",
        "TEMPLATE_BUCKET_NAME is required",
        "OCI_NAMESPACE is required",
        "OCI_REGION is required",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("do-not-print-me"), "{text}");
    let text = errors(&with(&[("OCI_AUTH", "password")])).join("\n");
    assert!(
        text.contains("OCI_AUTH=\"password\" is invalid: expected api_key or instance_principal"),
        "{text}"
    );
}

#[test]
fn an_unknown_provider_lists_the_known_ones() {
    let text = errors(&[("STORAGE_PROVIDER", "Dropbox")]).join("\n");
    assert!(text.contains(PROVIDERS), "{text}");
}
