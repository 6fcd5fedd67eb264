//! guacd's RDP connection parameters (reference/guacd-args/rdp.txt) turned into our settings.

use std::time::Duration;

use shm_proto::control::Params;
pub use worker_common::Notes;

use crate::cert::{CertPolicy, Fingerprint};
use crate::clipboard::LineEnds;
use crate::keymap::Layout;

/// guacd 1.6's rdp parameter names in its order: the same file the supervisor sends in `args`.
const PARAMETER_LIST: &str = include_str!("../../supervisor/src/args/rdp.txt");

/// Every parameter guacd 1.6 accepts for RDP, in its order.
pub fn parameters() -> impl Iterator<Item = &'static str> {
    PARAMETER_LIST.lines().map(str::trim).filter(|l| !l.is_empty())
}

/// Parameters this worker honours. Some are honoured by what the worker never does: it asks for no
/// GFX, caches or lossy codecs, so `disable-gfx`, `disable-*-caching` and `force-lossless` need no
/// action. `disable-audio` leaves the sound channel out.
const IMPLEMENTED: [&str; 36] = [
    "hostname",
    "port",
    "timeout",
    "domain",
    "username",
    "password",
    "width",
    "height",
    "dpi",
    "initial-program",
    "color-depth",
    "disable-audio",
    "server-layout",
    "security",
    "ignore-cert",
    "cert-tofu",
    "cert-fingerprints",
    "disable-auth",
    "client-name",
    "enable-wallpaper",
    "enable-theming",
    "enable-font-smoothing",
    "enable-full-window-drag",
    "enable-desktop-composition",
    "enable-menu-animations",
    "disable-bitmap-caching",
    "disable-offscreen-caching",
    "disable-glyph-caching",
    "disable-gfx",
    "read-only",
    "clipboard-buffer-size",
    "disable-copy",
    "disable-paste",
    "force-lossless",
    "normalize-clipboard",
    "resize-method",
];

/// Boolean parameters: only "true" means the feature was asked for.
const FLAGS: [&str; 38] = [
    "disable-audio",
    "enable-printing",
    "enable-drive",
    "create-drive-path",
    "disable-download",
    "disable-upload",
    "console",
    "console-audio",
    "ignore-cert",
    "cert-tofu",
    "disable-auth",
    "enable-wallpaper",
    "enable-theming",
    "enable-font-smoothing",
    "enable-full-window-drag",
    "enable-desktop-composition",
    "enable-menu-animations",
    "disable-bitmap-caching",
    "disable-offscreen-caching",
    "disable-glyph-caching",
    "disable-gfx",
    "enable-sftp",
    "sftp-disable-download",
    "sftp-disable-upload",
    "recording-exclude-output",
    "recording-exclude-mouse",
    "recording-exclude-touch",
    "recording-include-keys",
    "recording-include-clipboard",
    "create-recording-path",
    "recording-write-existing",
    "enable-audio-input",
    "enable-touch",
    "read-only",
    "disable-copy",
    "disable-paste",
    "wol-send-packet",
    "force-lossless",
];

pub const DEFAULT_PORT: u16 = 3389;
/// guacd's defaults when neither the parameters nor the client give a size.
pub const DEFAULT_WIDTH: u32 = 1024;
pub const DEFAULT_HEIGHT: u32 = 768;
pub const DEFAULT_DPI: u32 = 96;
/// guacd's clipboard bounds: at least and by default 256 KiB, at most 50 MiB.
pub const CLIPBOARD_MIN: usize = 256 * 1024;
pub const CLIPBOARD_MAX: usize = 50 * 1024 * 1024;
/// guacd's default connection timeout (`timeout`, seconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// guacd's `security` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Let the server choose among NLA and TLS (and standard RDP security when it refuses both).
    Any,
    /// NLA (CredSSP) only; `nla-ext` is the same here (IronRDP offers HYBRID_EX together with HYBRID).
    Nla,
    Tls,
    /// Standard RDP security. IronRDP implements it only at encryption level NONE.
    Rdp,
}

