//! The wire message and its validation (the Pydantic schema of the seed).

use std::borrow::Cow;

use postroom_client::{Message, Validate};
use serde::{Deserialize, Serialize};

/// The routing key of blacklist events.
pub const ROUTING_KEY: &str = "auth.token.blacklisted";

/// "This token must no longer be accepted": published by the auth API at logout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBlacklisted {
    /// The token's id (`jti` claim).
    pub jti: String,
    /// Whose token it is.
    pub user_id: String,
    /// When the token expires anyway (seconds since the epoch); the blacklist entry may be
    /// forgotten then.
    pub expires_at: u64,
}

impl Message for TokenBlacklisted {
    const EXCHANGE: &'static str = super::EXCHANGE;
    const MESSAGE_TYPE: &'static str = "auth.token_blacklisted";
    fn routing_key(&self) -> Cow<'_, str> {
        ROUTING_KEY.into()
    }
}

impl Validate for TokenBlacklisted {
    fn validate(&self) -> Result<(), String> {
        if self.jti.is_empty() || self.jti.len() > 128 {
            return Err(format!("jti must be 1 to 128 characters, got {}", self.jti.len()));
        }
        if self.user_id.is_empty() {
            return Err("user_id is empty".into());
        }
        if self.expires_at == 0 {
            return Err("expires_at is missing".into());
        }
        if super::application::from_epoch_seconds(self.expires_at).is_none() {
            return Err(format!("expires_at {} is not a representable time", self.expires_at));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> TokenBlacklisted {
        TokenBlacklisted { jti: "j-1".into(), user_id: "u-1".into(), expires_at: 1 }
    }

    #[test]
    fn a_complete_event_is_valid() {
        assert_eq!(event().validate(), Ok(()));
    }

    #[test]
    fn empty_or_oversized_fields_are_invalid() {
        let cases = [
            TokenBlacklisted { jti: String::new(), ..event() },
            TokenBlacklisted { jti: "x".repeat(129), ..event() },
            TokenBlacklisted { user_id: String::new(), ..event() },
            TokenBlacklisted { expires_at: 0, ..event() },
            TokenBlacklisted { expires_at: u64::MAX, ..event() },
        ];
        for case in cases {
            assert!(case.validate().is_err(), "{case:?}");
        }
    }
}
