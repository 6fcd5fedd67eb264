//! The `rbi` connection parameters (`supervisor/src/args/rbi.txt`), parsed once at `Start`.

use shm_proto::control::Params;
pub use worker_common::Notes;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("url {url:?} is not an http, https or about:blank URL")]
    BadUrl { url: String },
    #[error("{name} must be a number, got {value:?}")]
    BadNumber { name: &'static str, value: String },
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// The first page.
    pub url: String,
    pub policy: UrlPolicy,
    pub disable_copy: bool,
    pub disable_paste: bool,
    /// Screencast as PNG instead of JPEG.
    pub force_lossless: bool,
    pub read_only: bool,
    /// Initial viewport, overriding the client's display size.
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Run Chromium without its own sandbox (only where the host forbids user namespaces).
    pub no_sandbox: bool,
    /// Deliver downloads to the user as Guacamole file streams (refused otherwise).
    pub enable_download: bool,
    /// Take files the user drops and hand them to the page's file choosers.
    pub enable_upload: bool,
}

impl Settings {
    pub fn from_params(params: &Params) -> Result<(Settings, Notes), SettingsError> {
        let mut notes = Notes::default();
        let url = params.get("url").unwrap_or("about:blank").trim().to_string();
        if !(url.starts_with("http://") || url.starts_with("https://") || url == "about:blank") {
            return Err(SettingsError::BadUrl { url });
        }
        let number = |name: &'static str| -> Result<Option<u32>, SettingsError> {
            match params.get(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<u32>()
                    .map(|n| (n > 0).then_some(n))
                    .map_err(|_| SettingsError::BadNumber { name, value: v.to_string() }),
            }
        };
        let no_sandbox = params.flag("no-sandbox");
        if no_sandbox {
            notes.warnings.push(
                "no-sandbox is set: Chromium runs without its own sandbox (renderers are not isolated from the \
                 browser process); only the worker's confinement applies"
                    .into(),
            );
        }
        let settings = Settings {
            url,
            policy: UrlPolicy::new(params.get("allowed-urls").unwrap_or(""), params.get("denied-urls").unwrap_or("")),
            disable_copy: params.flag("disable-copy"),
            disable_paste: params.flag("disable-paste"),
            force_lossless: params.flag("force-lossless"),
            read_only: params.flag("read-only"),
            width: number("width")?,
            height: number("height")?,
            no_sandbox,
            enable_download: params.flag("enable-download"),
            enable_upload: params.flag("enable-upload") && !params.flag("read-only"),
        };
        Ok((settings, notes))
    }
}

/// `allowed-urls` and `denied-urls`: lists of patterns separated by commas, spaces or newlines, where `*`
/// matches any run of characters and everything else matches itself; a pattern matches the whole URL
/// (`https://*.example.com/*`). A denied match always wins; with an allow-list, only matching URLs load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    allowed: Vec<String>,
    denied: Vec<String>,
}

impl UrlPolicy {
    pub fn new(allowed: &str, denied: &str) -> UrlPolicy {
        let split = |list: &str| -> Vec<String> {
            list.split(|c: char| c == ',' || c.is_whitespace()).filter(|p| !p.is_empty()).map(String::from).collect()
        };
        UrlPolicy { allowed: split(allowed), denied: split(denied) }
    }

    /// Whether anything is filtered at all (otherwise no request needs interception).
    pub fn is_active(&self) -> bool {
        !self.allowed.is_empty() || !self.denied.is_empty()
    }

    pub fn allows(&self, url: &str) -> bool {
        // Chromium's own pages that need no network never reach the interception anyway.
        if self.denied.iter().any(|p| glob_match(p, url)) {
            return false;
        }
        self.allowed.is_empty() || self.allowed.iter().any(|p| glob_match(p, url))
    }
}

/// `*` matches any run of characters (including none); the pattern must match the whole text.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matcher with one backtrack point: linear in practice, never exponential.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: &[(&str, &str)]) -> Params {
        Params(list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn globs() {
        assert!(glob_match("https://*.example.com/*", "https://www.example.com/a"));
        assert!(!glob_match("https://*.example.com/*", "https://example.org/"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*/denied/*", "http://127.0.0.1:8/denied/x"));
        assert!(!glob_match("http://a/", "http://a/b"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
    }

    #[test]
    fn policy() {
        let p = UrlPolicy::new("http://127.0.0.1:*/*", "*/denied/*");
        assert!(p.is_active());
        assert!(p.allows("http://127.0.0.1:80/ok"));
        assert!(!p.allows("http://127.0.0.1:80/denied/x"));
        assert!(!p.allows("https://example.com/"));
        assert!(!UrlPolicy::default().is_active());
        assert!(UrlPolicy::default().allows("https://anything/"));
    }

    #[test]
    fn parses_parameters() {
        let (s, notes) = Settings::from_params(&params(&[
            ("url", "http://127.0.0.1:1/"),
            ("denied-urls", "*/x/*, */y/*"),
            ("disable-copy", "true"),
            ("width", "800"),
            ("no-sandbox", "true"),
            ("enable-download", "true"),
        ]))
        .unwrap();
        assert_eq!(s.url, "http://127.0.0.1:1/");
        assert!(s.disable_copy && !s.disable_paste && s.no_sandbox);
        assert_eq!((s.width, s.height), (Some(800), None));
        assert!(notes.unsupported.is_empty() && s.enable_download);
        assert_eq!(notes.warnings.len(), 1);
        assert!(!s.policy.allows("http://h/x/1"));
        assert_eq!(Settings::from_params(&params(&[])).unwrap().0.url, "about:blank");
        assert!(matches!(
            Settings::from_params(&params(&[("url", "file:///etc/passwd")])),
            Err(SettingsError::BadUrl { .. })
        ));
        assert!(Settings::from_params(&params(&[("width", "wide")])).is_err());
    }
}
