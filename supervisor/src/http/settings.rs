//! guacr's configuration file (TOML, `guacr --config FILE`) and the environment variables that override
//! it, resolved into [`WebSettings`]. Every problem is reported at start-up, never at the first request.
//!
//! ```toml
//! [http]
//! bind = "127.0.0.1:8080"        # or "off"; env GUACR_HTTP_BIND, flag --http-bind
//!
//! [tokens]
//! key = "…at least 32 bytes…"    # or key_file = "/etc/guacr/token.key"; env GUACR_TOKEN_KEY
//!
//! [[users]]
//! name = "alice"
//! access_key = "…at least 16 characters…"
//! connections = ["desktop"]      # or ["*"]
//!
//! [[connections]]
//! name = "desktop"
//! protocol = "vnc"
//! description = "The build machine"
//! read_only = false
//! parameters = { hostname = "10.0.0.5", port = 5900, password = "…" }
//!
//! [recordings]                   # GET /recordings/<path> (off without this section)
//! dir = "/var/lib/guacr/recordings"
//! users = ["alice"]              # who may fetch them with their access key, or ["*"]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::token::TokenKey;
use crate::protocols::Protocol;

/// Where the web client is served when nothing says otherwise.
pub const DEFAULT_HTTP_BIND: &str = "127.0.0.1:8080";
/// Shortest access key accepted.
pub const MIN_ACCESS_KEY_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid(message.into())
}

/// The file as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    tokens: TokensSection,
    #[serde(default)]
    users: Vec<UserEntry>,
    #[serde(default)]
    connections: Vec<ConnectionEntry>,
    recordings: Option<RecordingsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordingsSection {
    dir: PathBuf,
    #[serde(default)]
    users: Vec<String>,
}

/// `[recordings]`: where `GET /recordings/<path>` reads, and who may.
#[derive(Debug, Clone)]
pub struct RecordingsAccess {
    /// Absolute, an existing directory at start-up.
    pub dir: PathBuf,
    /// User names, or `None` for every user with an access key.
    allowed: Option<BTreeSet<String>>,
}

impl RecordingsAccess {
    pub fn may_fetch(&self, user: &str) -> bool {
        self.allowed.as_ref().is_none_or(|names| names.contains(user))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    bind: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensSection {
    key: Option<String>,
    key_file: Option<PathBuf>,
}

impl fmt::Debug for TokensSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokensSection").field("key", &self.key.as_ref().map(|_| "<redacted>")).finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    access_key: String,
    #[serde(default)]
    connections: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionEntry {
    name: String,
    protocol: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    parameters: BTreeMap<String, ParameterValue>,
}

/// TOML lets people write `port = 5900` or `read-only = true`; guacd parameters are strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum ParameterValue {
    Text(String),
    Integer(i64),
    Boolean(bool),
}

impl ParameterValue {
    fn into_string(self) -> String {
        match self {
            ParameterValue::Text(s) => s,
            ParameterValue::Integer(i) => i.to_string(),
            ParameterValue::Boolean(b) => b.to_string(),
        }
    }
}

/// A connection from the configuration file that users may open by name.
#[derive(Clone)]
pub struct NamedConnection {
    pub name: String,
    pub protocol: Protocol,
    pub description: String,
    pub read_only: bool,
    /// guacd parameter names and values.
    pub parameters: BTreeMap<String, String>,
}

impl fmt::Debug for NamedConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedConnection")
            .field("name", &self.name)
            .field("protocol", &self.protocol)
            .field("parameters", &format_args!("<values redacted for {:?}>", self.parameters.keys()))
            .finish()
    }
}

/// A person allowed to see and open some named connections.
pub struct User {
    pub name: String,
    /// SHA-256 of the access key: compared in constant time, whatever the candidate's length.
    key_digest: [u8; 32],
    /// Connection names, or `None` for all of them.
    allowed: Option<BTreeSet<String>>,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User").field("name", &self.name).field("allowed", &self.allowed).finish()
    }
}

impl User {
    pub fn may_open(&self, connection: &str) -> bool {
        self.allowed.as_ref().is_none_or(|names| names.contains(connection))
    }
}

