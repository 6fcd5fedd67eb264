//! The protocols guacr serves and their guacd 1.6 parameter lists (names and order as guacd's `args`).

/// A protocol a client can `select`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Vnc,
    Ssh,
}

/// guacd 1.6's vnc parameters, one per line, in guacd's order.
const VNC_ARGS: &str = include_str!("args/vnc.txt");
/// guacd 1.6's ssh parameters, one per line, in guacd's order.
const SSH_ARGS: &str = include_str!("args/ssh.txt");

impl Protocol {
    /// Every protocol guacr serves.
    pub const ALL: [Protocol; 2] = [Protocol::Vnc, Protocol::Ssh];

    pub fn from_name(name: &str) -> Option<Protocol> {
        match name {
            "vnc" => Some(Protocol::Vnc),
            "ssh" => Some(Protocol::Ssh),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Vnc => "vnc",
            Protocol::Ssh => "ssh",
        }
    }

    /// The parameter names sent in `args`, in order.
    pub fn parameter_names(self) -> Vec<&'static str> {
        let list = match self {
            Protocol::Vnc => VNC_ARGS,
            Protocol::Ssh => SSH_ARGS,
        };
        list.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
    }

    /// File name of the worker binary for this protocol.
    pub fn worker_binary(self) -> &'static str {
        match self {
            Protocol::Vnc => "guacr-worker-vnc",
            Protocol::Ssh => "guacr-worker-ssh",
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
}
