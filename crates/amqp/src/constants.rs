//! Frame constants and the reply codes of AMQP 0-9-1 (with RabbitMQ's usage).

/// Frame type of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame type of a content body frame.
pub const FRAME_BODY: u8 = 3;
/// Frame type of a heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// Bytes of framing around a payload: type, channel, size before it and the end octet after.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest `frame_max` a peer may negotiate (spec 4.2.3).
pub const FRAME_MIN_SIZE: u32 = 4096;
/// The protocol header a client sends first.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// Class id of `basic`, the only content class.
pub const CLASS_BASIC: u16 = 60;

/// Reply codes, named as in the AMQP 0-9-1 spec.
pub mod reply {
    /// Success (used by a normal close).
    pub const REPLY_SUCCESS: u16 = 200;
    /// Content too large (channel).
    pub const CONTENT_TOO_LARGE: u16 = 311;
    /// Mandatory message could not be routed (basic.return).
    pub const NO_ROUTE: u16 = 312;
    /// Immediate message had no consumer (basic.return).
    pub const NO_CONSUMERS: u16 = 313;
    /// The connection was closed by an operator.
    pub const CONNECTION_FORCED: u16 = 320;
    /// Invalid path, e.g. an unknown virtual host.
    pub const INVALID_PATH: u16 = 402;
    /// Access refused (channel).
    pub const ACCESS_REFUSED: u16 = 403;
    /// Entity not found (channel).
    pub const NOT_FOUND: u16 = 404;
    /// Resource locked, e.g. an exclusive queue of another connection (channel).
    pub const RESOURCE_LOCKED: u16 = 405;
    /// Precondition failed (channel).
    pub const PRECONDITION_FAILED: u16 = 406;
    /// Malformed frame (connection).
    pub const FRAME_ERROR: u16 = 501;
    /// Bad field values in a method (connection).
    pub const SYNTAX_ERROR: u16 = 502;
    /// Method not valid in the current state (connection).
    pub const COMMAND_INVALID: u16 = 503;
    /// Channel not open or in the wrong state (connection).
    pub const CHANNEL_ERROR: u16 = 504;
    /// Unexpected frame type (connection).
    pub const UNEXPECTED_FRAME: u16 = 505;
    /// Server resources exhausted (connection).
    pub const RESOURCE_ERROR: u16 = 506;
    /// Not allowed, e.g. opening a virtual host the user may not use (connection).
    pub const NOT_ALLOWED: u16 = 530;
    /// Not implemented (connection).
    pub const NOT_IMPLEMENTED: u16 = 540;
    /// Internal error (connection).
    pub const INTERNAL_ERROR: u16 = 541;
}
