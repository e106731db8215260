//! `--config FILE`: a TOML file whose keys are the long flag names of the command
//! line (`listen = "0.0.0.0:8889"`, `login-timeout = 30`, ...).
//!
//! The file is turned into flags that go before those of the command line, and the
//! command line parses with "the last occurrence wins": a flag given on the command
//! line overrides the file, and every value goes through the same parser and checks
//! as if typed (as `--key=value`, so that a value starting with `-` is the key's). A key that is no flag, a value of the wrong kind or a file that does
//! not parse is an error that names the file and the key.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Why the config file gives no flags; the text names the file (and the key).
#[derive(Debug)]
pub enum ConfigError {
    Read(PathBuf, std::io::Error),
    /// Not TOML.
    Parse(PathBuf, toml::de::Error),
    /// A key that cannot be taken, and why.
    Key(PathBuf, String, KeyError),
}

/// What is wrong with one key of the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// `config` itself.
    NamesAnother,
    /// No long flag of that name.
    NoSuchSetting,
    /// A value of this TOML type (a table, a datetime, ...).
    WrongKind(&'static str),
    /// A value for a switch that is not a boolean.
    NotTrueOrFalse,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Read(path, e) => {
                write!(f, "cannot read the config file {}: {e}", path.display())
            }
            // The parser quotes the line at fault, which may hold a Redis URL.
            ConfigError::Parse(path, e) => {
                write!(
                    f,
                    "{}: {}",
                    path.display(),
                    crate::redact::text(&e.to_string())
                )
            }
            ConfigError::Key(path, key, e) => write!(f, "{}: `{key}`: {e}", path.display()),
        }
    }
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::NamesAnother => f.write_str("a config file cannot name another"),
            KeyError::NoSuchSetting => f.write_str(
                "no such setting (keys are the long flag names of `chat-server --help`)",
            ),
            KeyError::WrongKind(kind) => write!(f, "a {kind} is not a value for it"),
            KeyError::NotTrueOrFalse => f.write_str("give it true or false"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read(_, e) => Some(e),
            ConfigError::Parse(_, e) => Some(e),
            ConfigError::Key(..) => None,
        }
    }
}

/// The `--config` value in `args` (program name first), if any.
pub fn config_path(args: &[OsString]) -> Option<OsString> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--" {
            return None;
        }
        if a == "--config" {
            return it.next().cloned();
        }
        if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            return Some(v.into());
        }
    }
    None
}

/// Flags from the TOML text `text` (read from `file`, named in errors), for the
/// top-level arguments of `cmd`.
pub fn flags_from_toml(
    text: &str,
    file: &Path,
    cmd: &clap::Command,
) -> Result<Vec<OsString>, ConfigError> {
    let at = |key: &str, e: KeyError| ConfigError::Key(file.to_path_buf(), key.to_string(), e);
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse(file.to_path_buf(), e))?;
    let mut out = Vec::new();
    for (key, value) in table {
        if key == "config" {
            return Err(at(&key, KeyError::NamesAnother));
        }
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
        else {
            return Err(at(&key, KeyError::NoSuchSetting));
        };
        let takes_value = arg.get_action().takes_values();
        let flag = format!("--{key}");
        let values = match value {
            toml::Value::Array(items) => items,
            one => vec![one],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) if !takes_value => {
                    if b {
                        out.push(OsString::from(&flag));
                    }
                    continue;
                }
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(at(&key, KeyError::WrongKind(other.type_str())));
                }
            };
            if !takes_value {
                return Err(at(&key, KeyError::NotTrueOrFalse));
            }
            // `--key=value`: a value that starts with `-` is the key's, never a flag.
            out.push(OsString::from(format!("{flag}={text}")));
        }
    }
    Ok(out)
}

/// `args` with the flags of the `--config` file, if one is named, put right after
/// the program name.
pub fn expand(args: Vec<OsString>, cmd: &clap::Command) -> Result<Vec<OsString>, ConfigError> {
    let Some(path) = config_path(&args) else {
        return Ok(args);
    };
    let path = Path::new(&path);
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
    let flags = flags_from_toml(&text, path, cmd)?;
    let mut out = Vec::with_capacity(args.len() + flags.len());
    let mut it = args.into_iter();
    out.extend(it.next());
    out.extend(flags);
    out.extend(it);
    Ok(out)
}

