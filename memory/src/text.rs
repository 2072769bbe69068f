//! Keyword analysis for BM25: the same function splits records when they are indexed and
//! queries when they are searched, so a term always means the same thing on both sides.
//!
//! Text is lower-cased, split on anything that is not a letter or digit (Unicode-aware), and
//! English stop-words and one-character terms (other than digits) are dropped. Terms longer
//! than [`MAX_TERM_BYTES`] are cut at a character boundary. No stemming: "agents" and "agent"
//! are different terms (the vector half of hybrid retrieval covers morphology).

/// Longest term kept, in bytes.
pub const MAX_TERM_BYTES: usize = 48;

/// English stop-words (the common closed-class words that carry no topic).
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

fn is_stop_word(t: &str) -> bool {
    static SET: std::sync::LazyLock<rustc_hash::FxHashSet<&'static str>> =
        std::sync::LazyLock::new(|| STOP_WORDS.iter().copied().collect());
    SET.contains(t)
}

/// The terms of `text` in order of appearance (with repeats).
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        // Common case, ASCII words: lower-cased on the stack, so stop-words and single
        // letters are dropped without allocating.
        if word.is_ascii() && word.len() <= MAX_TERM_BYTES {
            let mut buf = [0u8; MAX_TERM_BYTES];
            let low = &mut buf[..word.len()];
            low.copy_from_slice(word.as_bytes());
            low.make_ascii_lowercase();
            let t = std::str::from_utf8(low).unwrap_or_default();
            let single = t.len() == 1;
            if (single && !t.as_bytes()[0].is_ascii_digit()) || is_stop_word(t) {
                continue;
            }
            out.push(t.to_string());
            continue;
        }
        let mut t = word.to_lowercase();
        if t.len() > MAX_TERM_BYTES {
            let mut cut = MAX_TERM_BYTES;
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            t.truncate(cut);
        }
        let single = t.chars().count() == 1;
        if (single && !t.chars().all(|c| c.is_numeric())) || is_stop_word(&t) {
            continue;
        }
        out.push(t);
    }
    out
}

/// Term frequencies of `text` (sorted by term) and its length in terms (BM25's document
/// length).
pub fn term_counts(text: &str) -> (Vec<(String, u32)>, u32) {
    let mut all = terms(text);
    let len = all.len() as u32;
    all.sort_unstable();
    let mut counts: Vec<(String, u32)> = Vec::with_capacity(all.len());
    for t in all {
        match counts.last_mut() {
            Some((last, n)) if *last == t => *n += 1,
            _ => counts.push((t, 1)),
        }
    }
    (counts, len)
}

/// Text normalised for exact-duplicate detection: its terms joined by single spaces.
pub fn normalized(text: &str) -> String {
    let mut s = String::new();
    for w in text.split(|c: char| !c.is_alphanumeric()) {
        if !w.is_empty() {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&w.to_lowercase());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted_for_binary_search() {
        let mut s = STOP_WORDS.to_vec();
        s.sort_unstable();
        assert_eq!(s, STOP_WORDS);
    }

    #[test]
    fn splits_lowercases_and_drops_stop_words() {
        assert_eq!(
            terms("The Agent's KV-cache is 2x faster, naïve Über-test!"),
            [
                "agent", "kv", "cache", "2x", "faster", "naïve", "über", "test"
            ]
        );
        assert!(terms("the of and to").is_empty());
        assert!(terms("  ").is_empty());
        assert_eq!(terms("7 a b"), ["7"]);
    }

    #[test]
    fn long_terms_are_cut_on_a_char_boundary() {
        let t = terms(&"é".repeat(100));
        assert_eq!(t.len(), 1);
        assert!(t[0].len() <= MAX_TERM_BYTES);
    }

    #[test]
    fn counts_and_normal_form() {
        let (c, len) = term_counts("Router router ROUTER policy");
        assert_eq!(len, 4);
        assert_eq!(c, [("policy".to_string(), 1), ("router".to_string(), 3)]);
        assert_eq!(normalized("  Hello,   World! "), "hello world");
    }
}
