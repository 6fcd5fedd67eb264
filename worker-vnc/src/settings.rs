//! guacd's VNC connection parameters (reference/guacd-args/vnc.txt) turned into our settings.

use shm_proto::control::Params;
pub use worker_common::Notes;

use crate::clipboard::ClipboardEncoding;
use crate::rfb::{encoding, ClientConfig, Secret};

/// Every parameter guacd 1.6 accepts for VNC, in its order.
pub const PARAMETERS: [&str; 53] = [
    "hostname",
    "port",
    "read-only",
    "disable-display-resize",
    "encodings",
    "username",
    "password",
    "swap-red-blue",
    "color-depth",
    "cursor",
    "autoretry",
    "clipboard-encoding",
    "dest-host",
    "dest-port",
    "enable-audio",
    "audio-servername",
    "reverse-connect",
    "listen-timeout",
    "enable-sftp",
    "sftp-hostname",
    "sftp-host-key",
    "sftp-port",
    "sftp-timeout",
    "sftp-username",
    "sftp-password",
    "sftp-private-key",
    "sftp-passphrase",
    "sftp-public-key",
    "sftp-directory",
    "sftp-root-directory",
    "sftp-server-alive-interval",
    "sftp-disable-download",
    "sftp-disable-upload",
    "recording-path",
    "recording-name",
    "recording-exclude-output",
    "recording-exclude-mouse",
    "recording-include-keys",
    "recording-include-clipboard",
    "create-recording-path",
    "recording-write-existing",
    "clipboard-buffer-size",
    "disable-copy",
    "disable-paste",
    "disable-server-input",
    "wol-send-packet",
    "wol-mac-addr",
    "wol-broadcast-addr",
    "wol-udp-port",
    "wol-wait-time",
    "force-lossless",
    "compress-level",
    "quality-level",
];

/// Parameters this worker implements (color-depth only for 24 and 32).
const IMPLEMENTED: [&str; 18] = [
    "hostname",
    "port",
    "read-only",
    "disable-display-resize",
    "encodings",
    "username",
    "password",
    "swap-red-blue",
    "color-depth",
    "cursor",
    "autoretry",
    "clipboard-encoding",
    "clipboard-buffer-size",
    "disable-copy",
    "disable-paste",
    "force-lossless",
    "compress-level",
    "quality-level",
];

/// Boolean parameters: only "true" means the feature was asked for.
const FLAGS: [&str; 13] = [
    "enable-audio",
    "reverse-connect",
    "enable-sftp",
    "sftp-disable-download",
    "sftp-disable-upload",
    "recording-exclude-output",
    "recording-exclude-mouse",
    "recording-include-keys",
    "recording-include-clipboard",
    "create-recording-path",
    "recording-write-existing",
    "disable-server-input",
    "wol-send-packet",
];

/// guacd's clipboard bounds: at least and by default 256 KiB, at most 50 MiB.
pub const CLIPBOARD_MIN: usize = 256 * 1024;
pub const CLIPBOARD_MAX: usize = 50 * 1024 * 1024;
pub const DEFAULT_PORT: u16 = 5900;

#[derive(Debug, Clone)]
pub struct Settings {
    pub hostname: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub read_only: bool,
    /// Ask the server to follow the client's display size (SetDesktopSize).
    pub resize: bool,
    /// Pixel encodings and pseudo-encodings to advertise, in order.
    pub encodings: Vec<i32>,
    pub swap_red_blue: bool,
    pub disable_copy: bool,
    pub disable_paste: bool,
    pub clipboard_encoding: ClipboardEncoding,
    pub clipboard_buffer_size: usize,
    /// Extra connection attempts after the first, 1 s apart.
    pub autoretry: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("no hostname given")]
    NoHostname,
    #[error("invalid port {0:?}")]
    BadPort(String),
}

