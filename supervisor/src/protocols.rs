//! The protocols guacr serves and their guacd 1.6 parameter lists (names and order as guacd's `args`).

/// A protocol a client can `select`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Vnc,
    Ssh,
    Rdp,
    Rbi,
}

/// guacd 1.6's vnc parameters, one per line, in guacd's order.
const VNC_ARGS: &str = include_str!("args/vnc.txt");
/// guacd 1.6's ssh parameters, one per line, in guacd's order.
const SSH_ARGS: &str = include_str!("args/ssh.txt");
/// guacd 1.6's rdp parameters, one per line, in guacd's order.
const RDP_ARGS: &str = include_str!("args/rdp.txt");
/// Remote browser isolation (guacr only, no guacd equivalent), one per line.
const RBI_ARGS: &str = include_str!("args/rbi.txt");

impl Protocol {
    /// Every protocol guacr serves.
    pub const ALL: [Protocol; 4] = [Protocol::Vnc, Protocol::Ssh, Protocol::Rdp, Protocol::Rbi];

    pub fn from_name(name: &str) -> Option<Protocol> {
        match name {
            "vnc" => Some(Protocol::Vnc),
            "ssh" => Some(Protocol::Ssh),
            "rdp" => Some(Protocol::Rdp),
            "rbi" => Some(Protocol::Rbi),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Vnc => "vnc",
            Protocol::Ssh => "ssh",
            Protocol::Rdp => "rdp",
            Protocol::Rbi => "rbi",
        }
    }

    /// The parameter names sent in `args`, in order.
    pub fn parameter_names(self) -> Vec<&'static str> {
        let list = match self {
            Protocol::Vnc => VNC_ARGS,
            Protocol::Ssh => SSH_ARGS,
            Protocol::Rdp => RDP_ARGS,
            Protocol::Rbi => RBI_ARGS,
        };
        list.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
    }

    /// File name of the worker binary for this protocol.
    pub fn worker_binary(self) -> &'static str {
        match self {
            Protocol::Vnc => "guacr-worker-vnc",
            Protocol::Ssh => "guacr-worker-ssh",
            Protocol::Rdp => "guacr-worker-rdp",
            Protocol::Rbi => "guacr-worker-rbi",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnc_has_guacd_1_6_parameters() {
        let names = Protocol::Vnc.parameter_names();
        assert_eq!(names.len(), 53);
        assert_eq!(&names[..3], &["hostname", "port", "read-only"]);
        assert!(names.contains(&"clipboard-encoding") && names.contains(&"quality-level"));
    }

    #[test]
    fn ssh_has_guacd_1_6_parameters() {
        let names = Protocol::Ssh.parameter_names();
        assert_eq!(names.len(), 45);
        assert_eq!(&names[..3], &["hostname", "host-key", "port"]);
        assert_eq!(Protocol::from_name("ssh"), Some(Protocol::Ssh));
        assert_eq!(Protocol::Ssh.worker_binary(), "guacr-worker-ssh");
    }

    #[test]
    fn rdp_has_guacd_1_6_parameters() {
        let names = Protocol::Rdp.parameter_names();
        assert_eq!(names.len(), 90);
        assert_eq!(&names[..3], &["hostname", "port", "timeout"]);
        assert_eq!(Protocol::from_name("rdp"), Some(Protocol::Rdp));
        assert_eq!(Protocol::Rdp.worker_binary(), "guacr-worker-rdp");
    }

    #[test]
    fn rbi_is_registered() {
        let names = Protocol::Rbi.parameter_names();
        assert_eq!(&names[..3], &["url", "allowed-urls", "denied-urls"]);
        assert!(names.contains(&"no-sandbox") && names.contains(&"disable-paste"));
        assert_eq!(Protocol::from_name("rbi"), Some(Protocol::Rbi));
        assert_eq!(Protocol::Rbi.worker_binary(), "guacr-worker-rbi");
    }
}
