//! guacd.conf, read when named with guacd's `-c FILE`: an INI-like file (`[section]`, `name = value`,
//! `#` comments). The sections and names guacr understands, as guacd:
//!
//! | section    | name                 | same as |
//! |------------|----------------------|---------|
//! | `[server]` | `bind_host`          | `-b`    |
//! | `[server]` | `bind_port`          | `-l`    |
//! | `[daemon]` | `pid_file`           | `-p`    |
//! | `[daemon]` | `log_level`          | `-L`    |
//! | `[ssl]`    | `server_certificate` | `-C`    |
//! | `[ssl]`    | `server_key`         | `-K`    |
//!
//! The file's values are turned into those flags and placed before the command line's own, so a flag given
//! on the command line wins (as in guacd). Anything else in the file is reported and ignored. This is not
//! guacr's own TOML configuration (`--config`).

use std::ffi::OsString;

/// The command line with `-c FILE`'s settings expanded into flags placed first.
pub fn expand_args(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(path) = conf_path(&args) else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (flags, ignored) = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for note in ignored {
        eprintln!("guacr: {}: {note}", path.display());
    }
    let mut out = Vec::with_capacity(args.len() + flags.len());
    let mut args = args.into_iter();
    out.extend(args.next()); // the program name
    out.extend(flags.into_iter().map(OsString::from));
    out.extend(args);
    Ok(out)
}

/// The value of `-c FILE`, `-cFILE`, `--guacd-conf FILE` or `--guacd-conf=FILE`.
fn conf_path(args: &[OsString]) -> Option<std::path::PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let arg = arg.to_str()?;
        if arg == "-c" || arg == "--guacd-conf" {
            return iter.next().map(Into::into);
        }
        if let Some(path) = arg.strip_prefix("--guacd-conf=") {
            return Some(path.into());
        }
        if let Some(path) = arg.strip_prefix("-c").filter(|p| !p.is_empty() && !arg.starts_with("--")) {
            return Some(path.into());
        }
    }
    None
}

/// The flags the file stands for, and notes about what was ignored.
pub fn parse(text: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let mut section = String::new();
    let mut flags = Vec::new();
    let mut ignored = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name.strip_suffix(']').ok_or_else(|| format!("line {}: unterminated section", number + 1))?;
            section = name.trim().to_ascii_lowercase();
            continue;
        }
        let (name, value) =
            line.split_once('=').ok_or_else(|| format!("line {}: expected name = value", number + 1))?;
        let (name, value) = (name.trim(), value.trim().trim_matches('"'));
        let flag = match (section.as_str(), name) {
            ("server", "bind_host") => "-b",
            ("server", "bind_port") => "-l",
            ("daemon", "pid_file") => "-p",
            ("daemon", "log_level") => "-L",
            ("ssl", "server_certificate") => "-C",
            ("ssl", "server_key") => "-K",
            _ => {
                ignored.push(format!("line {}: [{section}] {name} is not supported; ignored", number + 1));
                continue;
            }
        };
        flags.push(flag.to_string());
        flags.push(value.to_string());
    }
    Ok((flags, ignored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guacd_conf_sections_become_flags() {
        let text = "# guacd.conf\n[server]\nbind_host = 0.0.0.0\nbind_port = 4823\n\n[daemon]\npid_file = /run/guacd.pid\n\
                    log_level = debug\nfoo = bar\n[ssl]\nserver_certificate = /etc/c.pem # cert\nserver_key = \"/etc/k.pem\"\n";
        let (flags, ignored) = parse(text).unwrap();
        assert_eq!(
            flags,
            [
                "-b",
                "0.0.0.0",
                "-l",
                "4823",
                "-p",
                "/run/guacd.pid",
                "-L",
                "debug",
                "-C",
                "/etc/c.pem",
                "-K",
                "/etc/k.pem"
            ]
        );
        assert_eq!(ignored.len(), 1);
        assert!(parse("[server\n").is_err());
        assert!(parse("[server]\nbind_host\n").is_err());
    }

    #[test]
    fn command_line_flags_come_after_the_file() {
        let dir = std::env::temp_dir().join(format!("guacr-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("guacd.conf");
        std::fs::write(&file, "[server]\nbind_port = 4000\n").unwrap();
        let args: Vec<OsString> =
            ["guacr", "-f", "-c", file.to_str().unwrap(), "-l", "5000"].iter().map(OsString::from).collect();
        let expanded = expand_args(args).unwrap();
        let expanded: Vec<&str> = expanded.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(&expanded[..3], &["guacr", "-l", "4000"]);
        assert_eq!(expanded.last(), Some(&"5000"));
        let untouched: Vec<OsString> = ["guacr", "-f"].iter().map(OsString::from).collect();
        assert_eq!(expand_args(untouched.clone()).unwrap(), untouched);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