impl Settings {
    pub fn from_params(params: &Params) -> Result<(Settings, Notes), SettingsError> {
        let mut notes = Notes::default();
        let hostname = params.get("hostname").ok_or(SettingsError::NoHostname)?.to_string();
        let port = match params.get("port") {
            None => DEFAULT_PORT,
            Some(p) => p.trim().parse().ok().filter(|&p| p != 0).ok_or_else(|| SettingsError::BadPort(p.into()))?,
        };

        for name in PARAMETERS {
            let set = if FLAGS.contains(&name) { params.flag(name) } else { params.get(name).is_some() };
            if set && !IMPLEMENTED.contains(&name) {
                notes.unsupported.push(name);
            }
        }
        if let Some(depth) = params.get("color-depth") {
            if depth != "24" && depth != "32" {
                notes.unsupported.push("color-depth");
                notes.warnings.push(format!("color-depth {depth} is not supported; using 24-bit true colour"));
            }
        }

        let mut encodings = pixel_encodings(params.get("encodings"), &mut notes);
        if params.get("cursor") != Some("remote") {
            encodings.push(encoding::CURSOR);
        }
        encodings.extend([encoding::EXTENDED_DESKTOP_SIZE, encoding::DESKTOP_SIZE, encoding::LAST_RECT]);
        if let Some(level) = level(params, "compress-level", &mut notes) {
            encodings.push(encoding::COMPRESS_LEVEL_0 + level);
        }
        if let Some(level) = level(params, "quality-level", &mut notes) {
            if params.flag("force-lossless") {
                notes.warnings.push("quality-level ignored: force-lossless is set".into());
            } else {
                encodings.push(encoding::QUALITY_LEVEL_0 + level);
            }
        }

        let clipboard_encoding = match params.get("clipboard-encoding") {
            None => ClipboardEncoding::default(),
            Some(name) => ClipboardEncoding::from_name(name).unwrap_or_else(|| {
                notes.warnings.push(format!("unknown clipboard-encoding {name:?}; using ISO8859-1"));
                ClipboardEncoding::default()
            }),
        };
        let clipboard_buffer_size = match params.get("clipboard-buffer-size") {
            None => CLIPBOARD_MIN,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) => n.clamp(CLIPBOARD_MIN, CLIPBOARD_MAX),
                Err(_) => {
                    notes.warnings.push(format!("invalid clipboard-buffer-size {v:?}; using 256 KiB"));
                    CLIPBOARD_MIN
                }
            },
        };
        let autoretry = match params.get("autoretry") {
            None => 0,
            Some(v) => v.trim().parse::<u32>().unwrap_or_else(|_| {
                notes.warnings.push(format!("invalid autoretry {v:?}; not retrying"));
                0
            }),
        };
        let settings = Settings {
            hostname,
            port,
            username: params.get("username").map(str::to_string),
            password: params.get("password").map(|p| Secret(p.to_string())),
            read_only: params.flag("read-only"),
            resize: !params.flag("disable-display-resize"),
            encodings,
            swap_red_blue: params.flag("swap-red-blue"),
            disable_copy: params.flag("disable-copy"),
            disable_paste: params.flag("disable-paste"),
            clipboard_encoding,
            clipboard_buffer_size,
            autoretry,
        };
        Ok((settings, notes))
    }

    /// The RFB client's configuration for a surface of at most `max_width` × `max_height`.
    pub fn client_config(&self, max_width: u32, max_height: u32) -> ClientConfig {
        ClientConfig {
            username: self.username.clone(),
            password: self.password.clone(),
            encodings: self.encodings.clone(),
            swap_red_blue: self.swap_red_blue,
            max_width,
            max_height,
            max_cut_text: self.clipboard_buffer_size,
        }
    }
}

/// guacd's (libvncclient's) encoding names → the pixel encodings we decode, in the given order.
fn pixel_encodings(list: Option<&str>, notes: &mut Notes) -> Vec<i32> {
    let Some(list) = list else {
        return vec![encoding::TIGHT, encoding::ZRLE, encoding::COPY_RECT, encoding::RAW];
    };
    let mut out = Vec::new();
    for name in list.split_whitespace() {
        let code = match name.to_ascii_lowercase().as_str() {
            "raw" => encoding::RAW,
            "copyrect" => encoding::COPY_RECT,
            "tight" => encoding::TIGHT,
            "zrle" => encoding::ZRLE,
            _ => {
                notes.warnings.push(format!("encoding {name:?} is not supported; ignored"));
                continue;
            }
        };
        if !out.contains(&code) {
            out.push(code);
        }
    }
    if !out.iter().any(|&e| e != encoding::COPY_RECT) {
        // Every server supports Raw; a list without a pixel encoding would leave nothing to draw with.
        out.push(encoding::RAW);
    }
    out
}

