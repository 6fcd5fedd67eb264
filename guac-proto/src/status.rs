//! Guacamole status codes (Guacamole protocol reference, "Status codes"; guacd's names).

use std::fmt;

/// A status code, sent in decimal in `error` and `ack` instructions and as the WebSocket close
/// reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum Status {
    /// The operation succeeded.
    Success = 0x0000,
    /// The operation is not supported.
    Unsupported = 0x0100,
    /// An internal server error; the operation failed.
    ServerError = 0x0200,
    /// The server is busy.
    ServerBusy = 0x0201,
    /// The upstream server (the remote desktop) did not respond in time.
    UpstreamTimeout = 0x0202,
    /// The upstream server returned an error.
    UpstreamError = 0x0203,
    /// The resource (for example a connection to join) does not exist.
    ResourceNotFound = 0x0204,
    /// The resource is in use.
    ResourceConflict = 0x0205,
    /// The resource is closed.
    ResourceClosed = 0x0206,
    /// The upstream server does not appear to exist.
    UpstreamNotFound = 0x0207,
    /// The upstream server is not available.
    UpstreamUnavailable = 0x0208,
    /// The session conflicts with another one.
    SessionConflict = 0x0209,
    /// The session timed out.
    SessionTimeout = 0x020A,
    /// The session was closed.
    SessionClosed = 0x020B,
    /// The client's request was malformed.
    ClientBadRequest = 0x0300,
    /// Authentication failed or is required.
    ClientUnauthorized = 0x0301,
    /// The client is not allowed to do this.
    ClientForbidden = 0x0303,
    /// The client took too long to respond.
    ClientTimeout = 0x0308,
    /// The client sent more data than allowed.
    ClientOverrun = 0x030D,
    /// The client sent data of an unsupported type.
    ClientBadType = 0x030F,
    /// The client is already using too many resources.
    ClientTooMany = 0x031D,
}

impl Status {
    const ALL: [Status; 21] = [
        Status::Success,
        Status::Unsupported,
        Status::ServerError,
        Status::ServerBusy,
        Status::UpstreamTimeout,
        Status::UpstreamError,
        Status::ResourceNotFound,
        Status::ResourceConflict,
        Status::ResourceClosed,
        Status::UpstreamNotFound,
        Status::UpstreamUnavailable,
        Status::SessionConflict,
        Status::SessionTimeout,
        Status::SessionClosed,
        Status::ClientBadRequest,
        Status::ClientUnauthorized,
        Status::ClientForbidden,
        Status::ClientTimeout,
        Status::ClientOverrun,
        Status::ClientBadType,
        Status::ClientTooMany,
    ];

    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The status with this code, if it is one guacd defines.
    pub fn from_code(code: u16) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.code() == code)
    }

    /// guacd's name, e.g. `CLIENT_UNAUTHORIZED`.
    pub fn name(self) -> &'static str {
        match self {
            Status::Success => "SUCCESS",
            Status::Unsupported => "UNSUPPORTED",
            Status::ServerError => "SERVER_ERROR",
            Status::ServerBusy => "SERVER_BUSY",
            Status::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Status::UpstreamError => "UPSTREAM_ERROR",
            Status::ResourceNotFound => "RESOURCE_NOT_FOUND",
            Status::ResourceConflict => "RESOURCE_CONFLICT",
            Status::ResourceClosed => "RESOURCE_CLOSED",
            Status::UpstreamNotFound => "UPSTREAM_NOT_FOUND",
            Status::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Status::SessionConflict => "SESSION_CONFLICT",
            Status::SessionTimeout => "SESSION_TIMEOUT",
            Status::SessionClosed => "SESSION_CLOSED",
            Status::ClientBadRequest => "CLIENT_BAD_REQUEST",
            Status::ClientUnauthorized => "CLIENT_UNAUTHORIZED",
            Status::ClientForbidden => "CLIENT_FORBIDDEN",
            Status::ClientTimeout => "CLIENT_TIMEOUT",
            Status::ClientOverrun => "CLIENT_OVERRUN",
            Status::ClientBadType => "CLIENT_BAD_TYPE",
            Status::ClientTooMany => "CLIENT_TOO_MANY",
        }
    }
}

impl fmt::Display for Status {
    /// `NAME (code)`, e.g. `RESOURCE_NOT_FOUND (516)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_reference() {
        let expected: [(u16, &str); 21] = [
            (0, "SUCCESS"),
            (256, "UNSUPPORTED"),
            (512, "SERVER_ERROR"),
            (513, "SERVER_BUSY"),
            (514, "UPSTREAM_TIMEOUT"),
            (515, "UPSTREAM_ERROR"),
            (516, "RESOURCE_NOT_FOUND"),
            (517, "RESOURCE_CONFLICT"),
            (518, "RESOURCE_CLOSED"),
            (519, "UPSTREAM_NOT_FOUND"),
            (520, "UPSTREAM_UNAVAILABLE"),
            (521, "SESSION_CONFLICT"),
            (522, "SESSION_TIMEOUT"),
            (523, "SESSION_CLOSED"),
            (768, "CLIENT_BAD_REQUEST"),
            (769, "CLIENT_UNAUTHORIZED"),
            (771, "CLIENT_FORBIDDEN"),
            (776, "CLIENT_TIMEOUT"),
            (781, "CLIENT_OVERRUN"),
            (783, "CLIENT_BAD_TYPE"),
            (797, "CLIENT_TOO_MANY"),
        ];
        for (code, name) in expected {
            let status = Status::from_code(code).expect("known code");
            assert_eq!(status.code(), code);
            assert_eq!(status.name(), name);
        }
        assert_eq!(Status::from_code(1), None);
        assert_eq!(Status::from_code(770), None);
        assert_eq!(Status::ClientTimeout.to_string(), "CLIENT_TIMEOUT (776)");
    }
}
