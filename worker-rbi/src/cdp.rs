//! A sans-IO codec for the Chrome DevTools Protocol over `--remote-debugging-pipe`: JSON messages, each
//! terminated by a NUL byte, commands with numeric ids, answers with the same id, events with a
//! `method`. With `flatten` sessions a message names its target session in `sessionId`.
//!
//! Everything Chromium sends is untrusted (a compromised browser controls it): messages are bounded in
//! size, parsed with serde_json into `Value`s, and every field the worker uses is checked where it is read.

use serde_json::{json, Value};

/// Largest message we accept from the browser. A lossless 1920×1080 screencast frame is a few MiB of
/// base64; anything near this bound is a browser gone wrong.
pub const MAX_MESSAGE: usize = 32 << 20;
/// Commands queued for a browser that does not read them; beyond this the worker drops input.
pub const MAX_PENDING_OUTPUT: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CdpError {
    #[error("browser message exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("browser message is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("browser message is neither an answer nor an event")]
    Shape,
}

/// One message from the browser.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The answer to command `id`: its result, or the browser's error message.
    Answer { id: u64, result: Result<Value, String> },
    /// An event; `session` is the flattened session it belongs to (none for the browser itself).
    Event { method: String, params: Value, session: Option<String> },
}

#[derive(Debug, Default)]
pub struct Cdp {
    next_id: u64,
    output: Vec<u8>,
    input: Vec<u8>,
    /// How far `input` was already searched for a terminator.
    scanned: usize,
}

impl Cdp {
    pub fn new() -> Cdp {
        Cdp::default()
    }

    /// Queues a command and returns its id.
    pub fn command(&mut self, session: Option<&str>, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = Value::String(session.to_string());
        }
        // Serialising a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.output, &message);
        self.output.push(0);
        id
    }

    pub fn pending_output(&self) -> &[u8] {
        &self.output
    }

    pub fn consume_output(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
    }

    /// Whether the browser is keeping up with our commands.
    pub fn has_room(&self) -> bool {
        self.output.len() < MAX_PENDING_OUTPUT
    }

    pub fn receive(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The next complete message, if any.
    pub fn poll(&mut self) -> Result<Option<Incoming>, CdpError> {
        let Some(end) = self.input[self.scanned..].iter().position(|&b| b == 0).map(|i| i + self.scanned) else {
            self.scanned = self.input.len();
            if self.input.len() > MAX_MESSAGE {
                return Err(CdpError::TooLarge { limit: MAX_MESSAGE });
            }
            return Ok(None);
        };
        if end > MAX_MESSAGE {
            return Err(CdpError::TooLarge { limit: MAX_MESSAGE });
        }
        let mut message: Value = serde_json::from_slice(&self.input[..end])?;
        self.input.drain(..=end);
        self.scanned = 0;
        let session = message.get("sessionId").and_then(Value::as_str).map(String::from);
        if let Some(id) = message.get("id").and_then(Value::as_u64) {
            let result = match message.get_mut("error") {
                Some(error) => Err(error.get("message").and_then(Value::as_str).unwrap_or("unknown error").to_string()),
                None => Ok(message.get_mut("result").map(Value::take).unwrap_or(Value::Null)),
            };
            return Ok(Some(Incoming::Answer { id, result }));
        }
        let Some(method) = message.get("method").and_then(Value::as_str).map(String::from) else {
            return Err(CdpError::Shape);
        };
        let params = message.get_mut("params").map(Value::take).unwrap_or(Value::Null);
        Ok(Some(Incoming::Event { method, params, session }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_nul_terminated_json_with_ids() {
        let mut cdp = Cdp::new();
        assert_eq!(cdp.command(None, "Browser.getVersion", json!({})), 1);
        assert_eq!(cdp.command(Some("S"), "Page.enable", json!({})), 2);
        let out = cdp.pending_output().to_vec();
        let parts: Vec<&[u8]> = out.split(|&b| b == 0).collect();
        assert_eq!(parts.len(), 3);
        let second: Value = serde_json::from_slice(parts[1]).unwrap();
        assert_eq!(second["sessionId"], "S");
        assert_eq!(second["method"], "Page.enable");
        cdp.consume_output(out.len());
        assert!(cdp.pending_output().is_empty());
    }

    #[test]
    fn decodes_answers_events_and_split_input() {
        let mut cdp = Cdp::new();
        cdp.receive(br#"{"id":3,"result":{"a":1}}"#);
        assert_eq!(cdp.poll().unwrap(), None);
        cdp.receive(
            b"\0{\"id\":4,\"error\":{\"message\":\"no\"}}\0{\"method\":\"Page.x\",\"params\":{},\"sessionId\":\"S\"}\0",
        );
        assert_eq!(cdp.poll().unwrap(), Some(Incoming::Answer { id: 3, result: Ok(json!({"a": 1})) }));
        assert_eq!(cdp.poll().unwrap(), Some(Incoming::Answer { id: 4, result: Err("no".into()) }));
        assert_eq!(
            cdp.poll().unwrap(),
            Some(Incoming::Event { method: "Page.x".into(), params: json!({}), session: Some("S".into()) })
        );
        assert_eq!(cdp.poll().unwrap(), None);
        cdp.receive(b"[1]\0");
        assert!(matches!(cdp.poll(), Err(CdpError::Shape)));
        cdp.receive(b"{nope\0");
        assert!(matches!(cdp.poll(), Err(CdpError::Json(_))));
    }
}
