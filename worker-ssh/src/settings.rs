//! guacd 1.6's ssh parameters (names, defaults and value formats as guacd defines them) parsed into
//! [`Settings`]. Parameters the worker accepts but does not implement yet are listed in
//! [`Notes::unsupported`] so the supervisor can say so once.

use std::time::Duration;

use shm_proto::control::Params;
pub use worker_common::Notes;

use crate::palette::{ColorScheme, PaletteError};

/// guacd's default SSH port.
pub const DEFAULT_PORT: u16 = 22;
/// guacd's default font size in points.
pub const DEFAULT_FONT_SIZE: u32 = 12;
/// guacd's default scrollback, in rows.
pub const DEFAULT_SCROLLBACK: usize = 1000;
/// guacd's default connect timeout (`timeout`, seconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// guacd's `clipboard-buffer-size` minimum and default.
pub const MIN_CLIPBOARD: usize = 256 * 1024;
/// guacd's `clipboard-buffer-size` maximum.
pub const MAX_CLIPBOARD: usize = 50 * 1024 * 1024;
/// guacd's default terminal type.
pub const DEFAULT_TERMINAL_TYPE: &str = "linux";

/// Every ssh parameter guacd 1.6 knows, in guacd's order (must match supervisor/src/args/ssh.txt).
pub const GUACD_SSH_PARAMETERS: [&str; 45] = [
    "hostname",
    "host-key",
    "port",
    "timeout",
    "username",
    "password",
    "font-name",
    "font-size",
    "enable-sftp",
    "sftp-root-directory",
    "sftp-disable-download",
    "sftp-disable-upload",
    "private-key",
    "passphrase",
    "public-key",
    "color-scheme",
    "command",
    "typescript-path",
    "typescript-name",
    "create-typescript-path",
    "typescript-write-existing",
    "recording-path",
    "recording-name",
    "recording-exclude-output",
    "recording-exclude-mouse",
    "recording-include-keys",
    "recording-include-clipboard",
    "create-recording-path",
    "recording-write-existing",
    "read-only",
    "server-alive-interval",
    "backspace",
    "func-keys-and-keypad",
    "terminal-type",
    "scrollback",
    "locale",
    "timezone",
    "clipboard-buffer-size",
    "disable-copy",
    "disable-paste",
    "wol-send-packet",
    "wol-mac-addr",
    "wol-broadcast-addr",
    "wol-udp-port",
    "wol-wait-time",
];

/// Parameters that are accepted but have no effect yet (reported once as `Unsupported` when set).
/// `recording-*` and `typescript-*` are the supervisor's to act on (it writes both files).
const NOT_IMPLEMENTED: [&str; 1] = ["wol-send-packet"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("the hostname parameter is required")]
    NoHostname,
    #[error("bad value {value:?} for {name}")]
    BadValue { name: &'static str, value: String },
    #[error("color-scheme: {0}")]
    Palette(#[from] PaletteError),
}

/// What the worker was asked to do.
#[derive(Clone)]
pub struct Settings {
    pub hostname: String,
    pub port: u16,
    /// Known-hosts style entry (or entries) the server's key must match; `None`: any key is accepted.
    pub host_key: Option<String>,
    pub timeout: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    pub private_key: Option<String>,
    pub passphrase: Option<String>,
    pub command: Option<String>,
    pub font_size: u32,
    pub color_scheme: ColorScheme,
    pub terminal_type: String,
    pub scrollback: usize,
    pub backspace: u8,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    pub server_alive_interval: Option<Duration>,
    pub read_only: bool,
    pub disable_copy: bool,
    pub disable_paste: bool,
    pub clipboard_buffer_size: usize,
    /// `enable-sftp` with its `sftp-*` settings; `None` when SFTP is off.
    pub sftp: Option<crate::sftp::SftpSettings>,
    /// `typescript-path` is set: terminal output also goes to the supervisor, which writes the typescript.
    pub typescript: bool,
    /// `func-keys-and-keypad`: `vt100` (VT100 function keys and application keypad) or guacd's default
    /// `esc` (xterm's sequences).
    pub vt100_keys: bool,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("hostname", &self.hostname)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("private_key", &self.private_key.as_ref().map(|_| "<redacted>"))
            .field("command", &self.command)
            .field("terminal_type", &self.terminal_type)
            .finish_non_exhaustive()
    }
}

fn number<T: std::str::FromStr>(params: &Params, name: &'static str) -> Result<Option<T>, SettingsError> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| SettingsError::BadValue { name, value: v.into() }),
    }
}

