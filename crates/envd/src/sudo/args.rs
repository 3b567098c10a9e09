//! The `sudo` command line: the options people and scripts use, parsed as sudo(8) does.

use serde::{Deserialize, Serialize};

/// What a `sudo` invocation asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Run(Run),
    /// `-l`: list the caller's privileges.
    List,
    /// `-v`, `-k`, `-K`: credential-cache operations; there is no password, so nothing to do.
    NoOp,
    Version,
    Help,
}

/// A command to run as another user.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Run {
    /// `-u`: the target user (name or `#uid`); root when absent.
    pub(crate) user: Option<String>,
    /// `-E`: keep the caller's whole environment.
    pub(crate) preserve_env: bool,
    /// `--preserve-env=A,B`: keep these variables.
    pub(crate) preserve: Vec<String>,
    /// `-i`: the target user's login shell, in their home.
    pub(crate) login: bool,
    /// `-s`: the caller's shell.
    pub(crate) shell: bool,
    /// `-D`: the working directory.
    pub(crate) chdir: Option<String>,
    /// `VAR=value` operands before the command.
    pub(crate) assignments: Vec<(String, String)>,
    pub(crate) command: Vec<String>,
}

/// A command line sudo would refuse; the message is printed after `sudo: `.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

pub(crate) const USAGE: &str = "usage: sudo [-EHiknSs] [-D directory] [-u user] [VAR=value] [-i|-s] [command [arg ...]]\n       sudo -l | -v | -k | -K | -V | -h";

