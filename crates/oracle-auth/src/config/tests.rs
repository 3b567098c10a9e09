use super::*;
use std::os::unix::fs::PermissionsExt;

const KEY: &str = include_str!("../../tests/data/oracle-vector-key.pem");

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A config file and a 0600 key file `keys/api.pem` in a temporary home.
    fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".oci/keys")).unwrap();
        std::fs::write(dir.path().join(".oci/config"), config).unwrap();
        let key = dir.path().join(".oci/keys/api.pem");
        std::fs::write(&key, format!("{KEY}OCI_API_KEY\n")).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self { dir }
    }

    fn home(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn lookup<'a>(&'a self, profile: Option<&'a str>) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| match key {
            "HOME" => Some(self.home()),
            "OCI_PROFILE" => profile.map(str::to_string),
            _ => None,
        }
    }
}

const CONFIG: &str = "\
[DEFAULT]
user=ocid1.user.oc1..default
fingerprint=73:61:a2:21:67:e0:df:be:7e:4b:93:1e:15:98:a5:b7
key_file=~/.oci/keys/api.pem
tenancy=ocid1.tenancy.oc1..tenant
region=us-ashburn-1

[OTHER]
User = ocid1.user.oc1..other
key_file = keys/api.pem
pass_phrase = hunter2
";

#[tokio::test]
async fn the_default_profile_signs_with_tenancy_user_and_fingerprint() {
    let fixture = Fixture::new(CONFIG);
    let credentials = ApiKeyCredentials::from_env(&fixture.lookup(None)).unwrap();
    assert_eq!(
        credentials.signer().await.unwrap().key_id(),
        "ocid1.tenancy.oc1..tenant/ocid1.user.oc1..default/73:61:a2:21:67:e0:df:be:7e:4b:93:1e:15:98:a5:b7"
    );
    assert_eq!(credentials.region(), Some("us-ashburn-1"));
    assert!(credentials.describe().contains("[DEFAULT]"));
}

#[test]
fn a_profile_inherits_default_and_resolves_relative_key_files() {
    let fixture = Fixture::new(CONFIG);
    let config = OciConfig::from_env(&fixture.lookup(Some("OTHER")));
    let profile = config.load(Some(fixture.dir.path())).unwrap();
    assert_eq!(profile.user.as_deref(), Some("ocid1.user.oc1..other"));
    assert_eq!(profile.tenancy, "ocid1.tenancy.oc1..tenant");
    assert_eq!(
        profile.key_file,
        fixture.dir.path().join(".oci/keys/api.pem")
    );
    assert!(!format!("{profile:?}").contains("hunter2"));
}

#[test]
fn missing_keys_and_profiles_are_named() {
    let fixture = Fixture::new("[DEFAULT]\nregion=us-ashburn-1\n[P]\nuser=x\n");
    let err = OciConfig::from_env(&fixture.lookup(None))
        .load(None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("profile [DEFAULT] lacks tenancy, key_file, user, fingerprint"),
        "{err}"
    );
    let err = OciConfig::from_env(&fixture.lookup(Some("NOPE")))
        .load(None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no profile [NOPE]"), "{err}");
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let fixture = Fixture::new(CONFIG);
    let key = fixture.dir.path().join(".oci/keys/api.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = ApiKeyCredentials::from_env(&fixture.lookup(None))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("readable by group or others (mode 0644)"),
        "{err}"
    );
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains("MIIC"), "{err}");
}

#[tokio::test]
async fn a_session_token_profile_signs_with_st_token() {
    let fixture =
        Fixture::new("[DEFAULT]\ntenancy=t\nkey_file=keys/api.pem\nsecurity_token_file=token\n");
    let token = fixture.dir.path().join(".oci/token");
    std::fs::write(&token, "eyJtoken\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let credentials = ApiKeyCredentials::from_env(&fixture.lookup(None)).unwrap();
    assert_eq!(credentials.signer().await.unwrap().key_id(), "ST$eyJtoken");
    assert!(!format!("{credentials:?}").contains("eyJtoken"));
}
