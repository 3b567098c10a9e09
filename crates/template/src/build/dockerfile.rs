//! The v1 build API's Dockerfile, turned into a [`BuildRequest`].
//!
//! v1 uploads no build context, so `COPY`/`ADD` cannot work there; they and every instruction
//! Kiln does not run are refused with their line number. `CMD`/`ENTRYPOINT` become the start
//! command when the request gives none. As the SDK's own Dockerfile parser does, steps run as
//! root in `/` (Docker's defaults), and the template ends with E2B's defaults (user `user`,
//! `/home/user`) unless the Dockerfile sets `USER`/`WORKDIR`.

use super::steps::{BuildRequest, Step, is_variable_name};

/// A Dockerfile Kiln cannot build, with the (1-based) line where the instruction starts.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile line {line}: {message}")]
pub struct DockerfileError {
    pub line: usize,
    pub message: String,
}

/// Instructions that change nothing Kiln keeps.
const IGNORED: &[&str] = &["EXPOSE", "LABEL", "MAINTAINER", "STOPSIGNAL"];

/// Parses `text` into a build request whose start command is the Dockerfile's `CMD`/`ENTRYPOINT`.
pub fn parse(text: &str) -> Result<BuildRequest, DockerfileError> {
    let step = |kind: &str, args: Vec<String>| Step {
        kind: kind.into(),
        args,
        ..Step::default()
    };
    let mut request = BuildRequest {
        steps: vec![
            step("USER", vec!["root".into()]),
            step("WORKDIR", vec!["/".into()]),
        ],
        ..BuildRequest::default()
    };
    let (mut user_set, mut workdir_set) = (false, false);
    let (mut entrypoint, mut cmd) = (None::<String>, None::<String>);
    for (line, instruction) in logical_lines(text) {
        let fail = |message: String| DockerfileError { line, message };
        let (keyword, rest) = match instruction.split_once(char::is_whitespace) {
            Some((keyword, rest)) => (keyword.to_ascii_uppercase(), rest.trim().to_owned()),
            None => (instruction.to_ascii_uppercase(), String::new()),
        };
        if keyword != "FROM" && request.from_image.is_none() {
            return Err(fail(format!("{keyword} before FROM")));
        }
        match keyword.as_str() {
            "FROM" => {
                if request.from_image.is_some() {
                    return Err(fail("multi-stage builds are not supported".into()));
                }
                let mut words = rest.split_whitespace().filter(|w| !w.starts_with("--"));
                let image = words
                    .next()
                    .ok_or_else(|| fail("FROM needs an image".into()))?;
                request.from_image = Some(image.to_owned());
            }
            "RUN" => request.steps.push(step("RUN", vec![shell_form(&rest)])),
            "ENV" => request
                .steps
                .push(step("ENV", assignments(&rest, true).map_err(fail)?)),
            "ARG" => request
                .steps
                .push(step("ARG", assignments(&rest, false).map_err(fail)?)),
            "WORKDIR" => {
                workdir_set = true;
                request.steps.push(step("WORKDIR", vec![rest]));
            }
            "USER" => {
                user_set = true;
                request.steps.push(step("USER", vec![rest]));
            }
            "CMD" => cmd = Some(shell_form(&rest)),
            "ENTRYPOINT" => entrypoint = Some(shell_form(&rest)),
            "COPY" | "ADD" => {
                return Err(fail(format!(
                    "{keyword} needs a build context, which the v1 API does not upload (use the SDK's Template().copy())"
                )));
            }
            other if IGNORED.contains(&other) => {}
            other => return Err(fail(format!("unsupported instruction {other}"))),
        }
    }
    if request.from_image.is_none() {
        return Err(DockerfileError {
            line: 1,
            message: "no FROM instruction".into(),
        });
    }
    if !user_set {
        request.steps.push(step("USER", vec!["user".into()]));
    }
    if !workdir_set {
        request
            .steps
            .push(step("WORKDIR", vec!["/home/user".into()]));
    }
    request.start_cmd = match (entrypoint, cmd) {
        (Some(entrypoint), Some(cmd)) => Some(format!("{entrypoint} {cmd}")),
        (entrypoint, cmd) => entrypoint.or(cmd),
    };
    Ok(request)
}

