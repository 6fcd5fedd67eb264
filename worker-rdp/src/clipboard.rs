//! The CLIPRDR backend: IronRDP's clipboard channel calls it synchronously while it processes a PDU;
//! it only queues what happened, and the worker acts on the queue right after (asking for the
//! server's text, answering the server's requests with the user's text). Text only
//! (CF_UNICODETEXT); no files.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use ironrdp_cliprdr::backend::CliprdrBackend;
use ironrdp_cliprdr::pdu::{
    ClipboardFormat, ClipboardFormatId, ClipboardGeneralCapabilityFlags, FileContentsRequest, FileContentsResponse,
    FormatDataRequest, FormatDataResponse, LockDataId,
};

/// What the server's clipboard channel asked for or announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClipEvent {
    /// The channel is up and wants our format list (what the user's clipboard holds).
    RequestFormatList,
    /// The server's clipboard changed; its formats.
    RemoteCopy(Vec<ClipboardFormatId>),
    /// The server wants our clipboard in this format.
    DataRequest(ClipboardFormatId),
    /// The server's clipboard data we asked for (`None`: it could not give it).
    DataResponse(Option<Vec<u8>>),
}

pub type ClipQueue = Arc<Mutex<VecDeque<ClipEvent>>>;

#[derive(Debug)]
pub struct Backend {
    events: ClipQueue,
}

impl Backend {
    pub fn new(events: ClipQueue) -> Backend {
        Backend { events }
    }

    fn push(&self, event: ClipEvent) {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).push_back(event);
    }
}

/// Takes the next queued event.
pub fn next(events: &ClipQueue) -> Option<ClipEvent> {
    events.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
}

impl ironrdp_pdu::AsAny for Backend {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl CliprdrBackend for Backend {
    fn temporary_directory(&self) -> &str {
        ""
    }

    fn client_capabilities(&self) -> ClipboardGeneralCapabilityFlags {
        ClipboardGeneralCapabilityFlags::USE_LONG_FORMAT_NAMES
    }

    fn on_ready(&mut self) {}

    fn on_request_format_list(&mut self) {
        self.push(ClipEvent::RequestFormatList);
    }

    fn on_process_negotiated_capabilities(&mut self, _capabilities: ClipboardGeneralCapabilityFlags) {}

    fn on_remote_copy(&mut self, available_formats: &[ClipboardFormat]) {
        self.push(ClipEvent::RemoteCopy(available_formats.iter().map(ClipboardFormat::id).collect()));
    }

    fn on_format_data_request(&mut self, request: FormatDataRequest) {
        self.push(ClipEvent::DataRequest(request.format));
    }

    fn on_format_data_response(&mut self, response: FormatDataResponse<'_>) {
        self.push(ClipEvent::DataResponse((!response.is_error()).then(|| response.data().to_vec())));
    }

    // We never announce files, so the server has none to ask for; nothing to lock either.
    fn on_file_contents_request(&mut self, _request: FileContentsRequest) {}

    fn on_file_contents_response(&mut self, _response: FileContentsResponse<'_>) {}

    fn on_lock(&mut self, _data_id: LockDataId) {}

    fn on_unlock(&mut self, _data_id: LockDataId) {}
}

/// CF_UNICODETEXT bytes (UTF-16LE, NUL-terminated) → text.
pub fn decode_unicode_text(bytes: &[u8]) -> String {
    let units: Vec<u16> =
        bytes.chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]])).take_while(|u| *u != 0).collect();
    String::from_utf16_lossy(&units)
}

/// guacd's `normalize-clipboard`: line ends of the text sent to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineEnds {
    /// As the user's clipboard has them (guacd's default, "preserve").
    #[default]
    Preserve,
    /// `\n` ("unix").
    Unix,
    /// `\r\n` ("windows").
    Windows,
}

impl LineEnds {
    pub fn from_name(name: &str) -> Option<LineEnds> {
        match name.trim() {
            "preserve" => Some(LineEnds::Preserve),
            "unix" => Some(LineEnds::Unix),
            "windows" => Some(LineEnds::Windows),
            _ => None,
        }
    }

    pub fn apply(self, text: &str) -> String {
        match self {
            LineEnds::Preserve => text.to_string(),
            LineEnds::Unix => text.replace("\r\n", "\n"),
            LineEnds::Windows => text.replace("\r\n", "\n").replace('\n', "\r\n"),
        }
    }
}

/// The longest prefix of `text` that fits `max` bytes without splitting a character.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicode_text_round_trip() {
        let text = "a\r\nb€";
        let wire: Vec<u8> = text.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect();
        assert_eq!(decode_unicode_text(&wire), text);
        assert_eq!(LineEnds::Windows.apply("a\nb\r\n"), "a\r\nb\r\n");
        assert_eq!(LineEnds::Unix.apply("a\r\nb\n"), "a\nb\n");
        assert_eq!(LineEnds::from_name("preserve").unwrap().apply("a\r\n"), "a\r\n");
        assert_eq!(decode_unicode_text(&[0x41, 0, 0, 0, 0x42, 0]), "A");
        assert_eq!(truncate("ab€", 3), "ab");
    }

    #[test]
    fn backend_queues_events() {
        let queue = ClipQueue::default();
        let mut backend = Backend::new(queue.clone());
        backend.on_request_format_list();
        backend.on_remote_copy(&[ClipboardFormat::new(ClipboardFormatId::CF_UNICODETEXT)]);
        backend.on_format_data_response(FormatDataResponse::new_error());
        assert_eq!(next(&queue), Some(ClipEvent::RequestFormatList));
        assert_eq!(next(&queue), Some(ClipEvent::RemoteCopy(vec![ClipboardFormatId::CF_UNICODETEXT])));
        assert_eq!(next(&queue), Some(ClipEvent::DataResponse(None)));
        assert_eq!(next(&queue), None);
    }
}