/// Parses the arguments after `sudo`.
pub(crate) fn parse(args: &[String]) -> Result<Action, UsageError> {
    let mut run = Run::default();
    let mut action = None;
    let mut index = 0;
    while index < args.len() {
        let arg = &args[index];
        index += 1;
        if arg == "--" {
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (long, None),
            };
            let mut value = |what: &str| -> Result<String, UsageError> {
                if let Some(value) = inline.clone() {
                    return Ok(value);
                }
                index += 1;
                args.get(index - 1)
                    .cloned()
                    .ok_or_else(|| UsageError(format!("option '--{what}' requires an argument")))
            };
            match name {
                "user" => run.user = Some(value("user")?),
                "chdir" => run.chdir = Some(value("chdir")?),
                "preserve-env" => match &inline {
                    Some(list) => run
                        .preserve
                        .extend(list.split(',').filter(|v| !v.is_empty()).map(str::to_owned)),
                    None => run.preserve_env = true,
                },
                "login" => run.login = true,
                "shell" => run.shell = true,
                "prompt" | "close-from" | "command-timeout" => {
                    value(name)?;
                }
                "set-home" | "non-interactive" | "stdin" | "askpass" | "bell"
                | "preserve-groups" => {}
                "list" => action = Some(Action::List),
                "validate" | "reset-timestamp" | "remove-timestamp" => action = Some(Action::NoOp),
                "version" => return Ok(Action::Version),
                "help" => return Ok(Action::Help),
                _ => return Err(UsageError(format!("unrecognized option '--{name}'"))),
            }
            continue;
        }
        let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) else {
            index -= 1;
            break;
        };
        for (at, flag) in cluster.char_indices() {
            let mut value = || -> Result<String, UsageError> {
                let rest = &cluster[at + flag.len_utf8()..];
                if !rest.is_empty() {
                    return Ok(rest.to_owned());
                }
                index += 1;
                args.get(index - 1)
                    .cloned()
                    .ok_or_else(|| UsageError(format!("option requires an argument -- '{flag}'")))
            };
            match flag {
                'u' => run.user = Some(value()?),
                'D' => run.chdir = Some(value()?),
                'p' | 'C' | 'T' => {
                    value()?;
                }
                'E' => run.preserve_env = true,
                'i' => run.login = true,
                's' => run.shell = true,
                'H' | 'n' | 'S' | 'A' | 'B' | 'P' => continue,
                'l' => action = Some(Action::List),
                'v' | 'k' | 'K' => action = Some(Action::NoOp),
                'V' => return Ok(Action::Version),
                'h' => return Ok(Action::Help),
                'g' | 'b' | 'e' | 'U' => {
                    return Err(UsageError(format!(
                        "option '-{flag}' is not supported in a Kiln sandbox"
                    )));
                }
                _ => return Err(UsageError(format!("invalid option -- '{flag}'"))),
            }
            // An option with a value consumed the rest of the cluster.
            if matches!(flag, 'u' | 'D' | 'p' | 'C' | 'T') {
                break;
            }
        }
    }
    let mut operands = args[index.min(args.len())..].iter();
    for operand in operands.by_ref() {
        match operand.split_once('=') {
            Some((name, value)) if is_variable_name(name) => {
                run.assignments.push((name.to_owned(), value.to_owned()));
            }
            _ => {
                run.command.push(operand.clone());
                break;
            }
        }
    }
    run.command.extend(operands.cloned());
    if let Some(action) = action {
        return if run.command.is_empty() {
            Ok(action)
        } else {
            Err(UsageError(USAGE.to_owned()))
        };
    }
    if run.login && run.shell {
        return Err(UsageError(
            "you may not specify both the -i and -s options".into(),
        ));
    }
    if run.command.is_empty() && !run.login && !run.shell {
        return Err(UsageError(USAGE.to_owned()));
    }
    Ok(Action::Run(run))
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Joins a command for `shell -c` the way sudo does: every character but letters, digits, `_`,
/// `-` and `$` is backslash-escaped, so each argument stays one word.
pub(crate) fn shell_join(command: &[String]) -> String {
    let mut joined = String::new();
    for (i, arg) in command.iter().enumerate() {
        if i > 0 {
            joined.push(' ');
        }
        for c in arg.chars() {
            if !(c.is_alphanumeric() || matches!(c, '_' | '-' | '$')) {
                joined.push('\\');
            }
            joined.push(c);
        }
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::{Action, Run, parse, shell_join};

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    fn run(line: &str) -> Run {
        match parse(&args(line)) {
            Ok(Action::Run(run)) => run,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn options_values_and_command() {
        let r = run("-n -u nobody id -u");
        assert_eq!(r.user.as_deref(), Some("nobody"));
        assert_eq!(r.command, args("id -u"));

        let r = run("-nEunobody -- ls -l");
        assert!(r.preserve_env);
        assert_eq!(r.user.as_deref(), Some("nobody"));
        assert_eq!(r.command, args("ls -l"));

        let r = run("--user=root --preserve-env=A,B FOO=1 BAR=x=y env FOO=2");
        assert_eq!(r.preserve, args("A B"));
        assert_eq!(
            r.assignments,
            vec![("FOO".into(), "1".into()), ("BAR".into(), "x=y".into())]
        );
        assert_eq!(
            r.command,
            args("env FOO=2"),
            "assignments stop at the command"
        );

        let r = run("-i");
        assert!(r.login && r.command.is_empty());
        let r = run("-D /tmp -s echo hi");
        assert_eq!(r.chdir.as_deref(), Some("/tmp"));
        assert!(r.shell);
    }

    #[test]
    fn actions_and_refusals() {
        assert_eq!(parse(&args("-l")), Ok(Action::List));
        assert_eq!(parse(&args("-v")), Ok(Action::NoOp));
        assert_eq!(parse(&args("-k")), Ok(Action::NoOp));
        assert_eq!(parse(&args("-V")), Ok(Action::Version));
        assert_eq!(parse(&args("--help")), Ok(Action::Help));
        for bad in [
            "",
            "-u",
            "-x true",
            "-g wheel true",
            "-i -s",
            "--bogus true",
            "-l id",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn shell_join_keeps_words() {
        let command = vec!["echo".to_owned(), "a b".to_owned(), "$HOME;x".to_owned()];
        assert_eq!(shell_join(&command), r"echo a\ b $HOME\;x");
    }
}
