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
    let mut overridden = false;
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
        overridden = true;
    }
    let config: T = serde_path_to_error::deserialize(table.unwrap_or_default()).map_err(|e| ConfigError {
        file: if overridden { format!("{file} (with MESHGATE_ overrides)") } else { file.clone() },
        key: e.path().to_string(),
        problem: e.inner().message().to_string(),
    })?;
    validate(&config).map_err(|(key, problem)| ConfigError { file, key, problem })?;
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
