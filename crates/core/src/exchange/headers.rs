//! Headers exchanges: a binding's arguments are matched against the message's headers.
//! `x-match` is `all` (default), `any`, `all-with-x` or `any-with-x`; without `-with-x`,
//! arguments starting with `x-` are not compared (RabbitMQ 3.10+). An argument of type
//! void matches any message that has the header at all.

use postroom_amqp::{FieldTable, FieldValue};

use crate::error::{BrokerError, Result};

/// The argument that selects the matching mode.
pub const X_MATCH: &str = "x-match";

/// A compiled headers binding.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    all: bool,
    arguments: FieldTable,
}

impl HeaderMatch {
    /// Compiles the binding arguments.
    ///
    /// # Errors
    /// `PreconditionFailed` for an `x-match` value other than the four modes.
    pub fn compile(arguments: &FieldTable) -> Result<HeaderMatch> {
        let (all, with_x) = match arguments.get(X_MATCH) {
            None => (true, false),
            Some(value) => match value.as_str() {
                Some("all") => (true, false),
                Some("any") => (false, false),
                Some("all-with-x") => (true, true),
                Some("any-with-x") => (false, true),
                _ => {
                    return Err(BrokerError::PreconditionFailed(format!(
                        "Invalid x-match field value {value:?}; expected all, any, all-with-x, \
                         or any-with-x"
                    )));
                }
            },
        };
        let arguments = arguments
            .iter()
            .filter(|(k, _)| *k != X_MATCH && (with_x || !k.starts_with("x-")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(HeaderMatch { all, arguments })
    }

    /// Whether a message with these headers matches.
    pub fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let matches_one = |(key, expected): (&postroom_amqp::ShortStr, &FieldValue)| match headers
            .and_then(|h| h.get(key))
        {
            None => false,
            Some(_) if *expected == FieldValue::Void => true,
            Some(actual) => actual == expected,
        };
        if self.all {
            self.arguments.iter().all(matches_one)
        } else {
            self.arguments.iter().any(matches_one)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries.iter().map(|(k, v)| ((*k).into(), v.clone())).collect()
    }

    #[test]
    fn all_requires_every_argument() {
        let rule = HeaderMatch::compile(&table(&[("a", "1".into()), ("b", "2".into())])).unwrap();
        assert!(rule.matches(Some(&table(&[("a", "1".into()), ("b", "2".into())]))));
        assert!(!rule.matches(Some(&table(&[("a", "1".into())]))));
        assert!(!rule.matches(None));
    }

    #[test]
    fn any_requires_one_argument() {
        let args = table(&[("x-match", "any".into()), ("a", "1".into()), ("b", "2".into())]);
        let rule = HeaderMatch::compile(&args).unwrap();
        assert!(rule.matches(Some(&table(&[("b", "2".into())]))));
        assert!(!rule.matches(Some(&table(&[("b", "3".into())]))));
    }

    #[test]
    fn x_arguments_count_only_with_x_modes() {
        let plain = HeaderMatch::compile(&table(&[("x-k", "1".into())])).unwrap();
        assert!(plain.matches(Some(&table(&[]))));
        let with_x =
            HeaderMatch::compile(&table(&[("x-match", "all-with-x".into()), ("x-k", "1".into())]))
                .unwrap();
        assert!(!with_x.matches(Some(&table(&[]))));
        assert!(with_x.matches(Some(&table(&[("x-k", "1".into())]))));
    }

    #[test]
    fn void_argument_matches_presence() {
        let rule = HeaderMatch::compile(&table(&[("a", FieldValue::Void)])).unwrap();
        assert!(rule.matches(Some(&table(&[("a", 5i64.into())]))));
        assert!(!rule.matches(Some(&table(&[("b", 5i64.into())]))));
    }

    #[test]
    fn bad_x_match_is_refused() {
        assert!(HeaderMatch::compile(&table(&[("x-match", "most".into())])).is_err());
    }
}
