//! The configuration file conventions `meshgate` and `edge-agent` share: one TOML file (or embedded defaults when
//! there is none), environment variables `MESHGATE_SECTION__KEY=value` overriding keys by path, and every problem
//! reported as the file, the dotted key and what is wrong.

use std::path::Path;

use serde::de::DeserializeOwned;

/// A configuration problem: the file, the key and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    /// The file (or `<defaults>`, or the environment variable).
    pub file: String,
    /// The dotted key path.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

/// Loads `path` (or `defaults`, a TOML text, when `None`), applies `MESHGATE_...` overrides from `env` (a double
/// underscore separates the path's keys; the value is read as TOML, else taken as a string; `MESHGATE_LOG` and
/// `MESHGATE_CONFIG` are not keys), deserializes it and checks it with `validate`, whose error is a key and a
/// problem.
pub fn load<T: DeserializeOwned>(
    path: Option<&Path>,
    defaults: &str,
    env: impl IntoIterator<Item = (String, String)>,
    validate: impl FnOnce(&T) -> Result<(), (String, String)>,
) -> Result<T, ConfigError> {
    let (file, mut table) = match path {
        Some(p) => {
            let name = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                file: name.clone(),
                key: "(file)".into(),
                problem: e.to_string(),
            })?;
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
                file: name.clone(),
                key: e.span().map_or_else(|| "(syntax)".into(), |s| line_of(&text, s.start)),
                problem: e.message().to_string(),
            })?;
            (name, Some(table))
        }
        None => ("<defaults>".to_string(), defaults.parse::<toml::Table>().ok()),
    };
    // Each override's dotted key and variable: an error on a key an override set names the variable.
    let mut overrides: Vec<(String, String)> = Vec::new();
    for (name, value) in env {
        let Some(path) = name.strip_prefix("MESHGATE_") else {
            continue;
        };
        if path.is_empty() || path == "LOG" || path == "CONFIG" {
            continue;
        }
        let table = table.get_or_insert_with(toml::Table::new);
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        apply_override(table, &keys, &value).map_err(|problem| ConfigError {
            file: format!("environment {name}"),
            key: keys.join("."),
            problem,
        })?;
        overrides.push((keys.join("."), name));
    }
    // Where a problem at `key` comes from: the variable that set it (or a table above it), else the file.
    let origin = |key: &str| {
        overrides
            .iter()
            .rev()
            .find(|(set, _)| key == set || key.starts_with(&format!("{set}.")) || key.starts_with(&format!("{set}[")))
            .map_or_else(
                || if overrides.is_empty() { file.clone() } else { format!("{file} (with MESHGATE_ overrides)") },
                |(_, name)| format!("environment {name}"),
            )
    };
    let config: T = serde_path_to_error::deserialize(table.unwrap_or_default()).map_err(|e| {
        let key = e.path().to_string();
        ConfigError { file: origin(&key), key, problem: e.inner().message().to_string() }
    })?;
    validate(&config).map_err(|(key, problem)| ConfigError { file: origin(&key), key, problem })?;
    Ok(config)
}

fn line_of(text: &str, offset: usize) -> String {
    let line = text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1;
    format!("line {line}")
}

fn apply_override(table: &mut toml::Table, keys: &[String], raw: &str) -> Result<(), String> {
    let Some((last, parents)) = keys.split_last() else {
        return Err("empty key".into());
    };
    let mut current = table;
    for key in parents {
        let entry = current.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry.as_table_mut().ok_or_else(|| format!("`{key}` is not a table"))?;
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    current.insert(last.clone(), value);
    Ok(())
}

/// A listening address as configured: `IP:PORT`, or `HOST:PORT` (`localhost:1883`) resolved when the file is
/// loaded, an IPv4 address preferred. For `#[serde(deserialize_with = "bind_addr")]`.
pub fn bind_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::net::SocketAddr, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    resolve_bind(&text).map_err(serde::de::Error::custom)
}

/// [`bind_addr`] for an optional key.
pub fn optional_bind_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let text = <Option<String> as serde::Deserialize>::deserialize(d)?;
    text.map(|t| resolve_bind(&t)).transpose().map_err(serde::de::Error::custom)
}

fn resolve_bind(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("`{text}` is not HOST:PORT or IP:PORT"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("`{text}` is not HOST:PORT or IP:PORT"));
    }
    let addrs: Vec<std::net::SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(text).map_err(|e| format!("cannot resolve `{host}`: {e}"))?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("`{host}` resolves to no address"))
}
