//! Rules: which events notify whom, with which template.
//!
//! A rule matches an event type (exact or glob: `payment.*`), optionally a condition
//! (a minijinja expression over the event, e.g. `data.amount > 100`), and names an audience
//! and a template (by name or inline).

use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::policy::SendPolicy;
use super::template::TemplateSpec;
use super::Platform;

/// A rule as stored and accepted by the API.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RuleSpec {
    /// Event type pattern; `*` matches any run of characters, `?` one character.
    #[schema(min_length = 1, max_length = 256, example = "payment.*")]
    pub event: String,
    /// Optional condition evaluated against the event payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Who receives the notification.
    pub audience: Audience,
    /// What they receive.
    pub template: TemplateRef,
    /// Disabled rules never match.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// When and for how long its notifications may go out (`delay`, `deliver_at_local`,
    /// `expires_at`, ...), given beside the rule's other fields.
    #[serde(flatten)]
    pub delivery: SendPolicy,
    /// Fields a rule does not have, refused by [`RuleSpec::validate`] (flattened fields
    /// cannot be refused by serde itself).
    #[serde(flatten, skip_serializing)]
    #[schema(ignore)]
    pub unknown: Map<String, Value>,
}

fn enabled() -> bool {
    true
}

/// Who a rule notifies.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Audience {
    /// User ids read from the event at this dotted path (a string or an array of strings).
    UserIdPath(String),
    /// Fixed user ids.
    Users(Vec<String>),
    /// Devices whose tags and attributes match.
    Devices(DeviceFilter),
    /// Explicit registered tokens.
    Tokens(Vec<String>),
}

/// Device selection by tags, attributes and platform; an empty filter selects every device.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceFilter {
    /// Every listed tag must be present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Every listed attribute must equal the given JSON value.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
    /// Only this platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl DeviceFilter {
    /// Whether a device with these tags and attributes matches.
    pub fn matches(&self, tags: &[String], attributes: &Value) -> bool {
        self.tags.iter().all(|t| tags.contains(t))
            && self
                .attributes
                .iter()
                .all(|(k, v)| attributes.get(k) == Some(v))
    }
}

/// A template by name or inline.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum TemplateRef {
    /// A named template of the app.
    Named(String),
    /// A template given in place.
    Inline(Box<TemplateSpec>),
}

/// Why a rule is invalid.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleError {
    /// Offending field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn rule_error(field: impl Into<String>, message: impl Into<String>) -> RuleError {
    RuleError {
        field: field.into(),
        message: message.into(),
    }
}

const MAX_LIST: usize = 10_000;

impl RuleSpec {
    /// Checks everything that can be checked without the database.
    pub fn validate(&self) -> Result<(), RuleError> {
        if let Some(field) = self.unknown.keys().next() {
            return Err(rule_error(field.as_str(), "unknown field"));
        }
        self.delivery
            .validate()
            .map_err(|e| rule_error(e.field, e.message))?;
        if self.event.is_empty() || self.event.chars().count() > 256 {
            return Err(rule_error("event", "must be 1-256 characters"));
        }
        if let Some(c) = &self.condition {
            condition_env()
                .compile_expression(c)
                .map_err(|e| rule_error("condition", e.to_string()))?;
        }
        match &self.audience {
            Audience::UserIdPath(p) if p.is_empty() || p.split('.').any(str::is_empty) => {
                return Err(rule_error("audience.user_id_path", "must be a dotted path"))
            }
            Audience::Users(u) if u.is_empty() || u.len() > MAX_LIST => {
                return Err(rule_error(
                    "audience.users",
                    format!("must list 1-{MAX_LIST} users"),
                ))
            }
            Audience::Tokens(t) if t.is_empty() || t.len() > MAX_LIST => {
                return Err(rule_error(
                    "audience.tokens",
                    format!("must list 1-{MAX_LIST} tokens"),
                ))
            }
            _ => {}
        }
        match &self.template {
            TemplateRef::Named(n) if n.is_empty() => {
                Err(rule_error("template", "must name a template"))
            }
            TemplateRef::Inline(spec) => spec
                .validate()
                .map(|_| ())
                .map_err(|e| rule_error(format!("template.{}", e.field), e.message)),
            TemplateRef::Named(_) => Ok(()),
        }
    }

