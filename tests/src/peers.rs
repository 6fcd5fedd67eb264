//! The real VNC peers started by `scripts/peers.sh start`, read from the variables that
//! `scripts/peers.sh env` prints (with the same defaults when they are unset).
//!
//! A test that needs a peer must call [`VncPeer::require_up`] (or [`require_up`]) first: it panics
//! when the peer is not listening, so a test never passes without its server.

use std::net::SocketAddr;

/// VNC password of every peer.
pub const DEFAULT_PASSWORD: &str = "guacpass";

/// One VNC server and the X display behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VncPeer {
    /// What it is for: "changing", "static" or "typing".
    pub role: &'static str,
    pub addr: SocketAddr,
    /// X display, e.g. ":52".
    pub display: String,
    pub password: String,
}

impl VncPeer {
    /// `hostname`.
    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    /// `port`.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Panics (with how to fix it) unless the peer accepts TCP connections. Returns `self`.
    pub fn require_up(&self) -> &Self {
        require_up_named(self.addr, &format!("{} VNC peer (display {})", self.role, self.display));
        self
    }

    /// The `vnc` connection parameters for this peer: hostname, port, password.
    pub fn vnc_params(&self) -> Vec<(String, String)> {
        vec![
            ("hostname".into(), self.host()),
            ("port".into(), self.port().to_string()),
            ("password".into(), self.password.clone()),
        ]
    }
}

fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
        _ => default.to_owned(),
    }
}

fn peer(role: &'static str, addr_var: &str, addr: &str, display_var: &str, display: &str) -> VncPeer {
    let a = env_or(addr_var, addr);
    let addr = a.parse().unwrap_or_else(|e| panic!("{addr_var}={a:?} is not an address like 127.0.0.1:5901: {e}"));
    VncPeer { role, addr, display: env_or(display_var, display), password: password() }
}

/// `GUACR_VNC_PASSWORD`, default `guacpass`.
pub fn password() -> String {
    env_or("GUACR_VNC_PASSWORD", DEFAULT_PASSWORD)
}

/// Xvfb :51 + x11vnc on 127.0.0.1:5901: a clock and `top`, so the screen keeps changing.
pub fn changing() -> VncPeer {
    peer("changing", "GUACR_VNC_CHANGING", "127.0.0.1:5901", "GUACR_DISPLAY_CHANGING", ":51")
}

/// Xtigervnc :52 on 127.0.0.1:5902: a plaid root and a static xterm; nothing changes by itself.
pub fn static_screen() -> VncPeer {
    peer("static", "GUACR_VNC_STATIC", "127.0.0.1:5902", "GUACR_DISPLAY_STATIC", ":52")
}

/// Xtigervnc :53 on 127.0.0.1:5903: an 80x24 xterm at the top left running bash, for typing.
/// Keyboard focus follows the pointer (no window manager): move the pointer to
/// [`typing_pointer`] before typing.
pub fn typing() -> VncPeer {
    peer("typing", "GUACR_VNC_TYPING", "127.0.0.1:5903", "GUACR_DISPLAY_TYPING", ":53")
}

/// A point inside the typing xterm (`GUACR_TYPING_POINTER_X/Y`, default 200,150).
pub fn typing_pointer() -> (i32, i32) {
    let x = env_or("GUACR_TYPING_POINTER_X", "200").parse().unwrap_or(200);
    let y = env_or("GUACR_TYPING_POINTER_Y", "150").parse().unwrap_or(150);
    (x, y)
}

/// The plaid colours `xsetroot -mod 16 16 -fg '#d03020' -bg '#2040c0'` paints on the static peer.
pub const STATIC_ROOT_FG: [u8; 3] = [0xd0, 0x30, 0x20];
pub const STATIC_ROOT_BG: [u8; 3] = [0x20, 0x40, 0xc0];

/// The OpenSSH sshd on 127.0.0.1:2222 (`scripts/peers.sh start`), with its own config, host keys and
/// the test user's client keys in `GUACR_SSH_DIR` (default `<repo>/run/ssh`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshPeer {
    pub addr: SocketAddr,
    pub username: String,
    pub password: String,
    /// `$RUN/ssh`: `keys/id_ed25519`, `keys/id_ed25519_pass` (passphrase [`SSH_KEY_PASSPHRASE`]),
    /// `keys/id_rsa` (PEM), `keys/id_ecdsa`, `keys/id_ecdsa_short` (a P-256 key with a 31-byte scalar),
    /// `keys/id_ecdsa_short_pass` (the same key, passphrase [`SSH_KEY_PASSPHRASE`]), and `known_hosts`
    /// (the server's keys).
    pub dir: std::path::PathBuf,
}

/// Passphrase of `keys/id_ed25519_pass` and `keys/id_ecdsa_short_pass`.
pub const SSH_KEY_PASSPHRASE: &str = "keypass";

impl SshPeer {
    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Panics (with how to fix it) unless sshd is listening. Returns `self`.
    pub fn require_up(&self) -> &Self {
        require_up_named(self.addr, "SSH peer (sshd)");
        self
    }