/// Everything the HTTP entry needs, resolved and checked.
#[derive(Debug, Default)]
pub struct WebSettings {
    /// `None`: the HTTP entry is off.
    pub bind: Option<SocketAddr>,
    /// The bind address was configured (flag, environment or file), not the default.
    pub bind_explicit: bool,
    pub token_key: Option<TokenKey>,
    pub users: Vec<User>,
    pub connections: BTreeMap<String, NamedConnection>,
    /// `None`: recordings are not served.
    pub recordings: Option<RecordingsAccess>,
}

/// What overrides the file: command-line flags and environment variables.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--http-bind` / `GUACR_HTTP_BIND`: an address or `off`.
    pub http_bind: Option<String>,
    /// `GUACR_TOKEN_KEY`.
    pub token_key: Option<String>,
}

impl WebSettings {
    /// Reads the file (if any) and applies the overrides.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<WebSettings, SettingsError> {
        let (parsed, base) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| SettingsError::Read { path: path.to_path_buf(), source })?;
                let parsed: FileConfig = toml::from_str(&text)
                    .map_err(|e| SettingsError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
                (parsed, path.parent().map(Path::to_path_buf))
            }
            None => (FileConfig::default(), None),
        };
        WebSettings::resolve(parsed, base.as_deref(), overrides)
    }

    /// Parses TOML text (the tests' entry point).
    #[cfg(test)]
    pub(crate) fn from_toml(text: &str, overrides: &Overrides) -> Result<WebSettings, SettingsError> {
        let parsed: FileConfig =
            toml::from_str(text).map_err(|e| SettingsError::Parse { path: "test".into(), message: e.to_string() })?;
        WebSettings::resolve(parsed, None, overrides)
    }

    fn resolve(file: FileConfig, base: Option<&Path>, overrides: &Overrides) -> Result<WebSettings, SettingsError> {
        let configured = overrides.http_bind.clone().or(file.http.bind);
        let bind_explicit = configured.is_some();
        let bind = parse_bind(configured.as_deref().unwrap_or(DEFAULT_HTTP_BIND))?;

        let key_material = match (&overrides.token_key, &file.tokens.key, &file.tokens.key_file) {
            (Some(env), _, _) => Some(env.trim().to_string()),
            (None, Some(_), Some(_)) => return Err(invalid("[tokens] has both key and key_file; keep one")),
            (None, Some(key), None) => Some(key.trim().to_string()),
            (None, None, Some(path)) => {
                let path = base.map_or_else(|| path.clone(), |b| b.join(path));
                let text = std::fs::read_to_string(&path).map_err(|source| SettingsError::Read { path, source })?;
                Some(text.trim().to_string())
            }
            (None, None, None) => None,
        };
        let token_key = match key_material.filter(|k| !k.is_empty()) {
            Some(k) => Some(TokenKey::new(k.as_bytes()).map_err(|e| invalid(format!("[tokens] {e}")))?),
            None => None,
        };

        let mut connections = BTreeMap::new();
        for entry in file.connections {
            let connection = check_connection(entry)?;
            let name = connection.name.clone();
            if connections.insert(name.clone(), connection).is_some() {
                return Err(invalid(format!("connection {name:?} is defined twice")));
            }
        }

        let mut users: Vec<User> = Vec::new();
        for entry in file.users {
            if entry.name.trim().is_empty() {
                return Err(invalid("a [[users]] entry has an empty name"));
            }
            if users.iter().any(|u| u.name == entry.name) {
                return Err(invalid(format!("user {:?} is defined twice", entry.name)));
            }
            if entry.access_key.chars().count() < MIN_ACCESS_KEY_LEN {
                return Err(invalid(format!(
                    "user {:?}: access_key must have at least {MIN_ACCESS_KEY_LEN} characters (e.g. `openssl rand -hex 16`)",
                    entry.name
                )));
            }
            let digest = digest(&entry.access_key);
            if users.iter().any(|u| bool::from(u.key_digest.ct_eq(&digest))) {
                return Err(invalid(format!("user {:?} has the same access_key as another user", entry.name)));
            }
            let allowed = if entry.connections.iter().any(|c| c == "*") {
                None
            } else {
                for name in &entry.connections {
                    if !connections.contains_key(name) {
                        return Err(invalid(format!(
                            "user {:?} may open {name:?}, which is not a connection",
                            entry.name
                        )));
                    }
                }
                Some(entry.connections.into_iter().collect())
            };
            users.push(User { name: entry.name, key_digest: digest, allowed });
        }

        let recordings = match file.recordings {
            Some(section) => Some(check_recordings(section, base, &users)?),
            None => None,
        };

        Ok(WebSettings { bind, bind_explicit, token_key, users, connections, recordings })
    }

    /// The user whose access key this is. Every user's key is compared, in constant time.
    pub fn user_for_key(&self, candidate: &str) -> Option<&User> {
        let digest = digest(candidate);
        let mut found = None;
        for user in &self.users {
            if bool::from(user.key_digest.ct_eq(&digest)) {
                found = Some(user);
            }
        }
        found
    }

    /// The named connections `user` may open, in name order.
    pub fn connections_for<'a>(&'a self, user: &'a User) -> impl Iterator<Item = &'a NamedConnection> + 'a {
        self.connections.values().filter(move |c| user.may_open(&c.name))
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn parse_bind(text: &str) -> Result<Option<SocketAddr>, SettingsError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") || text.is_empty() {
        return Ok(None);
    }
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(Some)
        .ok_or_else(|| invalid(format!("HTTP bind address {text:?} is not HOST:PORT (or \"off\")")))
}

