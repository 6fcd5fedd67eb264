//! Live sessions that other users can join with `select $<connection id>` (guacd's sharing).
//!
//! A session registers itself once its loop runs; a joiner's connection task looks the ID up, completes
//! its own handshake (the same `args` as the owner's protocol), then hands its output queue to the
//! session through the session's join channel. The joiner's task keeps reading its socket and forwards
//! each instruction into the session ([`JoinerInput`]); when the session is done with the joiner it gives
//! the writer back with the reason ([`JoinerEnd`]), and the task sends the last words and lingers as the
//! owner's does. The session never waits on a joiner.

use std::collections::HashMap;
use std::sync::Mutex;

use guac_proto::{Instruction, ProtocolVersion};
use tokio::sync::{mpsc, oneshot};

use crate::client::{ClientError, ClientWriter};
use crate::protocols::Protocol;
use crate::session::SessionEnd;

/// Joins waiting for the session loop to take them.
pub const JOIN_QUEUE: usize = 8;
/// Instructions from all joiners of a session waiting for the session loop.
pub const INPUT_QUEUE: usize = 256;

/// A user asking to join a live session.
pub struct Join {
    /// `@<uuid>`, as guacd names users.
    pub user_id: String,
    /// The handshake's `name`, if any.
    pub name: Option<String>,
    pub version: ProtocolVersion,
    pub read_only: bool,
    /// Image formats the joiner accepts besides PNG.
    pub formats: crate::display::ImageFormats,
    pub writer: ClientWriter,
    /// Where the joiner's task sends what it reads.
    pub input: mpsc::Receiver<JoinerInput>,
    /// Where the session gives the writer back when the joiner leaves or the session ends.
    pub done: oneshot::Sender<JoinerEnd>,
}

/// What a joiner's task forwards: an instruction, or why reading ended.
pub type JoinerInput = Result<Instruction, ClientError>;

/// The session is done with a joiner: its writer and how to close it.
pub struct JoinerEnd {
    pub writer: ClientWriter,
    pub result: Result<(), SessionEnd>,
}

struct Entry {
    protocol: Protocol,
    joins: mpsc::Sender<Join>,
}

/// Every live session that can be joined, by connection ID.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Entry>>,
}

/// A live session's registration; dropping it removes the session from the registry.
pub struct Registration<'a> {
    registry: &'a Registry,
    id: String,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic elsewhere while holding the lock leaves the map consistent (single inserts/removes).
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `id` joinable; joins arrive on the returned receiver.
    pub fn register(&self, id: &str, protocol: Protocol) -> (Registration<'_>, mpsc::Receiver<Join>) {
        let (joins, incoming) = mpsc::channel(JOIN_QUEUE);
        self.lock().insert(id.to_string(), Entry { protocol, joins });
        (Registration { registry: self, id: id.to_string() }, incoming)
    }

    /// The protocol of live session `id` and where to send a join, if it exists.
    pub fn find(&self, id: &str) -> Option<(Protocol, mpsc::Sender<Join>)> {
        self.lock().get(id).map(|e| (e.protocol, e.joins.clone()))
    }

    /// Number of joinable sessions.
    #[allow(dead_code, reason = "used by tests and metrics")]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_lives_as_long_as_its_guard() {
        let registry = Registry::default();
        {
            let (_guard, _joins) = registry.register("$a", Protocol::Vnc);
            assert_eq!(registry.find("$a").map(|(p, _)| p), Some(Protocol::Vnc));
            assert!(registry.find("$b").is_none());
            assert_eq!(registry.len(), 1);
        }
        assert!(registry.find("$a").is_none());
    }
}