/// guacd's `resize-method`: what a client's new size does to the remote desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMethod {
    /// Unset (guacd's default): the desktop keeps the size it was connected with.
    None,
    /// A monitor layout PDU over the Display Control dynamic channel (MS-RDPEDISP); the server
    /// answers with a Deactivation-Reactivation at the new size.
    DisplayUpdate,
    /// Disconnect and connect again at the new size.
    Reconnect,
}

/// A password or other secret that never shows up in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub hostname: String,
    pub port: u16,
    pub connect_timeout: Duration,
    pub username: String,
    pub password: Secret,
    pub domain: Option<String>,
    /// Requested desktop size: the parameters', else the client's, else 1024×768.
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub dpi: Option<u32>,
    pub color_depth: u32,
    pub layout: Layout,
    pub security: Security,
    /// NLA allowed (`disable-auth` turns it off).
    pub nla: bool,
    pub cert: CertPolicy,
    pub client_name: String,
    pub initial_program: Option<String>,
    pub read_only: bool,
    pub disable_copy: bool,
    /// The audio mimetypes the client plays (`Start`'s list, see [`Settings::set_client_audio`]); empty
    /// with `disable-audio`: then no sound channel is joined.
    pub audio: Vec<String>,
    /// `disable-audio`.
    pub disable_audio: bool,
    pub disable_paste: bool,
    pub clipboard_buffer_size: usize,
    /// `normalize-clipboard`: line ends of text pasted to the server.
    pub line_ends: LineEnds,
    pub resize: ResizeMethod,
    pub wallpaper: bool,
    pub theming: bool,
    pub font_smoothing: bool,
    pub full_window_drag: bool,
    pub desktop_composition: bool,
    pub menu_animations: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("no hostname given")]
    NoHostname,
    #[error("invalid port {0:?}")]
    BadPort(String),
    #[error("invalid cert-fingerprints entry {0:?} (expected sha256: and 32 bytes in hex)")]
    BadFingerprint(String),
}

impl Settings {
    /// Takes the audio mimetypes the client listed in its handshake (`ToWorker::Start`'s
    /// `audio_mimetypes`), unless `disable-audio` is set.
    pub fn set_client_audio(&mut self, listed: &[String]) {
        self.audio = if self.disable_audio { Vec::new() } else { listed.to_vec() };
    }

