//! The CLI for people: talks to Kiln's API with the key from `$KILN_HOME/env`.

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
