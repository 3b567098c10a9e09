//! `/health`, `/envs` and `/metrics`.

use crate::state::Envd;
use axum::{Json, extract::State, response::IntoResponse};
use envd_proto::host::{ENVD_VERSION, ENVD_VERSION_HEADER};
use http::StatusCode;
use serde::Serialize;
use std::{collections::BTreeMap, sync::Arc, sync::Mutex};

pub(super) async fn health() -> impl IntoResponse {
    (
        StatusCode::NO_CONTENT,
        [(ENVD_VERSION_HEADER, ENVD_VERSION)],
    )
}

pub(super) async fn envs(State(envd): State<Arc<Envd>>) -> Json<BTreeMap<String, String>> {
    Json(envd.defaults().env_vars.clone())
}

/// The body of `/metrics`, field for field as E2B's envd reports it.
#[derive(Serialize)]
pub(super) struct Metrics {
    ts: i64,
    cpu_count: usize,
    cpu_used_pct: f64,
    mem_total: u64,
    mem_used: u64,
    mem_cache: u64,
    mem_total_mib: u64,
    mem_used_mib: u64,
    disk_used: u64,
    disk_total: u64,
}

pub(super) async fn metrics(State(envd): State<Arc<Envd>>) -> Json<Metrics> {
    let memory = read_meminfo().unwrap_or_default();
    let (disk_total, disk_used) = nix::sys::statvfs::statvfs("/")
        .map(|s| {
            let block = s.fragment_size();
            (
                s.blocks() * block,
                s.blocks().saturating_sub(s.blocks_free()) * block,
            )
        })
        .unwrap_or_default();
    let mem_used = memory.total.saturating_sub(memory.available);
    Json(Metrics {
        ts: time::OffsetDateTime::now_utc().unix_timestamp(),
        cpu_count: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_used_pct: envd.cpu.used_pct(),
        mem_total: memory.total,
        mem_used,
        mem_cache: memory.cached,
        mem_total_mib: memory.total / (1024 * 1024),
        mem_used_mib: mem_used / (1024 * 1024),
        disk_used,
        disk_total,
    })
}

#[derive(Default)]
struct Memory {
    total: u64,
    available: u64,
    cached: u64,
}

fn read_meminfo() -> Option<Memory> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let mut memory = Memory::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(key), Some(kib)) = (
            fields.next(),
            fields.next().and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        match key {
            "MemTotal:" => memory.total = kib * 1024,
            "MemAvailable:" => memory.available = kib * 1024,
            "Cached:" => memory.cached = kib * 1024,
            _ => {}
        }
    }
    Some(memory)
}

/// CPU use between consecutive `/metrics` calls, from `/proc/stat`.
#[derive(Default)]
pub(crate) struct CpuSampler {
    last: Mutex<Option<(u64, u64)>>,
}

impl CpuSampler {
    fn used_pct(&self) -> f64 {
        let Some((busy, total)) = read_cpu_times() else {
            return 0.0;
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let previous = last.replace((busy, total));
        let (busy_delta, total_delta) = match previous {
            Some((prev_busy, prev_total)) if total > prev_total => {
                (busy - prev_busy.min(busy), total - prev_total)
            }
            // First call: the average since boot.
            _ => (busy, total.max(1)),
        };
        (busy_delta as f64 / total_delta as f64 * 10000.0).round() / 100.0
    }
}

fn read_cpu_times() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|line| line.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle + iowait
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}
