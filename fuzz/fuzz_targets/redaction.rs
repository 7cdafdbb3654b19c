//! Redaction's promise as a property: a secret written in any form the redactor claims (as written,
//! base64 in four variants, hex in either case; then any of its characters URL-encoded; then inside
//! a JSON string with any characters escaped) never survives in the text, whatever surrounds it;
//! and from 8 bytes on, inside the base64 of a larger text, none of the characters it alone
//! determines survive.
#![no_main]

use base64::Engine as _;
use gantry_host::capability::Redactor;
use libfuzzer_sys::{arbitrary, fuzz_target};

#[derive(arbitrary::Arbitrary, Debug)]
struct Input<'a> {
    secret: &'a str,
    before: &'a [u8],
    after: &'a [u8],
    form: u8,
    /// One choice per character for URL- and JSON-escaping and hex case.
    choices: Vec<u8>,
    url_encode: bool,
    json_escape: bool,
}

fn choice(choices: &[u8], i: usize) -> u8 {
    if choices.is_empty() {
        0
    } else {
        choices[i % choices.len()]
    }
}

/// The form before escaping; secrets under 4 bytes are claimed only as written.
fn base_form(secret: &str, form: u8, choices: &[u8]) -> String {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    if secret.len() < 4 {
        return secret.to_string();
    }
    match form % 6 {
        0 => secret.to_string(),
        1 => STANDARD.encode(secret),
        2 => STANDARD_NO_PAD.encode(secret),
        3 => URL_SAFE.encode(secret),
        4 => URL_SAFE_NO_PAD.encode(secret),
        _ => hex::encode(secret)
            .chars()
            .enumerate()
            .map(|(i, c)| if choice(choices, i) & 1 == 1 { c.to_ascii_uppercase() } else { c })
            .collect(),
    }
}

/// Any non-alphanumeric character `%XX`-encoded (either case) or kept; a space also as `+`.
fn url_encoded(text: &str, choices: &[u8]) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        let how = choice(choices, i);
        if c.is_ascii_alphanumeric() || how & 3 == 0 {
            out.push(c);
        } else if c == ' ' && how & 3 == 3 {
            out.push('+');
        } else {
            for b in c.encode_utf8(&mut [0; 4]).bytes() {
                out.push_str(&if how & 4 == 0 { format!("%{b:02X}") } else { format!("%{b:02x}") });
            }
        }
    }
    out
}

/// The inside of a JSON string, each character written plainly where JSON allows or escaped.
fn json_escaped(text: &str, choices: &[u8]) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        let how = choice(choices, i) >> 3;
        let must = c == '"' || c == '\\' || c < ' ';
        match how % 4 {
            0 if !must => out.push(c),
            0 | 1 => {
                let quoted = serde_json::to_string(&c.to_string()).expect("a string serialises");
                out.push_str(&quoted[1..quoted.len() - 1]);
            }
            2 if c == '/' => out.push_str("\\/"),
            n => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&if n == 3 { format!("\\u{unit:04X}") } else { format!("\\u{unit:04x}") });
                }
            }
        }
    }
    out
}

/// The base64 of `before + secret + after` and the part of it the secret alone determines.
fn embedded(input: &Input<'_>) -> (String, String) {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let blob = [input.before, input.secret.as_bytes(), input.after].concat();
    let encoded = if input.form & 1 == 0 { STANDARD.encode(&blob) } else { URL_SAFE_NO_PAD.encode(&blob) };
    let (k, n) = (input.before.len(), input.secret.len());
    let core = encoded[(8 * k).div_ceil(6)..8 * (k + n) / 6].to_string();
    (encoded, core)
}

fuzz_target!(|input: Input<'_>| {
    if input.secret.is_empty() {
        return;
    }
    if input.secret.len() >= 8 && input.form >= 200 {
        let (encoded, core) = embedded(&input);
        let redacted = Redactor::new([input.secret]).redact(&encoded);
        assert!(!redacted.contains(&core), "{:?} survived inside base64 as {core:?}: {redacted:?}", input.secret);
        return;
    }
    let mut encoded = base_form(input.secret, input.form, &input.choices);
    if input.url_encode {
        encoded = url_encoded(&encoded, &input.choices);
    }
    if input.json_escape {
        encoded = json_escaped(&encoded, &input.choices);
    }
    // `***` is the redaction mark: a form containing `*` can be rebuilt from marks and neighbours.
    if encoded.contains('*') {
        return;
    }
    let redactor = Redactor::new([input.secret]);
    let text = [input.before, encoded.as_bytes(), input.after].concat();
    let redacted = redactor.redact_bytes(&text);
    assert!(
        !redacted.windows(encoded.len()).any(|w| w == encoded.as_bytes()),
        "{:?} survived as {encoded:?}: {:?}",
        input.secret,
        String::from_utf8_lossy(&redacted)
    );
    if let Ok(text) = std::str::from_utf8(&text) {
        assert!(!redactor.redact(text).contains(&encoded), "{:?} survived as {encoded:?}", input.secret);
    }
});