impl Settings {
    pub fn from_params(params: &Params) -> Result<(Settings, Notes), SettingsError> {
        let mut notes = Notes::default();
        let hostname = params.get("hostname").ok_or(SettingsError::NoHostname)?.to_string();
        let port = number::<u16>(params, "port")?.unwrap_or(DEFAULT_PORT);
        let timeout = number::<u64>(params, "timeout")?.filter(|s| *s > 0).map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        let font_size =
            number::<u32>(params, "font-size")?.filter(|s| (1..=200).contains(s)).unwrap_or(DEFAULT_FONT_SIZE);
        let scrollback = number::<usize>(params, "scrollback")?.unwrap_or(DEFAULT_SCROLLBACK).min(100_000);
        let backspace = match number::<u32>(params, "backspace")? {
            None => 127,
            Some(b @ 0..=127) => b as u8,
            Some(b) => {
                notes.warnings.push(format!("backspace {b} is not an ASCII code; using 127"));
                127
            }
        };
        let server_alive_interval =
            number::<u64>(params, "server-alive-interval")?.filter(|s| *s > 0).map(Duration::from_secs);
        let clipboard_buffer_size = number::<usize>(params, "clipboard-buffer-size")?
            .unwrap_or(MIN_CLIPBOARD)
            .clamp(MIN_CLIPBOARD, MAX_CLIPBOARD);
        let color_scheme = match params.get("color-scheme") {
            None => ColorScheme::default(),
            Some(spec) => ColorScheme::parse(spec)?,
        };
        if let Some(font) = params.get("font-name") {
            if !font.to_ascii_lowercase().contains("mono") && font != "monospace" {
                notes.warnings.push(format!("font-name {font:?}: only the embedded DejaVu Sans Mono is available"));
            }
        }
        for name in NOT_IMPLEMENTED {
            if params.get(name).is_some_and(|v| v != "false") {
                notes.unsupported.push(name);
            }
        }
        let owned = |name: &str| params.get(name).map(str::to_string);
        let settings = Settings {
            hostname,
            port,
            host_key: owned("host-key"),
            timeout,
            username: owned("username"),
            password: owned("password"),
            private_key: owned("private-key"),
            passphrase: owned("passphrase"),
            command: owned("command"),
            font_size,
            color_scheme,
            terminal_type: owned("terminal-type").unwrap_or_else(|| DEFAULT_TERMINAL_TYPE.into()),
            scrollback,
            backspace,
            locale: owned("locale"),
            timezone: owned("timezone"),
            server_alive_interval,
            read_only: params.flag("read-only"),
            disable_copy: params.flag("disable-copy"),
            disable_paste: params.flag("disable-paste"),
            clipboard_buffer_size,
            typescript: params.get("typescript-path").is_some(),
            vt100_keys: match params.get("func-keys-and-keypad") {
                None | Some("esc") => false,
                Some("vt100") => true,
                Some(other) => {
                    notes.warnings.push(format!("func-keys-and-keypad {other:?} is not esc or vt100; using esc"));
                    false
                }
            },
            sftp: params.flag("enable-sftp").then(|| crate::sftp::SftpSettings {
                root: owned("sftp-root-directory").unwrap_or_else(|| "/".into()),
                disable_download: params.flag("sftp-disable-download"),
                disable_upload: params.flag("sftp-disable-upload"),
            }),
        };
        Ok((settings, notes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn defaults_follow_guacd() {
        let (s, notes) = Settings::from_params(&params(&[("hostname", "h")])).unwrap();
        assert_eq!(s.port, 22);
        assert_eq!(s.font_size, 12);
        assert_eq!(s.scrollback, 1000);
        assert_eq!(s.backspace, 127);
        assert_eq!(s.terminal_type, "linux");
        assert_eq!(s.clipboard_buffer_size, 256 * 1024);
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert!(!s.read_only && !s.disable_copy && !s.disable_paste);
        assert_eq!(notes, Notes::default());
    }

    #[test]
    fn values_and_unsupported() {
        let p = params(&[
            ("hostname", "h"),
            ("port", "2222"),
            ("backspace", "8"),
            ("read-only", "true"),
            ("enable-sftp", "true"),
            ("wol-send-packet", "true"),
            ("server-alive-interval", "5"),
        ]);
        let (s, notes) = Settings::from_params(&p).unwrap();
        assert_eq!((s.port, s.backspace, s.read_only), (2222, 8, true));
        assert_eq!(s.server_alive_interval, Some(Duration::from_secs(5)));
        assert_eq!(notes.unsupported, vec!["wol-send-packet"]);
        let sftp = s.sftp.expect("enable-sftp");
        assert_eq!((sftp.root.as_str(), sftp.disable_download, sftp.disable_upload), ("/", false, false));
        assert!(matches!(
            Settings::from_params(&params(&[("hostname", "h"), ("port", "x")])),
            Err(SettingsError::BadValue { name: "port", .. })
        ));
        assert_eq!(Settings::from_params(&params(&[])).err(), Some(SettingsError::NoHostname));
    }

    #[test]
    fn list_matches_the_supervisor() {
        let file: Vec<&str> = include_str!("../../supervisor/src/args/ssh.txt").lines().collect();
        assert_eq!(file, GUACD_SSH_PARAMETERS);
        for name in NOT_IMPLEMENTED {
            assert!(GUACD_SSH_PARAMETERS.contains(&name));
        }
    }
}
