//! The ELBv2 Query API calls the shift needs, signed by the host with SigV4.

use gantry_sdk::{Context, Error, Sigv4};

/// One target group of a forward action and its weight.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Weighted {
    /// Target group ARN.
    pub arn: String,
    /// Weight, 0–999.
    pub weight: u32,
}

/// Where and as whom to call ELBv2.
pub struct Elb<'a> {
    pub ctx: &'a Context,
    pub endpoint: String,
    pub region: String,
    pub access_key_secret: String,
    pub secret_key_secret: String,
    pub session_token_secret: Option<String>,
}

const VERSION: &str = "2015-12-01";

/// Attempts of one API call, and the wait before the second (doubling after).
const ATTEMPTS: (u32, u64) = (4, 250);

impl Elb<'_> {
    /// One API call, retried on 5xx, `Throttling` and transport errors: every call the shift makes is
    /// idempotent (reads, and `ModifyListener` with absolute weights).
    fn call(&self, action: &str, params: &[(String, String)]) -> Result<String, Error> {
        let (attempts, wait_ms) = ATTEMPTS;
        gantry_sdk::retrying(attempts, wait_ms, || self.call_once(action, params))
    }

    fn call_once(&self, action: &str, params: &[(String, String)]) -> Result<String, Error> {
        let mut pairs: Vec<(&str, &str)> = vec![("Action", action), ("Version", VERSION)];
        pairs.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let response = self
            .ctx
            .http()
            .post(&self.endpoint)
            .form(&pairs)
            .aws_sigv4(Sigv4::aws(
                "elasticloadbalancing",
                &self.region,
                &self.access_key_secret,
                &self.secret_key_secret,
                self.session_token_secret.as_deref(),
            ))
            .send()
            .map_err(|e| e.during(format_args!("ELBv2 {action}")))?;
        let body = response.text();
        if response.is_success() {
            // A 2xx that is not the action's answer (a proxy's garbage, a cut-off body) proves nothing was done.
            let expected = format!("{action}Response");
            let parsed = roxmltree::Document::parse(&body).map(|d| d.root_element().tag_name().name() == expected);
            return match parsed {
                Ok(true) => Ok(body),
                _ => Err(Error::retryable(format!(
                    "ELBv2 {action} answered {} without a {expected}: {}",
                    response.status(),
                    body.chars().take(80).collect::<String>()
                ))),
            };
        }
        let (code, message) = error_of(&body);
        let text = format!("ELBv2 {action} answered {}: {code}: {message}", response.status());
        if response.status() >= 500 || response.status() == 429 || code == "Throttling" {
            Err(Error::retryable(text))
        } else {
            Err(Error::failed(text))
        }
    }

    /// The listener's forward weights.
    pub fn weights(&self, listener: &str) -> Result<Vec<Weighted>, Error> {
        let body = self.call("DescribeListeners", &[("ListenerArns.member.1".into(), listener.into())])?;
        parse_weights(&body)
    }

    /// Sets the listener's default action to forward with `weights`.
    pub fn set_weights(&self, listener: &str, weights: &[Weighted]) -> Result<(), Error> {
        let mut params = vec![
            ("ListenerArn".to_string(), listener.to_string()),
            ("DefaultActions.member.1.Type".into(), "forward".into()),
        ];
        for (i, w) in weights.iter().enumerate() {
            let base = format!("DefaultActions.member.1.ForwardConfig.TargetGroups.member.{}", i + 1);
            params.push((format!("{base}.TargetGroupArn"), w.arn.clone()));
            params.push((format!("{base}.Weight"), w.weight.to_string()));
        }
        self.call("ModifyListener", &params).map(|_| ())
    }

    /// Every target of a group with its state (`healthy`, `unhealthy`, `unused`, ...), as `(id, state)`.
    pub fn target_states(&self, target_group: &str) -> Result<Vec<(String, String)>, Error> {
        let body = self.call("DescribeTargetHealth", &[("TargetGroupArn".into(), target_group.into())])?;
        let doc = roxmltree::Document::parse(&body).map_err(|e| Error::failed(format!("DescribeTargetHealth: {e}")))?;
        let mut states = Vec::new();
        for member in doc.descendants().filter(|n| n.has_tag_name("TargetHealthDescriptions")) {
            for d in member.children().filter(|n| n.has_tag_name("member")) {
                states.push((text(&d, "Id").unwrap_or_default(), text(&d, "State").unwrap_or_default()));
            }
        }
        Ok(states)
    }
}

