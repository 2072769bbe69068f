//! Text helpers shared by the crate: cutting strings without splitting a character.

/// The longest prefix of `s` that is at most `max` bytes and ends on a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub fn clip_owned(s: &mut String, max: usize) {
    let at = s.floor_char_boundary(max);
    s.truncate(at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_never_splits_a_character() {
        let euros = "€".repeat(65);
        for max in 0..=euros.len() + 2 {
            let c = clip(&euros, max);
            assert!(c.len() <= max && c.len().is_multiple_of(3), "{max}");
            let mut o = euros.clone();
            clip_owned(&mut o, max);
            assert_eq!(o, c);
        }
        assert_eq!(clip("abc", 2), "ab");
        assert_eq!(clip("abc", 10), "abc");
    }
}
