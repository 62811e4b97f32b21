//! Direct exchanges: a binding matches when its key equals the routing key.

/// Whether a direct binding with `binding_key` matches `routing_key`.
pub fn matches(binding_key: &str, routing_key: &str) -> bool {
    binding_key == routing_key
}