fn text(node: &roxmltree::Node, tag: &str) -> Option<String> {
    node.descendants().find(|n| n.has_tag_name(tag)).and_then(|n| n.text()).map(|t| t.trim().to_string())
}

/// `Code` and `Message` of an `<ErrorResponse>`.
pub fn error_of(body: &str) -> (String, String) {
    match roxmltree::Document::parse(body) {
        Ok(doc) => {
            let root = doc.root();
            (
                text(&root, "Code").unwrap_or_else(|| "UnknownError".into()),
                text(&root, "Message").unwrap_or_else(|| body.chars().take(200).collect()),
            )
        }
        Err(_) => ("UnknownError".into(), body.chars().take(200).collect()),
    }
}

/// The forward weights of the first listener in a `DescribeListeners` answer.
pub fn parse_weights(body: &str) -> Result<Vec<Weighted>, Error> {
    let doc = roxmltree::Document::parse(body).map_err(|e| Error::failed(format!("DescribeListeners: {e}")))?;
    let action = doc
        .descendants()
        .find(|n| n.has_tag_name("DefaultActions"))
        .and_then(|a| a.children().find(|n| n.has_tag_name("member")))
        .ok_or_else(|| Error::failed("DescribeListeners: the listener has no default action"))?;
    let mut weights = Vec::new();
    if let Some(groups) = action.descendants().find(|n| n.has_tag_name("TargetGroups")) {
        for m in groups.children().filter(|n| n.has_tag_name("member")) {
            let arn = text(&m, "TargetGroupArn").unwrap_or_default();
            let weight = text(&m, "Weight").and_then(|w| w.parse().ok()).unwrap_or(1);
            weights.push(Weighted { arn, weight });
        }
    }
    if weights.is_empty() {
        // A plain forward action: one target group takes everything.
        if let Some(arn) = action.children().find(|n| n.has_tag_name("TargetGroupArn")).and_then(|n| n.text()) {
            weights.push(Weighted { arn: arn.trim().to_string(), weight: 1 });
        }
    }
    if weights.is_empty() {
        return Err(Error::failed("DescribeListeners: the default action does not forward to a target group"));
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_read_from_forward_config_or_a_plain_forward() {
        let xml = r#"<DescribeListenersResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"><DescribeListenersResult><Listeners><member><DefaultActions><member><Type>forward</Type><ForwardConfig><TargetGroups><member><TargetGroupArn>arn:b</TargetGroupArn><Weight>75</Weight></member><member><TargetGroupArn>arn:g</TargetGroupArn><Weight>25</Weight></member></TargetGroups></ForwardConfig></member></DefaultActions></member></Listeners></DescribeListenersResult></DescribeListenersResponse>"#;
        let w = parse_weights(xml).unwrap();
        assert_eq!(w, vec![Weighted { arn: "arn:b".into(), weight: 75 }, Weighted { arn: "arn:g".into(), weight: 25 }]);
        let plain = "<R><DefaultActions><member><Type>forward</Type><TargetGroupArn>arn:b</TargetGroupArn></member></DefaultActions></R>";
        assert_eq!(parse_weights(plain).unwrap(), vec![Weighted { arn: "arn:b".into(), weight: 1 }]);
    }

    #[test]
    fn error_responses_give_code_and_message() {
        let xml = "<ErrorResponse><Error><Type>Sender</Type><Code>ListenerNotFound</Code><Message>One or more listeners not found</Message></Error></ErrorResponse>";
        assert_eq!(error_of(xml), ("ListenerNotFound".into(), "One or more listeners not found".into()));
    }
}