/// When clap refused `args` (as [`expand`] made them) for a value that came from the
/// `--config` file, the sentence that names the file and the key: clap's own text
/// names only the flag, as if it had been typed.
pub fn blame(err: &clap::Error, args: &[OsString], cmd: &clap::Command) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let path = config_path(args)?;
    let path = Path::new(&path);
    let text = std::fs::read_to_string(path).ok()?;
    let flags = flags_from_toml(&text, path, cmd).ok()?;
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let Some(ContextValue::String(value)) = err.get(ContextKind::InvalidValue) else {
        return None;
    };
    // "--login-timeout <SECS>" names the flag `login-timeout`.
    let key = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    let from_file = format!("--{key}={value}");
    if !flags.iter().any(|f| *f == *from_file) {
        return None;
    }
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let why = first.strip_prefix("error: ").unwrap_or(first);
    Some(format!(
        "{}: `{key}`: {}",
        path.display(),
        crate::redact::text(why)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn cmd() -> Command {
        Command::new("t")
            .args_override_self(true)
            .arg(Arg::new("listen").long("listen").default_value("0.0.0.0:1"))
            .arg(
                Arg::new("login-timeout")
                    .long("login-timeout")
                    .value_parser(clap::value_parser!(u64)),
            )
            .arg(
                Arg::new("verbose")
                    .long("verbose")
                    .action(ArgAction::SetTrue),
            )
            .arg(Arg::new("config").long("config"))
    }

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_file_gives_flags_and_the_command_line_overrides_them() {
        let f = Path::new("c.toml");
        let flags = flags_from_toml(
            "listen = \"127.0.0.1:5\"\nlogin-timeout = 7\nverbose = true\n",
            f,
            &cmd(),
        )
        .unwrap();
        assert_eq!(
            flags,
            os(&["--listen=127.0.0.1:5", "--login-timeout=7", "--verbose"])
        );
        let mut argv = os(&["t"]);
        argv.extend(flags);
        argv.extend(os(&["--login-timeout", "9"]));
        let m = cmd().try_get_matches_from(argv).unwrap();
        assert_eq!(m.get_one::<String>("listen").unwrap(), "127.0.0.1:5");
        assert_eq!(*m.get_one::<u64>("login-timeout").unwrap(), 9);
        assert!(m.get_flag("verbose"));
    }

    #[test]
    fn a_syntax_error_does_not_quote_a_password() {
        let text = "listen = \"redis://:s3cret@h:1/0\" trailing\n";
        let e = flags_from_toml(text, Path::new("c.toml"), &cmd())
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis://:***@h:1/0"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn refusals_read_as_before() {
        let f = Path::new("c.toml");
        let err = |text: &str| flags_from_toml(text, f, &cmd()).unwrap_err().to_string();
        assert_eq!(
            err("config = \"x\""),
            "c.toml: `config`: a config file cannot name another"
        );
        assert_eq!(
            err("lisen = 1"),
            "c.toml: `lisen`: no such setting (keys are the long flag names of \
             `chat-server --help`)"
        );
        assert_eq!(
            err("listen = { a = 1 }"),
            "c.toml: `listen`: a table is not a value for it"
        );
        assert_eq!(
            err("verbose = 3"),
            "c.toml: `verbose`: give it true or false"
        );
        assert!(err("listen = ").starts_with("c.toml: "));
        let missing = ["t", "--config", "/nonexistent/c.toml"];
        let e = expand(os(&missing), &cmd()).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read the config file /nonexistent/c.toml: "),
            "{e}"
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_key() {
        let f = Path::new("c.toml");
        let e = flags_from_toml("lisen = \"x\"", f, &cmd())
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml: `lisen`: no such setting"), "{e}");
        let e = flags_from_toml("verbose = 3", f, &cmd())
            .unwrap_err()
            .to_string();
        assert!(e.contains("true or false"), "{e}");
        let e = flags_from_toml("listen = { a = 1 }", f, &cmd())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`listen`"), "{e}");
        assert!(flags_from_toml("listen = ", f, &cmd()).is_err());
        assert!(flags_from_toml("config = \"x\"", f, &cmd()).is_err());
        // False leaves a switch off.
        assert!(
            flags_from_toml("verbose = false", f, &cmd())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_value_that_looks_like_a_flag_is_taken_as_the_keys_value() {
        let f = Path::new("c.toml");
        let parse = |text: &str| {
            let mut argv = os(&["t"]);
            argv.extend(flags_from_toml(text, f, &cmd()).unwrap());
            cmd().try_get_matches_from(argv)
        };
        // Refused by the key's own parser, naming the key.
        let e = parse("login-timeout = -5").unwrap_err().to_string();
        assert!(e.contains("'-5'") && e.contains("--login-timeout"), "{e}");
        // A string is the key's value, never another flag.
        let m = parse("listen = \"--verbose\"").unwrap();
        assert_eq!(m.get_one::<String>("listen").unwrap(), "--verbose");
        assert!(!m.get_flag("verbose"));
    }

    #[test]
    fn the_config_flag_is_found_in_either_spelling() {
        assert_eq!(config_path(&os(&["t", "--config", "a"])), Some("a".into()));
        assert_eq!(
            config_path(&os(&["t", "x", "--config=b"])),
            Some("b".into())
        );
        assert_eq!(config_path(&os(&["t", "--", "--config", "c"])), None);
        assert_eq!(config_path(&os(&["t"])), None);
    }
}