fn level(params: &Params, name: &'static str, notes: &mut Notes) -> Option<i32> {
    let value = params.get(name)?;
    match value.trim().parse::<i32>() {
        Ok(n @ 0..=9) => Some(n),
        _ => {
            notes.warnings.push(format!("{name} {value:?} is outside 0..9; ignored"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect())
    }

    #[test]
    fn defaults() {
        let (s, notes) = Settings::from_params(&params(&[("hostname", "h"), ("port", "")])).unwrap();
        assert_eq!((s.hostname.as_str(), s.port), ("h", 5900));
        assert_eq!(
            s.encodings,
            [
                7,
                16,
                1,
                0,
                encoding::CURSOR,
                encoding::EXTENDED_DESKTOP_SIZE,
                encoding::DESKTOP_SIZE,
                encoding::LAST_RECT
            ]
        );
        assert!(s.resize && !s.read_only && s.password.is_none());
        assert_eq!(s.clipboard_buffer_size, CLIPBOARD_MIN);
        assert!(notes.unsupported.is_empty() && notes.warnings.is_empty());
    }

    #[test]
    fn every_parameter_is_known_and_implemented_ones_are_not_reported() {
        assert_eq!(PARAMETERS.len(), 53);
        let all: Vec<(&str, &str)> = PARAMETERS
            .iter()
            .map(|&n| {
                (
                    n,
                    if n == "port" {
                        "5901"
                    } else if n == "color-depth" {
                        "24"
                    } else {
                        "true"
                    },
                )
            })
            .collect();
        let (_, notes) = Settings::from_params(&params(&all)).unwrap();
        for name in &notes.unsupported {
            assert!(!IMPLEMENTED.contains(name), "{name}");
        }
        assert_eq!(notes.unsupported.len(), 53 - IMPLEMENTED.len());
        assert!(notes.unsupported.contains(&"disable-server-input"));
        // A flag set to "false" is not a request.
        let (_, notes) = Settings::from_params(&params(&[("hostname", "h"), ("enable-sftp", "false")])).unwrap();
        assert!(notes.unsupported.is_empty());
    }

    #[test]
    fn explicit_values() {
        let (s, notes) = Settings::from_params(&params(&[
            ("hostname", "h"),
            ("port", "5902"),
            ("encodings", "zrle hextile raw zrle"),
            ("cursor", "remote"),
            ("color-depth", "16"),
            ("compress-level", "3"),
            ("quality-level", "11"),
            ("clipboard-buffer-size", "999999999"),
            ("clipboard-encoding", "UTF-8"),
            ("autoretry", "3"),
            ("disable-display-resize", "true"),
        ]))
        .unwrap();
        assert_eq!(s.port, 5902);
        assert_eq!(
            s.encodings,
            [16, 0, encoding::EXTENDED_DESKTOP_SIZE, encoding::DESKTOP_SIZE, encoding::LAST_RECT, -253]
        );
        assert_eq!(notes.unsupported, ["color-depth"]);
        assert_eq!(notes.warnings.len(), 3, "{:?}", notes.warnings);
        assert_eq!(s.clipboard_buffer_size, CLIPBOARD_MAX);
        assert_eq!(s.clipboard_encoding, ClipboardEncoding::Utf8);
        assert_eq!(s.autoretry, 3);
        assert!(!s.resize);
        let (s, _) =
            Settings::from_params(&params(&[("hostname", "h"), ("quality-level", "5"), ("force-lossless", "true")]))
                .unwrap();
        assert!(!s.encodings.iter().any(|&e| (encoding::QUALITY_LEVEL_0..encoding::QUALITY_LEVEL_0 + 10).contains(&e)));
        let (s, _) = Settings::from_params(&params(&[("hostname", "h"), ("encodings", "copyrect")])).unwrap();
        assert_eq!(&s.encodings[..2], [1, 0]);
    }

    #[test]
    fn errors() {
        assert_eq!(Settings::from_params(&params(&[])).unwrap_err(), SettingsError::NoHostname);
        assert!(matches!(
            Settings::from_params(&params(&[("hostname", "h"), ("port", "x")])),
            Err(SettingsError::BadPort(_))
        ));
        assert!(matches!(
            Settings::from_params(&params(&[("hostname", "h"), ("port", "70000")])),
            Err(SettingsError::BadPort(_))
        ));
    }
}
