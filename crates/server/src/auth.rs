//! SASL PLAIN and AMQPLAIN, and the user check (`guest` from loopback only, as RabbitMQ).

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use postroom_amqp::FieldTable;
use postroom_amqp::wire::Reader;

use crate::config::User;

/// Mechanisms offered in `connection.start`.
pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

/// Extracts (user, password) from a SASL response, or `None` if it is malformed or the
/// mechanism is not offered.
pub fn credentials(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            // [authzid] NUL authcid NUL passwd
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = std::str::from_utf8(parts.next()?).ok()?;
            let password = std::str::from_utf8(parts.next()?).ok()?;
            parts.next().is_none().then(|| (user.to_owned(), password.to_owned()))
        }
        "AMQPLAIN" => {
            // A field table without its length prefix.
            let mut buf = BytesMut::with_capacity(response.len() + 4);
            buf.put_u32(response.len() as u32);
            buf.put_slice(response);
            let bytes = buf.freeze();
            let table = FieldTable::decode(&mut Reader::new(&bytes)).ok()?;
            let user = table.get("LOGIN")?.as_str()?.to_owned();
            let password = table.get("PASSWORD")?.as_str()?.to_owned();
            Some((user, password))
        }
        _ => None,
    }
}

/// Whether `user` with `password` may log in from `peer`.
pub fn authenticate(users: &[User], user: &str, password: &str, peer: IpAddr) -> bool {
    let known = users.iter().any(|u| u.name == user && u.password == password);
    known && (user != "guest" || peer.is_loopback())
}

/// Whether `user` may open `vhost` (its `vhosts`, or any when it lists none).
pub fn may_open(users: &[User], user: &str, vhost: &str) -> bool {
    users.iter().filter(|u| u.name == user).any(|u| match &u.vhosts {
        None => true,
        Some(allowed) => allowed.iter().any(|v| v == vhost),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_response_is_split_on_nul() {
        assert_eq!(credentials("PLAIN", b"\0guest\0pw"), Some(("guest".into(), "pw".into())));
        assert_eq!(credentials("PLAIN", b"guest"), None);
        assert_eq!(credentials("EXTERNAL", b""), None);
    }

    #[test]
    fn guest_is_refused_from_non_loopback() {
        let users = [User::new("guest", "guest")];
        assert!(authenticate(&users, "guest", "guest", [127, 0, 0, 1].into()));
        assert!(!authenticate(&users, "guest", "guest", [10, 0, 0, 1].into()));
        assert!(!authenticate(&users, "guest", "nope", [127, 0, 0, 1].into()));
    }

    #[test]
    fn a_user_opens_the_vhosts_it_lists_or_any_when_it_lists_none() {
        let limited = User { vhosts: Some(vec!["celery".into()]), ..User::new("worker", "pw") };
        let users = [User::new("admin", "pw"), limited];
        assert!(may_open(&users, "admin", "/"));
        assert!(may_open(&users, "worker", "celery"));
        assert!(!may_open(&users, "worker", "/"));
        assert!(!may_open(&users, "nobody", "/"));
    }
}
