//! Redacted forms of sensitive values for logs: device tokens show their first 8 characters.

use std::fmt;

/// Displays at most the first 8 characters of a token, then an ellipsis.
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix: String = self.0.chars().take(8).collect();
        if prefix.len() < self.0.len() {
            write!(f, "{prefix}…")
        } else {
            f.write_str(&prefix)
        }
    }
}

/// The redacted form as an owned string (for API views such as the pruned-token list).
pub fn redact(token: &str) -> String {
    Redacted(token).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_show_only_eight_characters() {
        assert_eq!(redact("0123456789abcdef"), "01234567…");
        assert_eq!(redact("short"), "short");
    }
}
