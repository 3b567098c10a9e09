//! What a build is asked to do: E2B's `TemplateBuildStartV2` body and its steps, checked.

use serde::{Deserialize, Serialize};

/// `POST /v2/templates/{id}/builds/{buildID}` (and what a v1 Dockerfile is turned into).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_image_registry: Option<RegistryCredentials>,
    /// Rebuild every step, cached or not.
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
}

/// Credentials for `fromImage`, as the SDK sends them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RegistryCredentials {
    Registry {
        username: String,
        password: String,
    },
    Aws {
        #[serde(rename = "awsAccessKeyId")]
        access_key_id: String,
        #[serde(rename = "awsSecretAccessKey")]
        secret_access_key: String,
        #[serde(rename = "awsRegion")]
        region: String,
    },
    Gcp {
        #[serde(rename = "serviceAccountJson")]
        service_account_json: String,
    },
}

/// Never prints secrets.
impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryCredentials::Registry { username, .. } => {
                write!(
                    f,
                    "Registry {{ username: {username:?}, password: <hidden> }}"
                )
            }
            RegistryCredentials::Aws { region, .. } => write!(f, "Aws {{ region: {region:?} }}"),
            RegistryCredentials::Gcp { .. } => write!(f, "Gcp {{ .. }}"),
        }
    }
}

/// One step as sent: `{type, args, filesHash?, force}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_hash: Option<String>,
    #[serde(default)]
    pub force: bool,
}

/// A step understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instruction {
    Run {
        command: String,
        user: Option<String>,
    },
    Copy {
        src: String,
        dest: String,
        /// `user` or `user:group`.
        owner: Option<String>,
        mode: Option<u32>,
        files_hash: String,
    },
    Env(Vec<(String, String)>),
    Arg(Vec<(String, String)>),
    Workdir(String),
    User(String),
}

/// A step that cannot be run, with its 1-based number and type, as the build's failure reason.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("step {number} ({kind}): {message}")]
pub struct StepError {
    pub number: usize,
    pub kind: String,
    pub message: String,
}

impl Step {
    /// Checks the step's arguments; `number` is 1-based, for messages.
    pub fn instruction(&self, number: usize) -> Result<Instruction, StepError> {
        let fail = |message: String| StepError {
            number,
            kind: self.kind.clone(),
            message,
        };
        let arg = |i: usize| self.args.get(i).map(String::as_str).unwrap_or("");
        let optional = |i: usize| Some(arg(i)).filter(|a| !a.is_empty()).map(str::to_owned);
        match self.kind.to_ascii_uppercase().as_str() {
            "RUN" => {
                if arg(0).trim().is_empty() {
                    return Err(fail("no command".into()));
                }
                Ok(Instruction::Run {
                    command: arg(0).to_owned(),
                    user: optional(1),
                })
            }
            "COPY" | "ADD" => {
                if arg(0).is_empty() || arg(1).is_empty() {
                    return Err(fail("needs a source and a destination".into()));
                }
                let files_hash = self
                    .files_hash
                    .clone()
                    .filter(|h| is_hash(h))
                    .ok_or_else(|| fail("needs a valid filesHash".into()))?;
                let mode = match optional(3) {
                    None => None,
                    Some(text) => Some(
                        u32::from_str_radix(&text, 8)
                            .ok()
                            .filter(|m| *m <= 0o7777)
                            .ok_or_else(|| fail(format!("invalid mode '{text}'")))?,
                    ),
                };
                Ok(Instruction::Copy {
                    src: arg(0).to_owned(),
                    dest: arg(1).to_owned(),
                    owner: optional(2),
                    mode,
                    files_hash,
                })
            }
            "ENV" | "ARG" => {
                if !self.args.len().is_multiple_of(2) {
                    return Err(fail("needs name/value pairs".into()));
                }
                let pairs: Vec<(String, String)> = self
                    .args
                    .chunks(2)
                    .map(|pair| (pair[0].clone(), pair[1].clone()))
                    .collect();
                if let Some((name, _)) = pairs.iter().find(|(name, _)| !is_variable_name(name)) {
                    return Err(fail(format!("invalid variable name '{name}'")));
                }
                Ok(if self.kind.eq_ignore_ascii_case("ENV") {
                    Instruction::Env(pairs)
                } else {
                    Instruction::Arg(pairs)
                })
            }
            "WORKDIR" => match optional(0) {
                Some(path) => Ok(Instruction::Workdir(path)),
                None => Err(fail("no directory".into())),
            },
            "USER" => match optional(0) {
                Some(user) if is_user_name(&user) => Ok(Instruction::User(user)),
                Some(user) => Err(fail(format!("invalid user name '{user}'"))),
                None => Err(fail("no user".into())),
            },
            _ => Err(fail("unsupported instruction".into())),
        }
    }
}

pub(crate) fn is_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A POSIX-ish user name (what `useradd` accepts), optionally `user:group`.
pub(crate) fn is_user_name(name: &str) -> bool {
    let user = name.split(':').next().unwrap_or("");
    !user.is_empty()
        && user.len() <= 32
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !user.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::{BuildRequest, Instruction, Step};

    fn step(kind: &str, args: &[&str]) -> Step {
        Step {
            kind: kind.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Step::default()
        }
    }

    #[test]
    fn parses_the_sdk_body() {
        let body = r#"{"fromImage":"127.0.0.1:5000/x:1","fromImageRegistry":{"type":"registry","username":"u","password":"p"},
            "force":false,"steps":[{"type":"RUN","args":["echo hi","root"],"force":false},
            {"type":"COPY","args":["a.txt","/app/","",""],"filesHash":"aa","force":false}],
            "startCmd":"python3 -m http.server","readyCmd":"curl -s localhost:8000"}"#;
        let request: BuildRequest = serde_json::from_str(body).unwrap();
        assert_eq!(request.steps.len(), 2);
        assert!(format!("{:?}", request.from_image_registry).contains("<hidden>"));
        assert_eq!(
            request.steps[0].instruction(1).unwrap(),
            Instruction::Run {
                command: "echo hi".into(),
                user: Some("root".into())
            }
        );
        let copy = request.steps[1].instruction(2).unwrap_err();
        assert_eq!(copy.to_string(), "step 2 (COPY): needs a valid filesHash");
    }

    #[test]
    fn checks_arguments() {
        let hash = "a".repeat(64);
        let mut copy = step("COPY", &["src", "/dst", "user:user", "0755"]);
        copy.files_hash = Some(hash.clone());
        assert_eq!(
            copy.instruction(1).unwrap(),
            Instruction::Copy {
                src: "src".into(),
                dest: "/dst".into(),
                owner: Some("user:user".into()),
                mode: Some(0o755),
                files_hash: hash
            }
        );
        assert_eq!(
            step("ENV", &["A", "1", "B", "2"]).instruction(1).unwrap(),
            Instruction::Env(vec![("A".into(), "1".into()), ("B".into(), "2".into())])
        );
        for bad in [
            step("ENV", &["A"]),
            step("ENV", &["1A", "x"]),
            step("RUN", &[""]),
            step("USER", &["bad user"]),
            step("WORKDIR", &[]),
            step("HEALTHCHECK", &["x"]),
        ] {
            assert!(bad.instruction(3).is_err(), "{bad:?}");
        }
        assert_eq!(
            step("VOLUME", &["/x"])
                .instruction(4)
                .unwrap_err()
                .to_string(),
            "step 4 (VOLUME): unsupported instruction"
        );
    }
}
