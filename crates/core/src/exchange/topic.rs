//! Topic exchanges: routing keys are dot-separated words; in a binding key `*` stands for
//! exactly one word and `#` for zero or more. As in RabbitMQ, the empty key has no words, so
//! `#` matches it and `*` does not.

/// One word of a compiled binding key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Literal(Box<str>),
    One,
    ZeroOrMore,
}

/// A compiled topic binding key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(Vec<Word>);

/// Splits a routing key into words (none for the empty key).
pub fn split(key: &str) -> Vec<&str> {
    if key.is_empty() { Vec::new() } else { key.split('.').collect() }
}

impl Pattern {
    /// Compiles a binding key. Consecutive `#` collapse into one, which matches the same keys.
    pub fn compile(binding_key: &str) -> Pattern {
        let mut words: Vec<Word> = Vec::new();
        for word in split(binding_key) {
            let word = match word {
                "*" => Word::One,
                "#" => Word::ZeroOrMore,
                w => Word::Literal(w.into()),
            };
            if word == Word::ZeroOrMore && words.last() == Some(&Word::ZeroOrMore) {
                continue;
            }
            words.push(word);
        }
        Pattern(words)
    }

    /// Whether the routing key, already [`split`], matches. Runs in O(pattern × key) by
    /// tracking the set of key positions each pattern prefix can reach, so no binding key
    /// can make it backtrack exponentially.
    pub fn matches(&self, key: &[&str]) -> bool {
        let n = key.len();
        let mut reach = vec![false; n + 1];
        reach[0] = true;
        let mut next = vec![false; n + 1];
        for word in &self.0 {
            next.iter_mut().for_each(|r| *r = false);
            match word {
                Word::ZeroOrMore => {
                    let mut any = false;
                    for i in 0..=n {
                        any |= reach[i];
                        next[i] = any;
                    }
                }
                Word::One => {
                    next[1..=n].copy_from_slice(&reach[..n]);
                }
                Word::Literal(literal) => {
                    for i in 0..n {
                        next[i + 1] = reach[i] && key[i] == &**literal;
                    }
                }
            }
            std::mem::swap(&mut reach, &mut next);
        }
        reach[n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, key: &str) -> bool {
        Pattern::compile(pattern).matches(&split(key))
    }

    #[test]
    fn literal_words_match_exactly() {
        assert!(m("a.b.c", "a.b.c"));
        assert!(!m("a.b.c", "a.b"));
        assert!(!m("a.b", "a.b.c"));
        assert!(m("", ""));
        assert!(!m("", "a"));
    }

    #[test]
    fn star_matches_exactly_one_word() {
        assert!(m("a.*.c", "a.b.c"));
        assert!(!m("a.*.c", "a.c"));
        assert!(!m("*.b", "b"));
        assert!(m("*", "x"));
        assert!(!m("*", ""));
        assert!(m("*.*", "a."));
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        assert!(m("#", ""));
        assert!(m("#", "a.b.c"));
        assert!(m("a.#", "a"));
        assert!(m("a.#", "a.b.c"));
        assert!(!m("a.#", "b.a"));
        assert!(m("#.c", "c"));
        assert!(m("a.#.c", "a.c"));
        assert!(m("a.#.c", "a.x.y.c"));
        assert!(!m("a.#.c", "a.x.y"));
        assert!(m("#.#", ""));
        assert!(m("#.*", "a"));
        assert!(!m("#.*", ""));
    }

    #[test]
    fn many_hashes_do_not_backtrack_exponentially() {
        let pattern = "#.a.#.a.#.a.#.a.#.a.#.a.#.a.#.b";
        let key = vec!["a"; 200].join(".");
        assert!(!m(pattern, &key));
    }
}
