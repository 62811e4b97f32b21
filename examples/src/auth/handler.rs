//! The presentation layer: decode, validate, convert to the application's DTO, call the
//! command, pass its result on. No ack/nack decisions here.

use postroom_client::{Command, CommandResult, Handler, Incoming, Validate};

use super::application::{BlacklistEntry, from_epoch_seconds};
use super::schema::TokenBlacklisted;

/// Turns `TokenBlacklisted` messages into `BlacklistEntry` commands.
#[derive(Debug)]
pub struct BlacklistHandler<C> {
    command: C,
}

impl<C> BlacklistHandler<C> {
    /// A handler calling `command`.
    pub fn new(command: C) -> BlacklistHandler<C> {
        BlacklistHandler { command }
    }
}

impl<C: Command<BlacklistEntry>> Handler for BlacklistHandler<C> {
    async fn handle(&self, message: &Incoming) -> CommandResult {
        let event: TokenBlacklisted = match message.json() {
            Ok(event) => event,
            Err(error) => return CommandResult::invalid(error),
        };
        if let Err(reason) = event.validate() {
            return CommandResult::invalid(reason);
        }
        let Some(expires_at) = from_epoch_seconds(event.expires_at) else {
            // validate() refuses such times; checked again rather than unwrapped.
            return CommandResult::invalid(format!(
                "expires_at {} is out of range",
                event.expires_at
            ));
        };
        let entry = BlacklistEntry { jti: event.jti, user_id: event.user_id, expires_at };
        self.command.execute(entry).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A command that records its input and answers as told.
    struct MockCommand {
        answer: CommandResult,
        received: Mutex<Vec<BlacklistEntry>>,
    }

    impl Command<BlacklistEntry> for MockCommand {
        async fn execute(&self, entry: BlacklistEntry) -> CommandResult {
            self.received.lock().unwrap().push(entry);
            self.answer.clone()
        }
    }

    fn handler(answer: CommandResult) -> BlacklistHandler<MockCommand> {
        BlacklistHandler::new(MockCommand { answer, received: Mutex::new(Vec::new()) })
    }

    #[tokio::test]
    async fn a_valid_event_becomes_an_entry_and_the_commands_result_is_returned() {
        let handler = handler(CommandResult::retry());
        let body = br#"{"jti":"j-1","user_id":"u-1","expires_at":4102444800}"#.to_vec();
        assert_eq!(handler.handle(&Incoming::new(body)).await, CommandResult::retry());
        let received = handler.command.received.lock().unwrap();
        assert_eq!(received[0].jti, "j-1");
        assert_eq!(Some(received[0].expires_at), from_epoch_seconds(4_102_444_800));
    }

    #[tokio::test]
    async fn malformed_and_invalid_events_are_dead_lettered_without_calling_the_command() {
        let handler = handler(CommandResult::Success);
        for body in [
            &b"{"[..],
            br#"{"jti":"j-1"}"#,
            br#"{"jti":"","user_id":"u-1","expires_at":1}"#,
            br#"{"jti":"j","user_id":"u","expires_at":-5}"#,
            // Regression: a time past the clock's range passed validation, then panicked in
            // the conversion (a panic is requeued, so the message came back until its limit).
            br#"{"jti":"j","user_id":"u","expires_at":18446744073709551615}"#,
        ] {
            let result = handler.handle(&Incoming::new(body.to_vec())).await;
            assert!(matches!(result, CommandResult::DeadLetter { .. }), "{result}");
        }
        assert!(handler.command.received.lock().unwrap().is_empty());
    }
}