/// Instructions with their first line number: comments and blank lines dropped, `\` joined.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if current.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if current.is_some() && trimmed.starts_with('#') {
            continue;
        }
        let (start, mut joined) = current.take().unwrap_or((index + 1, String::new()));
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                joined.push_str(part);
                joined.push(' ');
                current = Some((start, joined));
            }
            None => {
                joined.push_str(trimmed);
                lines.push((start, joined));
            }
        }
    }
    if let Some(last) = current {
        lines.push(last);
    }
    lines
}

/// `["a", "b c"]` (exec form) → `a 'b c'`; anything else is already a shell command.
fn shell_form(rest: &str) -> String {
    match serde_json::from_str::<Vec<String>>(rest) {
        Ok(words) => words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => rest.to_owned(),
    }
}

fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `ENV A=1 B="two words"`, `ENV A value with spaces`, `ARG A` / `ARG A=1` → name/value pairs.
fn assignments(rest: &str, env: bool) -> Result<Vec<String>, String> {
    let words = split_words(rest)?;
    if env && words.len() >= 2 && !words[0].contains('=') {
        // The legacy `ENV NAME value…` form.
        let name = words[0].clone();
        if !is_variable_name(&name) {
            return Err(format!("invalid variable name '{name}'"));
        }
        let value = rest.trim()[name.len()..].trim().to_owned();
        return Ok(vec![name, value]);
    }
    let mut pairs = Vec::new();
    for word in words {
        let (name, value) = match word.split_once('=') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            None if !env => (word.clone(), String::new()),
            None => return Err(format!("expected NAME=value, got '{word}'")),
        };
        if !is_variable_name(&name) {
            return Err(format!("invalid variable name '{name}'"));
        }
        pairs.push(name);
        pairs.push(value);
    }
    if pairs.is_empty() {
        return Err("no variables".into());
    }
    Ok(pairs)
}

/// Splits on whitespace, honouring double and single quotes and backslash escapes.
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => word.push(c),
            (_, '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                in_word = true;
            }
            (_, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn a_dockerfile_becomes_steps() {
        let request = parse(
            "# comment\nFROM 127.0.0.1:5000/base:1 AS app\nENV A=1 B=\"two words\"\nENV LEGACY some value\n\
             ARG V=3\nRUN apt-get update && \\\n    echo done\nWORKDIR /app\nUSER user\nEXPOSE 80\n\
             CMD [\"python3\", \"-m\", \"http.server\"]\n",
        )
        .unwrap();
        assert_eq!(request.from_image.as_deref(), Some("127.0.0.1:5000/base:1"));
        let kinds: Vec<_> = request.steps.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "USER", "WORKDIR", "ENV", "ENV", "ARG", "RUN", "WORKDIR", "USER"
            ]
        );
        assert_eq!(request.steps[2].args, ["A", "1", "B", "two words"]);
        assert_eq!(request.steps[3].args, ["LEGACY", "some value"]);
        assert_eq!(request.steps[5].args, ["apt-get update &&  echo done"]);
        let plain = parse("FROM a\nRUN id\n").unwrap();
        let tail: Vec<_> = plain
            .steps
            .iter()
            .map(|s| (s.kind.as_str(), s.args[0].as_str()))
            .collect();
        assert_eq!(
            tail,
            [
                ("USER", "root"),
                ("WORKDIR", "/"),
                ("RUN", "id"),
                ("USER", "user"),
                ("WORKDIR", "/home/user")
            ],
            "Docker's defaults while building, E2B's for the template"
        );
        assert_eq!(request.start_cmd.as_deref(), Some("python3 -m http.server"));
    }

    #[test]
    fn refusals_name_their_line() {
        let cases = [
            ("FROM a\n\nCOPY x /x\n", 3, "COPY needs a build context"),
            (
                "FROM a\nRUN x\nHEALTHCHECK CMD true\n",
                3,
                "unsupported instruction HEALTHCHECK",
            ),
            ("FROM a\nFROM b\n", 2, "multi-stage"),
            ("RUN x\n", 1, "RUN before FROM"),
            ("FROM a\nENV 1A=x\n", 2, "invalid variable name"),
            ("# nothing\n", 1, "no FROM"),
        ];
        for (text, line, message) in cases {
            let error = parse(text).unwrap_err();
            assert_eq!(error.line, line, "{text:?}");
            assert!(error.message.contains(message), "{text:?}: {error}");
        }
    }
}
