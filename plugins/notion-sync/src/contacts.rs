//! Contacts read from Notion pages: validation and segmentation, kept apart
//! from HTTP so they are unit-tested natively.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// One page, reduced to what the sync needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    /// Page id.
    pub id: String,
    /// Property values as text (multi-selects joined with `, `).
    pub props: BTreeMap<String, String>,
}

/// The text of a property value of any common type.
pub fn property_text(prop: &Value) -> String {
    let rich = |v: &Value| {
        v.as_array().map(|a| a.iter().filter_map(|t| t["plain_text"].as_str()).collect::<String>()).unwrap_or_default()
    };
    match prop["type"].as_str().unwrap_or_default() {
        "title" => rich(&prop["title"]),
        "rich_text" => rich(&prop["rich_text"]),
        "email" => prop["email"].as_str().unwrap_or_default().to_string(),
        "phone_number" => prop["phone_number"].as_str().unwrap_or_default().to_string(),
        "url" => prop["url"].as_str().unwrap_or_default().to_string(),
        "select" | "status" => {
            let t = prop["type"].as_str().unwrap_or_default();
            prop[t]["name"].as_str().unwrap_or_default().to_string()
        }
        "multi_select" => prop["multi_select"]
            .as_array()
            .map(|a| a.iter().filter_map(|o| o["name"].as_str()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        "number" => prop["number"].as_f64().map(|n| n.to_string()).unwrap_or_default(),
        "checkbox" => prop["checkbox"].as_bool().unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

/// A contact from a page object.
pub fn from_page(page: &Value) -> Contact {
    let props = page["properties"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), property_text(v))).collect())
        .unwrap_or_default();
    Contact { id: page["id"].as_str().unwrap_or_default().to_string(), props }
}

/// Whether an address looks deliverable: one `@`, a local part, a dotted domain, no spaces.
pub fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else { return false };
    !local.is_empty()
        && !domain.contains('@')
        && !email.contains(char::is_whitespace)
        && domain.split('.').count() >= 2
        && domain.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

/// A segment and when a contact belongs to it: any listed word in any listed property.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentRule {
    /// Segment name written to the page.
    pub name: String,
    /// Properties to look in.
    pub properties: Vec<String>,
    /// Words (case-insensitive substrings); a match on any puts the contact in the segment.
    pub any_of: Vec<String>,
}

/// The gallery/wellness defaults; the first matching rule wins.
pub fn default_rules() -> Vec<SegmentRule> {
    let rule = |name: &str, props: &[&str], words: &[&str]| SegmentRule {
        name: name.into(),
        properties: props.iter().map(|s| s.to_string()).collect(),
        any_of: words.iter().map(|s| s.to_string()).collect(),
    };
    vec![
        rule("artists/gallery", &["Tags"], &["artist", "painter", "sculptor", "gallery", "photographer"]),
        rule("wellness clients", &["Tags"], &["wellness", "yoga", "massage", "reiki", "meditation"]),
        rule("business partners", &["Tags", "Company"], &["partner", "vendor", "sponsor", "supplies"]),
    ]
}

/// The segment for a contact: the first rule that matches, else `fallback`.
pub fn classify<'a>(contact: &Contact, rules: &'a [SegmentRule], fallback: &'a str) -> &'a str {
    for rule in rules {
        let hit = rule.properties.iter().any(|p| {
            let text = contact.props.get(p).map(|t| t.to_lowercase()).unwrap_or_default();
            rule.any_of.iter().any(|w| !w.is_empty() && text.contains(&w.to_lowercase()))
        });
        if hit {
            return &rule.name;
        }
    }
    fallback
}

/// Why a contact is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The email does not parse.
    Email(String),
    /// Another page has the same email.
    Duplicate(String),
}

/// Splits contacts into valid ones and invalid ones (bad email; later pages with an email already seen).
pub fn validate(contacts: &[Contact], email_property: &str) -> (Vec<Contact>, Vec<(Contact, Invalid)>) {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let (mut valid, mut invalid) = (Vec::new(), Vec::new());
    for c in contacts {
        let email = c.props.get(email_property).cloned().unwrap_or_default();
        if !valid_email(&email) {
            invalid.push((c.clone(), Invalid::Email(email)));
        } else if let Some(first) = seen.get(&email.to_lowercase()) {
            invalid.push((c.clone(), Invalid::Duplicate(first.clone())));
        } else {
            seen.insert(email.to_lowercase(), c.id.clone());
            valid.push(c.clone());
        }
    }
    (valid, invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(id: &str, email: &str, tags: &str) -> Contact {
        Contact { id: id.into(), props: BTreeMap::from([("Email".into(), email.into()), ("Tags".into(), tags.into())]) }
    }

    #[test]
    fn emails_are_checked() {
        assert!(valid_email("ana.ito@example.com"));
        assert!(!valid_email("not-an-email"));
        assert!(!valid_email("a@b"));
        assert!(!valid_email("a b@example.com"));
        assert!(!valid_email("a@@example.com"));
    }

    #[test]
    fn duplicates_keep_the_first_page() {
        let cs = [contact("1", "a@x.com", ""), contact("2", "A@x.com", ""), contact("3", "bad", "")];
        let (valid, invalid) = validate(&cs, "Email");
        assert_eq!(valid.len(), 1);
        assert_eq!(invalid[0].1, Invalid::Duplicate("1".into()));
        assert_eq!(invalid[1].1, Invalid::Email("bad".into()));
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = default_rules();
        assert_eq!(classify(&contact("1", "", "painter, yoga"), &rules, "general visitors"), "artists/gallery");
        assert_eq!(classify(&contact("1", "", "Yoga"), &rules, "general visitors"), "wellness clients");
        assert_eq!(classify(&contact("1", "", "newsletter"), &rules, "general visitors"), "general visitors");
    }

    #[test]
    fn property_values_of_each_type_read_as_text() {
        let page = serde_json::json!({"id": "p", "properties": {
            "Name": {"type": "title", "title": [{"plain_text": "Ana "}, {"plain_text": "Ito"}]},
            "Tags": {"type": "multi_select", "multi_select": [{"name": "a"}, {"name": "b"}]},
            "Segment": {"type": "select", "select": null}}});
        let c = from_page(&page);
        assert_eq!(
            (c.props["Name"].as_str(), c.props["Tags"].as_str(), c.props["Segment"].as_str()),
            ("Ana Ito", "a, b", "")
        );
    }
}