    pub fn from_params(params: &Params) -> Result<(Settings, Notes), SettingsError> {
        let mut notes = Notes::default();
        let hostname = params.get("hostname").ok_or(SettingsError::NoHostname)?.trim().to_string();
        if hostname.is_empty() {
            return Err(SettingsError::NoHostname);
        }
        let port = match params.get("port") {
            None => DEFAULT_PORT,
            Some(p) => p.trim().parse().ok().filter(|&p| p != 0).ok_or_else(|| SettingsError::BadPort(p.into()))?,
        };
        for name in parameters() {
            let set = if FLAGS.contains(&name) { params.flag(name) } else { params.get(name).is_some() };
            if set && !IMPLEMENTED.contains(&name) {
                notes.unsupported.push(name);
            }
        }

        let mut number = |name: &str, min: u32, max: u32| -> Option<u32> {
            let value = params.get(name)?;
            match value.trim().parse::<u32>() {
                Ok(n) if (min..=max).contains(&n) => Some(n),
                _ => {
                    notes.warnings.push(format!("{name} {value:?} is outside {min}..{max}; ignored"));
                    None
                }
            }
        };
        let width = number("width", 200, 8192);
        let height = number("height", 200, 8192);
        let dpi = number("dpi", 48, 480);
        let connect_timeout = number("timeout", 1, 3600).map_or(DEFAULT_TIMEOUT, |s| Duration::from_secs(s.into()));
        let color_depth = match params.get("color-depth").map(str::trim) {
            None => 32,
            Some(d @ ("8" | "15" | "16" | "24" | "32")) => d.parse().unwrap_or(32),
            Some(d) => {
                notes.warnings.push(format!("color-depth {d:?} is not 8, 15, 16, 24 or 32; using 32"));
                32
            }
        };
        let layout = match params.get("server-layout") {
            None => Layout::EnUs,
            Some(name) => Layout::from_name(name).unwrap_or_else(|| {
                notes.warnings.push(format!("server-layout {name:?} has no key map here; using en-us-qwerty"));
                Layout::EnUs
            }),
        };
        let security = match params.get("security").map(|s| s.trim().to_ascii_lowercase()) {
            None => Security::Any,
            Some(s) => match s.as_str() {
                "any" => Security::Any,
                "nla" | "nla-ext" => Security::Nla,
                "tls" => Security::Tls,
                "rdp" => Security::Rdp,
                other => {
                    notes.warnings.push(format!("security {other:?} is not supported; negotiating (any)"));
                    Security::Any
                }
            },
        };
        let mut fingerprints = Vec::new();
        for entry in params.get("cert-fingerprints").unwrap_or("").split(',') {
            let entry = entry.trim();
            if !entry.is_empty() {
                fingerprints
                    .push(Fingerprint::parse(entry).ok_or_else(|| SettingsError::BadFingerprint(entry.into()))?);
            }
        }
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
        let line_ends = match params.get("normalize-clipboard") {
            None => LineEnds::Preserve,
            Some(name) => LineEnds::from_name(name).unwrap_or_else(|| {
                notes
                    .warnings
                    .push(format!("normalize-clipboard {name:?} is not preserve, unix or windows; preserving"));
                LineEnds::Preserve
            }),
        };
        let resize = match params.get("resize-method").map(|m| m.trim().to_ascii_lowercase()) {
            None => ResizeMethod::None,
            Some(m) => match m.as_str() {
                "" => ResizeMethod::None,
                "display-update" => ResizeMethod::DisplayUpdate,
                "reconnect" => ResizeMethod::Reconnect,
                other => {
                    notes.warnings.push(format!("resize-method {other:?} is not display-update or reconnect; ignored"));
                    ResizeMethod::None
                }
            },
        };
        let cert = CertPolicy {
            ignore: params.flag("ignore-cert"),
            tofu: params.flag("cert-tofu"),
            fingerprints,
            roots: Vec::new(),
        };
        let settings = Settings {
            hostname,
            port,
            connect_timeout,
            username: params.get("username").unwrap_or("").to_string(),
            password: Secret(params.get("password").unwrap_or("").to_string()),
            domain: params.get("domain").map(str::to_string),
            width,
            height,
            dpi,
            color_depth,
            layout,
            security,
            nla: !params.flag("disable-auth"),
            cert,
            client_name: params.get("client-name").unwrap_or("guacr").chars().take(15).collect(),
            initial_program: params.get("initial-program").map(str::to_string),
            read_only: params.flag("read-only"),
            disable_copy: params.flag("disable-copy"),
            audio: Vec::new(),
            disable_audio: params.flag("disable-audio"),
            disable_paste: params.flag("disable-paste"),
            clipboard_buffer_size,
            line_ends,
            resize,
            wallpaper: params.flag("enable-wallpaper"),
            theming: params.flag("enable-theming"),
            font_smoothing: params.flag("enable-font-smoothing"),
            full_window_drag: params.flag("enable-full-window-drag"),
            desktop_composition: params.flag("enable-desktop-composition"),
            menu_animations: params.flag("enable-menu-animations"),
        };
        Ok((settings, notes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect())
    }

    #[test]
    fn guacd_parameter_list() {
        let all: Vec<&str> = parameters().collect();
        assert_eq!(all.len(), 90);
        assert_eq!(&all[..3], ["hostname", "port", "timeout"]);
        for name in IMPLEMENTED.iter().chain(FLAGS.iter()) {
            assert!(all.contains(name), "{name} is not a guacd rdp parameter");
        }
    }

    #[test]
    fn audio_follows_the_client_unless_disabled() {
        let (mut s, _) = Settings::from_params(&params(&[("hostname", "h")])).unwrap();
        s.set_client_audio(&[]);
        assert!(s.audio.is_empty(), "no client list: no sound");
        s.set_client_audio(&["audio/L8".into(), "audio/L16".into()]);
        assert_eq!(s.audio, ["audio/L8", "audio/L16"]);
        let disabled = [("hostname", "h"), ("disable-audio", "true")];
        let (mut s, notes) = Settings::from_params(&params(&disabled)).unwrap();
        s.set_client_audio(&["audio/L16".into()]);
        assert!(s.audio.is_empty() && notes.unsupported.is_empty());
    }

    #[test]
    fn defaults() {
        let (s, notes) = Settings::from_params(&params(&[("hostname", "h"), ("port", "")])).unwrap();
        assert_eq!((s.hostname.as_str(), s.port, s.security), ("h", 3389, Security::Any));
        assert_eq!((s.color_depth, s.layout, s.width), (32, Layout::EnUs, None));
        assert!(s.nla && !s.cert.ignore && !s.cert.tofu && s.cert.fingerprints.is_empty());
        assert!(notes.unsupported.is_empty() && notes.warnings.is_empty());
    }

    #[test]
    fn explicit_values_and_unsupported() {
        let (s, notes) = Settings::from_params(&params(&[
            ("hostname", "h"),
            ("port", "3390"),
            ("security", "NLA"),
            ("ignore-cert", "true"),
            ("width", "1001"),
            ("height", "50"),
            ("color-depth", "16"),
            ("server-layout", "de-de-qwertz"),
            ("enable-drive", "true"),
            ("enable-printing", "false"),
            ("cert-fingerprints", &format!("sha256:{}, SHA256:{}", "ab:".repeat(31) + "ab", "CD".repeat(32))),
            ("disable-auth", "true"),
        ]))
        .unwrap();
        assert_eq!((s.port, s.security, s.width, s.height, s.color_depth), (3390, Security::Nla, Some(1001), None, 16));
        assert_eq!(s.layout, Layout::DeDe);
        assert!(s.cert.ignore && !s.nla);
        assert_eq!(s.cert.fingerprints.len(), 2);
        assert_eq!(notes.unsupported, ["enable-drive"]);
        assert_eq!(notes.warnings.len(), 1, "{:?}", notes.warnings);
    }

    #[test]
    fn resize_method() {
        let method = |value: &str| {
            let (s, notes) = Settings::from_params(&params(&[("hostname", "h"), ("resize-method", value)])).unwrap();
            (s.resize, notes.warnings.len())
        };
        assert_eq!(method("display-update"), (ResizeMethod::DisplayUpdate, 0));
        assert_eq!(method("reconnect"), (ResizeMethod::Reconnect, 0));
        assert_eq!(method(""), (ResizeMethod::None, 0));
        assert_eq!(method("stretch"), (ResizeMethod::None, 1));
        let (s, _) = Settings::from_params(&params(&[("hostname", "h")])).unwrap();
        assert_eq!(s.resize, ResizeMethod::None, "like guacd, no resizing unless asked for");
    }

    #[test]
    fn errors() {
        assert_eq!(Settings::from_params(&params(&[])).unwrap_err(), SettingsError::NoHostname);
        assert!(matches!(
            Settings::from_params(&params(&[("hostname", "h"), ("port", "70000")])),
            Err(SettingsError::BadPort(_))
        ));
        assert!(matches!(
            Settings::from_params(&params(&[("hostname", "h"), ("cert-fingerprints", "md5:zz")])),
            Err(SettingsError::BadFingerprint(_))
        ));
    }
}