    /// Whether the rule applies to an event of `event_type` with `payload`.
    /// A condition that cannot be evaluated (missing field, type error) does not match.
    pub fn matches(&self, event_type: &str, payload: &Value) -> bool {
        if !self.enabled || !glob_match(&self.event, event_type) {
            return false;
        }
        let Some(condition) = &self.condition else {
            return true;
        };
        let env = condition_env();
        let Ok(expr) = env.compile_expression(condition) else {
            return false;
        };
        let mut ctx = payload.as_object().cloned().unwrap_or_default();
        ctx.insert("event".into(), payload.clone());
        ctx.entry("type").or_insert_with(|| Value::from(event_type));
        match expr.eval(Value::Object(ctx)) {
            Ok(v) => v.is_true(),
            Err(e) => {
                tracing::debug!(error = %e, "rule condition did not evaluate; no match");
                false
            }
        }
    }
}

fn condition_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// Reads user ids from `payload` at a dotted `path`: a string, a number or an array of them.
pub fn user_ids_at(payload: &Value, path: &str) -> Vec<String> {
    let found = path.split('.').try_fold(payload, |v, k| v.get(k));
    let one = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match found {
        Some(Value::Array(items)) => items.iter().filter_map(one).collect(),
        Some(v) => one(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Glob match with `*` (any run, including empty) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs_match_event_types() {
        assert!(glob_match("payment.*", "payment.succeeded"));
        assert!(glob_match("payment.*", "payment."));
        assert!(!glob_match("payment.*", "payments.x"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("build.?ailed", "build.failed"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    fn rule(condition: Option<&str>) -> RuleSpec {
        RuleSpec {
            event: "payment.*".into(),
            condition: condition.map(str::to_string),
            audience: Audience::UserIdPath("data.user_id".into()),
            template: TemplateRef::Named("t".into()),
            enabled: true,
            delivery: Default::default(),
            unknown: Default::default(),
        }
    }

    #[test]
    fn conditions_filter_events() {
        let big = json!({"data": {"amount": 150, "user_id": "u1"}});
        let small = json!({"data": {"amount": 50}});
        let r = rule(Some("data.amount > 100"));
        assert!(r.matches("payment.succeeded", &big));
        assert!(!r.matches("payment.succeeded", &small));
        assert!(!r.matches("refund.created", &big));
        assert!(
            !r.matches("payment.succeeded", &json!({"other": 1})),
            "missing field = no match"
        );
        assert!(rule(Some(
            "event.data.amount >= 150 and type == 'payment.succeeded'"
        ))
        .matches("payment.succeeded", &big));
        assert!(rule(Some("data.amount >")).validate().is_err());
    }

    #[test]
    fn user_ids_come_from_strings_numbers_or_arrays() {
        let p = json!({"a": {"one": "u1", "many": ["u2", "u3", 4], "num": 7}});
        assert_eq!(user_ids_at(&p, "a.one"), vec!["u1"]);
        assert_eq!(user_ids_at(&p, "a.many"), vec!["u2", "u3", "4"]);
        assert_eq!(user_ids_at(&p, "a.num"), vec!["7"]);
        assert!(user_ids_at(&p, "a.none").is_empty());
    }

    #[test]
    fn audiences_parse_from_json() {
        let spec: RuleSpec = serde_json::from_value(json!({
            "event": "x", "audience": {"devices": {"tags": ["beta"], "attributes": {"plan": "pro"}}},
            "template": {"body": "hi"}
        }))
        .expect("parses");
        assert!(spec.validate().is_ok());
        let Audience::Devices(f) = &spec.audience else {
            panic!("devices")
        };
        assert!(f.matches(&["beta".into()], &json!({"plan": "pro"})));
        assert!(!f.matches(&[], &json!({"plan": "pro"})));
        assert!(!f.matches(&["beta".into()], &json!({"plan": "free"})));
    }
}
