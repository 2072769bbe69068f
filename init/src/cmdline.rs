//! Kernel command line parsing: `/proc/cmdline` into words, and the `cairn.*` options.
//!
//! The kernel splits its command line on spaces, honouring double quotes; init does the same so
//! that `cairn.hostname="edge box"` is one value. Unknown `cairn.*` keys and bad values are
//! reported as warnings (the boot never stops for them) and the defaults are kept.

use std::fmt;

/// One `key[=value]` word of the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The key, e.g. `console` or `cairn.net`.
    pub key: String,
    /// The value after the first `=`, with surrounding quotes removed; `None` for a bare flag.
    pub value: Option<String>,
}

/// Splits a command line into parameters the way the kernel does (spaces separate words;
/// double quotes group; a quote may start mid-word as in `key="a b"`).
pub fn split(line: &str) -> Vec<Param> {
    let mut params = Vec::new();
    let mut word = String::new();
    let mut in_quotes = false;
    let mut has_word = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_word {
                    params.push(to_param(&word));
                    word.clear();
                    has_word = false;
                }
            }
            c => {
                word.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        params.push(to_param(&word));
    }
    params
}

fn to_param(word: &str) -> Param {
    match word.split_once('=') {
        Some((k, v)) => Param {
            key: k.to_string(),
            value: Some(v.to_string()),
        },
        None => Param {
            key: word.to_string(),
            value: None,
        },
    }
}

/// How the network is brought up, from the command line or the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// DHCPv4 on the first wired interface (the default).
    #[default]
    Dhcp,
    /// The address, gateway and resolvers given in the config file.
    Static,
    /// Loopback only.
    Off,
}

impl std::str::FromStr for NetMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dhcp" => Ok(NetMode::Dhcp),
            "static" => Ok(NetMode::Static),
            "off" => Ok(NetMode::Off),
            other => Err(format!(
                "unknown network mode {other:?} (dhcp, static or off)"
            )),
        }
    }
}

/// Log verbosity of init and of the appliance it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// The normal boot log.
    #[default]
    Info,
    /// Every step.
    Debug,
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "error" => Ok(LogLevel::Error),
            "warn" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            other => Err(format!(
                "unknown log level {other:?} (error, warn, info or debug)"
            )),
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        })
    }
}

/// The `cairn.*` options init understands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootOptions {
    /// `cairn.net=dhcp|static|off`: overrides the config file's network mode.
    pub net: Option<NetMode>,
    /// `cairn.log=error|warn|info|debug`.
    pub log: LogLevel,
    /// `cairn.data=LABEL`: GPT partition name of the data partition (default `CAIRN-DATA`).
    pub data_label: Option<String>,
    /// `cairn.hostname=NAME`: overrides the config file's hostname.
    pub hostname: Option<String>,
    /// `cairn.grow=0`: do not grow the data partition to fill the disk.
    pub no_grow: bool,
}

/// Parses the `cairn.*` options out of a command line; returns them with one warning per
/// unknown key or bad value.
pub fn boot_options(line: &str) -> (BootOptions, Vec<String>) {
    let mut opts = BootOptions::default();
    let mut warnings = Vec::new();
    for p in split(line) {
        let Some(name) = p.key.strip_prefix("cairn.") else {
            continue;
        };
        let value = p.value.as_deref();
        let mut bad = |why: String| warnings.push(format!("kernel command line {}: {why}", p.key));
        match (name, value) {
            ("net", Some(v)) => match v.parse() {
                Ok(m) => opts.net = Some(m),
                Err(e) => bad(e),
            },
            ("log", Some(v)) => match v.parse() {
                Ok(l) => opts.log = l,
                Err(e) => bad(e),
            },
            ("data", Some(v)) if valid_label(v) => opts.data_label = Some(v.to_string()),
            ("data", Some(v)) => bad(format!(
                "{v:?} is not a partition name (1-36 letters, digits, '-' or '_')"
            )),
            ("hostname", Some(v)) => match crate::config::validate_hostname(v) {
                Ok(()) => opts.hostname = Some(v.to_string()),
                Err(e) => bad(e),
            },
            ("grow", Some("0")) => opts.no_grow = true,
            ("grow", Some("1")) => opts.no_grow = false,
            ("grow", Some(v)) => bad(format!("{v:?} is not 0 or 1")),
            (_, None) => bad("needs a value (key=value)".to_string()),
            (other, Some(_)) => bad(format!("unknown option cairn.{other}")),
        }
    }
    (opts, warnings)
}

/// A GPT partition name init accepts from the command line.
fn valid_label(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 36
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_the_kernel() {
        let p = split(r#"console=ttyS0,115200  quiet cairn.hostname="edge box" x="a"b"#);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].key, "console");
        assert_eq!(p[0].value.as_deref(), Some("ttyS0,115200"));
        assert_eq!(p[1].value, None);
        assert_eq!(p[2].value.as_deref(), Some("edge box"));
        assert_eq!(p[3].value.as_deref(), Some("ab"));
    }

    #[test]
    fn unterminated_quote_takes_the_rest() {
        let p = split(r#"a="b c"#);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].value.as_deref(), Some("b c"));
    }

    #[test]
    fn reads_cairn_options() {
        let (o, w) =
            boot_options("quiet cairn.net=off cairn.log=debug cairn.data=MY-DATA cairn.grow=0");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(o.net, Some(NetMode::Off));
        assert_eq!(o.log, LogLevel::Debug);
        assert_eq!(o.data_label.as_deref(), Some("MY-DATA"));
        assert!(o.no_grow);
    }

    #[test]
    fn bad_values_warn_and_keep_defaults() {
        let (o, w) = boot_options(
            "cairn.net=wifi cairn.log cairn.bogus=1 cairn.data=../x cairn.hostname=-bad cairn.grow=yes",
        );
        assert_eq!(o, BootOptions::default());
        assert_eq!(w.len(), 6, "{w:?}");
        assert!(w[0].contains("cairn.net") && w[0].contains("wifi"));
        assert!(w[1].contains("needs a value"));
        assert!(w[2].contains("unknown option cairn.bogus"));
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        for s in [
            "",
            "\"",
            "=",
            "cairn.=",
            "cairn.net==",
            "\u{0}\u{fffd}",
            "a\"\"\"b c=\"d",
        ] {
            let _ = boot_options(s);
        }
    }
}
