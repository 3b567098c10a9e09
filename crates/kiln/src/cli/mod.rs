//! The CLI for people: talks to Kiln's API with the key from `$KILN_HOME/env`.

pub(crate) mod registry;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Subcommand)]
pub(crate) enum SandboxCommand {
    /// Create a sandbox and print its id.
    Create {
        #[arg(long, default_value = "base")]
        template: String,
        /// Seconds until it expires.
        #[arg(long, default_value_t = 300)]
        timeout: i64,
    },
    /// List running sandboxes.
    List,
    /// Run a command in a sandbox: `kiln sandbox exec ID -- ls -la`.
    Exec {
        id: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Kill a sandbox.
    Kill { id: String },
}

#[derive(Subcommand)]
pub(crate) enum TemplateCommand {
    /// List templates.
    List,
    /// Build a template from a Dockerfile, showing its progress and log.
    Build {
        /// The Dockerfile (no build context: COPY/ADD need the SDK's Template().copy()).
        #[arg(short = 'f', long = "file", default_value = "Dockerfile")]
        dockerfile: PathBuf,
        /// The template's name (alias).
        #[arg(long)]
        name: String,
        #[arg(long)]
        cpu: Option<u32>,
        /// Memory in MiB.
        #[arg(long)]
        memory: Option<u32>,
        /// Command started in the template before its snapshot (default: the Dockerfile's CMD).
        #[arg(long)]
        start_cmd: Option<String>,
        /// Command that succeeds once the started command is ready.
        #[arg(long)]
        ready_cmd: Option<String>,
    },
    /// Delete a template.
    Delete { template: String },
}

struct Client {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Client {
    /// Settings from the environment (`E2B_API_URL`, `E2B_API_KEY`), else `$KILN_HOME/env`.
    fn from_env() -> anyhow::Result<Client> {
        let home =
            PathBuf::from(std::env::var("KILN_HOME").unwrap_or_else(|_| "/var/lib/kiln".into()));
        let file = std::fs::read_to_string(home.join("env")).unwrap_or_default();
        let from_file = |name: &str| {
            file.lines().find_map(|line| {
                line.strip_prefix(&format!("export {name}="))
                    .map(str::to_owned)
            })
        };
        let setting = |name: &str| std::env::var(name).ok().or_else(|| from_file(name));
        let url = setting("E2B_API_URL")
            .context("E2B_API_URL is not set and Kiln's env file is missing (is Kiln up?)")?;
        let key = setting("E2B_API_KEY")
            .context("E2B_API_KEY is not set and Kiln's env file is missing (is Kiln up?)")?;
        Ok(Client {
            http: reqwest::Client::new(),
            url,
            key,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("X-API-Key", &self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {}", self.url))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            anyhow::bail!("{status}: {message}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        })
    }
}

pub(crate) async fn sandbox(command: SandboxCommand) -> anyhow::Result<()> {
    let client = Client::from_env()?;
    match command {
        SandboxCommand::Create { template, timeout } => {
            let created = client
                .call(
                    reqwest::Method::POST,
                    "/sandboxes",
                    Some(json!({"templateID": template, "timeout": timeout})),
                )
                .await?;
            println!("{}", created["sandboxID"].as_str().unwrap_or_default());
        }
        SandboxCommand::List => {
            let listed = client
                .call(reqwest::Method::GET, "/v2/sandboxes", None)
                .await?;
            println!(
                "{:<22} {:<10} {:<26} ENDS",
                "SANDBOX", "TEMPLATE", "STARTED"
            );
            for sandbox in listed.as_array().into_iter().flatten() {
                println!(
                    "{:<22} {:<10} {:<26} {}",
                    sandbox["sandboxID"].as_str().unwrap_or_default(),
                    sandbox["alias"]
                        .as_str()
                        .or(sandbox["templateID"].as_str())
                        .unwrap_or_default(),
                    sandbox["startedAt"].as_str().unwrap_or_default(),
                    sandbox["endAt"].as_str().unwrap_or_default()
                );
            }
        }
        SandboxCommand::Exec { id, user, command } => {
            let (program, args) = command.split_first().context("no command given")?;
            let result = client
                .call(
                    reqwest::Method::POST,
                    &format!("/sandboxes/{id}/exec"),
                    Some(json!({"command": program, "args": args, "user": user})),
                )
                .await?;
            print!("{}", result["stdout"].as_str().unwrap_or_default());
            eprint!("{}", result["stderr"].as_str().unwrap_or_default());
            let code = result["exitCode"].as_i64().unwrap_or(1);
            if code != 0 {
                anyhow::bail!("command exited with {code}");
            }
        }
        SandboxCommand::Kill { id } => {
            client
                .call(reqwest::Method::DELETE, &format!("/sandboxes/{id}"), None)
                .await?;
            println!("killed {id}");
        }
    }
    Ok(())
}

pub(crate) async fn template(command: TemplateCommand) -> anyhow::Result<()> {
    let client = Client::from_env()?;
    match command {
        TemplateCommand::Build {
            dockerfile,
            name,
            cpu,
            memory,
            start_cmd,
            ready_cmd,
        } => {
            let text = std::fs::read_to_string(&dockerfile)
                .with_context(|| format!("reading {}", dockerfile.display()))?;
            build(&client, &text, &name, cpu, memory, start_cmd, ready_cmd).await?;
        }
        TemplateCommand::Delete { template } => {
            client
                .call(
                    reqwest::Method::DELETE,
                    &format!("/templates/{template}"),
                    None,
                )
                .await?;
            println!("deleted {template}");
        }
        TemplateCommand::List => {
            let templates = client
                .call(reqwest::Method::GET, "/templates", None)
                .await?;
            println!(
                "{:<16} {:<16} {:>4} {:>8}",
                "TEMPLATE", "ALIASES", "CPU", "MEMORY"
            );
            for t in templates.as_array().into_iter().flatten() {
                let aliases: Vec<&str> = t["aliases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{:<16} {:<16} {:>4} {:>6}MB",
                    t["templateID"].as_str().unwrap_or_default(),
                    aliases.join(","),
                    t["cpuCount"],
                    t["memoryMB"]
                );
            }
        }
    }
    Ok(())
}

/// Starts a v1 Dockerfile build and follows it: log lines as they come, a spinner with the
/// current step, and the failure reason at the end.
async fn build(
    client: &Client,
    dockerfile: &str,
    name: &str,
    cpu: Option<u32>,
    memory: Option<u32>,
    start_cmd: Option<String>,
    ready_cmd: Option<String>,
) -> anyhow::Result<()> {
    let requested = client
        .call(
            reqwest::Method::POST,
            "/templates",
            Some(json!({
                "dockerfile": dockerfile, "alias": name, "cpuCount": cpu, "memoryMB": memory,
                "startCmd": start_cmd, "readyCmd": ready_cmd,
            })),
        )
        .await?;
    let template_id = requested["templateID"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let build_id = requested["buildID"].as_str().unwrap_or_default().to_owned();
    client
        .call(
            reqwest::Method::POST,
            &format!("/templates/{template_id}/builds/{build_id}"),
            None,
        )
        .await?;
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    progress.enable_steady_tick(std::time::Duration::from_millis(120));
    progress.set_message(format!("building {name} ({template_id}, build {build_id})"));
    // A hidden bar (output is not a terminal) prints nothing: the log goes to stdout then.
    let say = |line: String| {
        if progress.is_hidden() {
            println!("{line}");
        } else {
            progress.println(line);
        }
    };
    let mut offset = 0;
    loop {
        let status = client
            .call(
                reqwest::Method::GET,
                &format!("/templates/{template_id}/builds/{build_id}/status?logsOffset={offset}"),
                None,
            )
            .await?;
        let entries = status["logEntries"].as_array().cloned().unwrap_or_default();
        offset += entries.len();
        for entry in &entries {
            let step = entry["step"]
                .as_str()
                .map(|s| format!("[{s}] "))
                .unwrap_or_default();
            say(format!(
                "{step}{}",
                entry["message"].as_str().unwrap_or_default()
            ));
            if !step.is_empty() {
                progress.set_message(format!("{name}: step {}", step.trim()));
            }
        }
        match status["status"].as_str() {
            Some("ready") if entries.is_empty() => {
                progress.finish_with_message(format!("{name} is ready ({template_id})"));
                return Ok(());
            }
            Some("error") if entries.is_empty() => {
                progress.abandon_with_message(format!("{name} failed"));
                let reason = &status["reason"];
                let step = reason["step"]
                    .as_str()
                    .map(|s| format!(" at step {s}"))
                    .unwrap_or_default();
                anyhow::bail!(
                    "build failed{step}: {}",
                    reason["message"].as_str().unwrap_or("unknown reason")
                );
            }
            _ if !entries.is_empty() => {}
            _ => tokio::time::sleep(std::time::Duration::from_millis(300)).await,
        }
    }
}
