//! Locales: BCP-47 language tags as devices register them and templates key translations by.

/// Validates a BCP-47 language tag (RFC 5646 "langtag" or private use) and returns it in
/// canonical case: `en-us` becomes `en-US`, `zh-hant-tw` becomes `zh-Hant-TW`.
pub fn canonical_locale(tag: &str) -> Option<String> {
    if tag.is_empty() || tag.len() > 64 {
        return None;
    }
    let subtags: Vec<&str> = tag.split('-').collect();
    let alnum = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    let alpha = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    let digit = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut out: Vec<String> = Vec::with_capacity(subtags.len());
    let mut i = 0;
    let first = subtags[0];
    if first.eq_ignore_ascii_case("x") {
        // Private-use tag: x-<1..8 alnum>+
        if subtags.len() < 2 || !subtags[1..].iter().all(|s| alnum(s) && s.len() <= 8) {
            return None;
        }
        return Some(tag.to_ascii_lowercase());
    }
    if !(alpha(first) && (2..=8).contains(&first.len()) && first.len() != 4) {
        return None;
    }
    out.push(first.to_ascii_lowercase());
    i += 1;
    // extlang: up to three 3-letter subtags after a 2-3 letter language
    let mut extlangs = 0;
    while first.len() <= 3
        && extlangs < 3
        && i < subtags.len()
        && subtags[i].len() == 3
        && alpha(subtags[i])
    {
        out.push(subtags[i].to_ascii_lowercase());
        i += 1;
        extlangs += 1;
    }
    // script
    if i < subtags.len() && subtags[i].len() == 4 && alpha(subtags[i]) {
        let s = subtags[i].to_ascii_lowercase();
        out.push(format!("{}{}", s[..1].to_ascii_uppercase(), &s[1..]));
        i += 1;
    }
    // region
    if i < subtags.len()
        && ((subtags[i].len() == 2 && alpha(subtags[i]))
            || (subtags[i].len() == 3 && digit(subtags[i])))
    {
        out.push(subtags[i].to_ascii_uppercase());
        i += 1;
    }
    // variants
    while i < subtags.len() {
        let s = subtags[i];
        let is_variant = alnum(s)
            && ((5..=8).contains(&s.len()) || (s.len() == 4 && s.as_bytes()[0].is_ascii_digit()));
        if !is_variant {
            break;
        }
        out.push(s.to_ascii_lowercase());
        i += 1;
    }
    // extensions and private use
    while i < subtags.len() {
        let singleton = subtags[i];
        if singleton.len() != 1 || !alnum(singleton) {
            return None;
        }
        let private = singleton.eq_ignore_ascii_case("x");
        let min = if private { 1 } else { 2 };
        out.push(singleton.to_ascii_lowercase());
        i += 1;
        let start = i;
        while i < subtags.len()
            && subtags[i].len() >= min
            && subtags[i].len() <= 8
            && alnum(subtags[i])
        {
            if !private && subtags[i].len() == 1 {
                break;
            }
            out.push(subtags[i].to_ascii_lowercase());
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    Some(out.join("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locales_are_validated_and_canonicalized() {
        for (input, want) in [
            ("en", "en"),
            ("en-us", "en-US"),
            ("zh-hant-tw", "zh-Hant-TW"),
            ("es-419", "es-419"),
            ("de-CH-1996", "de-CH-1996"),
            ("sl-rozaj-biske", "sl-rozaj-biske"),
            ("en-US-u-ca-gregory", "en-US-u-ca-gregory"),
            ("x-whatever", "x-whatever"),
        ] {
            assert_eq!(canonical_locale(input).as_deref(), Some(want), "{input}");
        }
        for bad in [
            "",
            "e",
            "en_US",
            "english-language-tag",
            "en--US",
            "123",
            "en-US-",
            "en-a",
            "toolonglang",
        ] {
            assert_eq!(canonical_locale(bad), None, "{bad}");
        }
    }
}
