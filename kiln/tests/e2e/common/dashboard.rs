//! The Grafana dashboard the chart ships, and the metric names its queries use:
//! shared by the chart's tests and the test that scrapes a real farm's /metrics.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// The chart's dashboard file.
pub fn dashboard_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/kiln/dashboards/kiln.json")
}

/// The metric names a Prometheus text exposition holds (each sample's name).
pub fn scraped_metric_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The Grafana dashboard shipped in the chart, parsed.
pub fn dashboard() -> Value {
    let text = std::fs::read_to_string(dashboard_file()).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every panel of a Grafana dashboard, the panels nested in rows included.
pub fn dashboard_panels(json: &Value) -> Vec<&Value> {
    let mut panels = Vec::new();
    let mut stack: Vec<&Value> = json["panels"].as_array().into_iter().flatten().collect();
    while let Some(panel) = stack.pop() {
        stack.extend(panel["panels"].as_array().into_iter().flatten());
        panels.push(panel);
    }
    panels
}

/// The metric names a PromQL query names: its tokens `kiln_[a-z0-9_]+` that start a
/// word (not the tail of a longer name).
pub fn metric_names_in(query: &str) -> Vec<String> {
    let bytes = query.as_bytes();
    let mut names = Vec::new();
    let mut at = 0;
    while let Some(found) = query[at..].find("kiln_") {
        let start = at + found;
        let mut end = start + "kiln_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_')
        {
            end += 1;
        }
        let in_a_word = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || b"_:".contains(&bytes[start - 1]));
        if !in_a_word && end > start + "kiln_".len() {
            names.push(query[start..end].to_owned());
        }
        at = end;
    }
    names
}

/// Every metric name (a token `kiln_[a-z0-9_]+`) a Grafana dashboard's queries use:
/// each panel target's `expr` (panels nested in rows included) and each templating
/// variable's query. Histogram series keep their suffix (`_bucket`, `_sum`, `_count`).
pub fn dashboard_metric_names(json: &Value) -> BTreeSet<String> {
    let mut queries: Vec<&str> = Vec::new();
    for panel in dashboard_panels(json) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.extend(target["expr"].as_str());
        }
    }
    for variable in json["templating"]["list"].as_array().into_iter().flatten() {
        let query = &variable["query"];
        queries.extend(query.as_str().or_else(|| query["query"].as_str()));
    }
    queries.into_iter().flat_map(metric_names_in).collect()
}