fn check_recordings(
    section: RecordingsSection,
    base: Option<&Path>,
    users: &[User],
) -> Result<RecordingsAccess, SettingsError> {
    let dir = base.map_or_else(|| section.dir.clone(), |b| b.join(&section.dir));
    if !dir.is_absolute() {
        return Err(invalid(format!("[recordings] dir {:?} must be an absolute path", dir.display())));
    }
    if !dir.is_dir() {
        return Err(invalid(format!("[recordings] dir {} is not a directory", dir.display())));
    }
    if section.users.is_empty() {
        return Err(invalid("[recordings] users is empty: name who may fetch recordings, or [\"*\"]"));
    }
    let allowed = if section.users.iter().any(|u| u == "*") {
        None
    } else {
        for name in &section.users {
            if !users.iter().any(|u| &u.name == name) {
                return Err(invalid(format!("[recordings] users names {name:?}, which is not a user")));
            }
        }
        Some(section.users.into_iter().collect())
    };
    Ok(RecordingsAccess { dir, allowed })
}

fn check_connection(entry: ConnectionEntry) -> Result<NamedConnection, SettingsError> {
    let name = entry.name;
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid_name {
        return Err(invalid(format!("connection name {name:?} must be 1 to 64 characters of A-Z a-z 0-9 - _ .")));
    }
    let protocol = Protocol::from_name(&entry.protocol)
        .ok_or_else(|| invalid(format!("connection {name:?}: protocol {:?} is not supported", entry.protocol)))?;
    let known = protocol.parameter_names();
    let mut parameters = BTreeMap::new();
    for (key, value) in entry.parameters {
        if !known.contains(&key.as_str()) {
            return Err(invalid(format!(
                "connection {name:?}: {key:?} is not a {} parameter (guacd's names, e.g. hostname, port, password)",
                protocol.name()
            )));
        }
        parameters.insert(key, value.into_string());
    }
    Ok(NamedConnection { name, protocol, description: entry.description, read_only: entry.read_only, parameters })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
        [http]
        bind = "127.0.0.1:18080"

        [tokens]
        key = "0123456789abcdef0123456789abcdef"

        [[users]]
        name = "alice"
        access_key = "alice-key-0123456789"
        connections = ["static"]

        [[users]]
        name = "admin"
        access_key = "admin-key-0123456789"
        connections = ["*"]

        [[connections]]
        name = "static"
        protocol = "vnc"
        description = "Plaid"
        parameters = { hostname = "127.0.0.1", port = 5902, password = "guacpass", "disable-display-resize" = true }

        [[connections]]
        name = "typing"
        protocol = "vnc"
        read_only = true
        parameters = { hostname = "127.0.0.1", port = "5903" }
    "#;

    #[test]
    fn sample_resolves() {
        let s = WebSettings::from_toml(SAMPLE, &Overrides::default()).unwrap();
        assert_eq!(s.bind, Some("127.0.0.1:18080".parse().unwrap()));
        assert!(s.token_key.is_some());
        let static_ = &s.connections["static"];
        assert_eq!(static_.parameters["port"], "5902");
        assert_eq!(static_.parameters["disable-display-resize"], "true");
        assert!(s.connections["typing"].read_only);
        let alice = s.user_for_key("alice-key-0123456789").unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(s.connections_for(alice).map(|c| c.name.as_str()).collect::<Vec<_>>(), ["static"]);
        let admin = s.user_for_key("admin-key-0123456789").unwrap();
        assert_eq!(s.connections_for(admin).count(), 2);
        assert!(s.user_for_key("alice-key-012345678").is_none());
        assert!(s.user_for_key("").is_none());
        assert!(!format!("{s:?}").contains("guacpass"));
        assert!(s.recordings.is_none());
        let with = WebSettings::from_toml(
            &format!("{SAMPLE}\n[recordings]\ndir = \"/tmp\"\nusers = [\"admin\"]\n"),
            &Overrides::default(),
        )
        .unwrap();
        let recordings = with.recordings.unwrap();
        assert!(recordings.may_fetch("admin") && !recordings.may_fetch("alice"));
    }

    #[test]
    fn defaults_and_overrides() {
        let s = WebSettings::load(None, &Overrides::default()).unwrap();
        assert_eq!(s.bind, Some(DEFAULT_HTTP_BIND.parse().unwrap()));
        assert!(s.token_key.is_none() && s.users.is_empty() && s.connections.is_empty());
        let o =
            Overrides { http_bind: Some("off".into()), token_key: Some("an environment key of enough length!".into()) };
        let s = WebSettings::from_toml(SAMPLE, &o).unwrap();
        assert_eq!(s.bind, None);
        assert!(s.token_key.is_some());
    }

    #[test]
    fn file_with_a_key_file_beside_it() {
        let dir = std::env::temp_dir().join(format!("guacr-settings-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token.key"), "fedcba9876543210fedcba9876543210\n").unwrap();
        std::fs::write(dir.join("guacr.toml"), "[tokens]\nkey_file = \"token.key\"\n").unwrap();
        let s = WebSettings::load(Some(&dir.join("guacr.toml")), &Overrides::default()).unwrap();
        assert!(s.token_key.is_some());
        let missing = WebSettings::load(Some(&dir.join("absent.toml")), &Overrides::default()).unwrap_err();
        assert!(missing.to_string().contains("absent.toml"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mistakes_are_reported() {
        let cases = [
            ("[http]\nport = 1", "unknown field"),
            ("[tokens]\nkey = \"short\"", "at least 32"),
            ("[[connections]]\nname = \"a b\"\nprotocol = \"vnc\"", "must be 1 to 64"),
            ("[[connections]]\nname = \"a\"\nprotocol = \"telnet\"", "not supported"),
            (
                "[[connections]]\nname = \"a\"\nprotocol = \"vnc\"\nparameters = { hostnme = \"x\" }",
                "not a vnc parameter",
            ),
            ("[[users]]\nname = \"u\"\naccess_key = \"short\"", "at least 16"),
            (
                "[[users]]\nname = \"u\"\naccess_key = \"0123456789abcdef\"\nconnections = [\"nope\"]",
                "not a connection",
            ),
            ("[http]\nbind = \"nonsense\"", "HOST:PORT"),
            ("[recordings]\ndir = \"relative\"\nusers = [\"*\"]", "absolute"),
            ("[recordings]\ndir = \"/nonexistent-guacr-dir\"\nusers = [\"*\"]", "not a directory"),
            ("[recordings]\ndir = \"/tmp\"", "users is empty"),
            ("[recordings]\ndir = \"/tmp\"\nusers = [\"nobody\"]", "not a user"),
        ];
        for (text, expected) in cases {
            let e = WebSettings::from_toml(text, &Overrides::default()).unwrap_err().to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }
}