    /// A client private key from `$RUN/ssh/keys`, e.g. "id_ed25519".
    pub fn private_key(&self, name: &str) -> String {
        let path = self.dir.join("keys").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// The server's host keys as known_hosts lines.
    pub fn known_hosts(&self) -> String {
        let path = self.dir.join("known_hosts");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// hostname, port and username (no credentials).
    pub fn ssh_params(&self) -> Vec<(String, String)> {
        vec![
            ("hostname".into(), self.host()),
            ("port".into(), self.port().to_string()),
            ("username".into(), self.username.clone()),
        ]
    }
}

/// `GUACR_SSH` (default 127.0.0.1:2222), `GUACR_SSH_USER`, `GUACR_SSH_PASSWORD`, `GUACR_SSH_DIR`.
pub fn ssh() -> SshPeer {
    let a = env_or("GUACR_SSH", "127.0.0.1:2222");
    let addr = a.parse().unwrap_or_else(|e| panic!("GUACR_SSH={a:?} is not an address like 127.0.0.1:2222: {e}"));
    let default_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../run/ssh");
    let dir = match std::env::var_os("GUACR_SSH_DIR") {
        Some(d) if !d.is_empty() => std::path::PathBuf::from(d),
        _ => match std::env::var_os("GUACR_RUN") {
            Some(r) if !r.is_empty() => std::path::PathBuf::from(r).join("ssh"),
            _ => default_dir,
        },
    };
    SshPeer {
        addr,
        username: env_or("GUACR_SSH_USER", "guactest"),
        password: env_or("GUACR_SSH_PASSWORD", "guacpass"),
        dir,
    }
}

/// The same sshd on `GUACR_SSH_KBDINT` (default 127.0.0.1:2223), where it offers no "password" method:
/// a password must go through keyboard-interactive.
pub fn ssh_keyboard_interactive() -> SshPeer {
    let a = env_or("GUACR_SSH_KBDINT", "127.0.0.1:2223");
    let addr = a.parse().unwrap_or_else(|e| panic!("GUACR_SSH_KBDINT={a:?} is not an address: {e}"));
    SshPeer { addr, ..ssh() }
}

/// Panics unless something accepts TCP connections on `addr`.
pub fn require_up(addr: SocketAddr) {
    require_up_named(addr, "peer");
}

fn require_up_named(addr: SocketAddr, what: &str) {
    // Look at the listening sockets instead of connecting: Xvnc counts a connection that closes before
    // authenticating as a failed login and blacklists the address after a few.
    if !crate::process::port_listening(addr.port()) {
        panic!(
            "\n\n*** {what} at {addr} is not listening.\n\
             *** Start the test peers first: scripts/peers.sh start  (check: scripts/peers.sh status)\n\
             *** A test never passes or skips without its server.\n\n"
        );
    }
}

/// An RDP test server started by `scripts/peers.sh` (freerdp-shadow on Xvfb :55, or xrdp).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RdpPeer {
    pub role: &'static str,
    pub addr: SocketAddr,
    pub username: String,
    pub password: String,
}

impl RdpPeer {
    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn require_up(&self) -> &Self {
        require_up_named(self.addr, &format!("RDP peer {}", self.role));
        self
    }

    /// guacd's parameters for this server: address and the test user's credentials.
    pub fn rdp_params(&self) -> Vec<(String, String)> {
        vec![
            ("hostname".into(), self.host()),
            ("port".into(), self.port().to_string()),
            ("username".into(), self.username.clone()),
            ("password".into(), self.password.clone()),
        ]
    }
}

fn rdp_peer(role: &'static str, addr_var: &str, addr: &str) -> RdpPeer {
    let a = env_or(addr_var, addr);
    let addr = a.parse().unwrap_or_else(|e| panic!("{addr_var}={a:?} is not an address like 127.0.0.1:3389: {e}"));
    RdpPeer {
        role,
        addr,
        username: env_or("GUACR_RDP_USER", "guactest"),
        password: env_or("GUACR_RDP_PASSWORD", "guacpass"),
    }
}

/// freerdp-shadow with `-auth` (TLS or standard RDP security, any credentials).
pub fn rdp_shadow() -> RdpPeer {
    rdp_peer("freerdp-shadow (-auth)", "GUACR_RDP_SHADOW", "127.0.0.1:3390")
}

/// freerdp-shadow with NLA only (NTLM against a SAM file holding the test user).
pub fn rdp_shadow_nla() -> RdpPeer {
    rdp_peer("freerdp-shadow (NLA)", "GUACR_RDP_SHADOW_NLA", "127.0.0.1:3391")
}

/// The X display both freerdp-shadow servers show.
pub fn rdp_shadow_display() -> String {
    env_or("GUACR_DISPLAY_RDP_SHADOW", ":55")
}

/// xrdp (TLS or standard RDP security at crypt_level none; logs in with PAM after connecting).
pub fn rdp_xrdp() -> RdpPeer {
    rdp_peer("xrdp", "GUACR_RDP_XRDP", "127.0.0.1:3389")
}

/// The X display of the test user's running xrdp session (its Xorg's `:N` argument), if any.
pub fn xrdp_session_display() -> Option<String> {
    let user = env_or("GUACR_RDP_USER", "guactest");
    let out = std::process::Command::new("ps").args(["-o", "args=", "-u", &user]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("Xorg") && l.contains("xrdp"))
        .find_map(|l| l.split_whitespace().find(|a| a.starts_with(':') && a[1..].parse::<u32>().is_ok()))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        // Only meaningful when the variables are unset, as in a plain `cargo test`.
        if std::env::var_os("GUACR_VNC_STATIC").is_none() {
            assert_eq!(static_screen().addr, "127.0.0.1:5902".parse().unwrap());
        }
        if std::env::var_os("GUACR_DISPLAY_TYPING").is_none() {
            assert_eq!(typing().display, ":53");
        }
        let p = changing();
        assert_eq!(p.vnc_params()[0].0, "hostname");
    }

    #[test]
    #[should_panic(expected = "is not listening")]
    fn require_up_panics_on_a_closed_port() {
        // Bind then drop: the port is (almost certainly) closed afterwards.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        require_up(addr);
    }
}
