//! Notification templates: minijinja (sandboxed, no filesystem access, strict undefined), with
//! per-locale variants and per-platform options, rendered once per device.
//!
//! The rendering context is `{event, device, user}`:
//! - `event`: the event payload, plus `event.id` / `event.type` when the payload has none;
//! - `device`: platform, locale, timezone, app_version, attributes, tags;
//! - `user`: `id` plus the device's attributes (so `user.first_name` works).
//!
//! Rendering is bounded, so one app's template cannot take the CPU from everyone else: each
//! field gets [`RENDER_FUEL`] engine steps (loop iterations, filters and expressions all
//! count) and may write at most [`MAX_RENDERED_BYTES`]. Over either bound the render fails
//! for that device, with a reason, as any other render error. [`TemplateSpec::validate`]
//! also renders every field once against a sample context at save time, so a template
//! that cannot finish even without data is refused there, as is one whose payload Apple or
//! Google would refuse ([`checks`]).

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::notification::{Notification, Priority};
use super::Platform;

mod checks;

/// Text that varies by locale.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalizedText {
    /// Title template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Subtitle template (APNs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtitle: Option<String>,
    /// Body template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// A badge: a fixed number or a template rendering to one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BadgeSpec {
    /// Fixed count.
    Fixed(u32),
    /// Template such as `{{ device.attributes.unread }}`.
    Template(String),
}

/// Delivery options; set at the top level or overridden per platform.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryOptions {
    /// App icon badge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub badge: Option<BadgeSpec>,
    /// Sound name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sound: Option<String>,
    /// APNs category / FCM click action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// APNs thread id / FCM tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// APNs collapse id / FCM collapse key (template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<String>,
    /// `high` or `normal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Time to live in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// APNs push type (alert, background, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_type: Option<String>,
    /// APNs mutable-content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutable_content: Option<bool>,
    /// APNs content-available (background update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_available: Option<bool>,
    /// Image URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Android notification channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    /// Custom data; values are templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

/// A notification template as stored and as accepted by the API.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Default title template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Default subtitle template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtitle: Option<String>,
    /// Default body template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Variants by BCP-47 tag (`fr`, `fr-CA`); chosen exact tag first, then language.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub locales: BTreeMap<String, LocalizedText>,
    /// Options for every platform.
    #[serde(default)]
    pub options: DeliveryOptions,
    /// APNs-only overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apns: Option<DeliveryOptions>,
    /// FCM-only overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fcm: Option<DeliveryOptions>,
    /// `high` lets its notifications through quiet hours (unless the rule or send that uses
    /// it says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgency: Option<super::policy::Urgency>,
}

/// A template compiled for repeated rendering.
pub struct CompiledTemplate {
    env: Environment<'static>,
    spec: TemplateSpec,
    /// A save-time sample render: a field that fails for want of data renders empty (and a
    /// badge 0), so the payload around it can still be checked.
    sample: bool,
}

/// Why a template could not be compiled or rendered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TemplateError {
    /// Which template field failed (`title`, `locales.fr.body`, `fcm.data.url`).
    pub field: String,
    /// The engine's message.
    pub message: String,
    /// The render went over a bound (steps or output size), rather than failing on its own.
    pub over_bound: bool,
}

impl TemplateError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            over_bound: false,
        }
    }
}

/// Engine steps one template field may take to render. A field of an ordinary notification
/// takes tens to a few hundred; this allows loops over a few thousand items and stops a
/// runaway one within milliseconds.
pub const RENDER_FUEL: u64 = 50_000;

/// Bytes one rendered field may hold; a whole APNs or FCM payload is at most 4 KiB (5 KiB
/// for VoIP), so a larger field could never be sent anyway.
pub const MAX_RENDERED_BYTES: usize = 16 * 1024;

/// Fresh sandboxed environment: no loader, so templates cannot read files or include others.
fn environment(undefined: UndefinedBehavior) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(undefined);
    env.set_recursion_limit(32);
    env.set_fuel(Some(RENDER_FUEL));
    env
}

/// Collects a render's output, refusing to grow past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct BoundedOutput {
    text: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered output too large"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders one compiled field within the bounds.
fn render_bounded(
    env: &Environment<'static>,
    name: &str,
    ctx: &minijinja::Value,
) -> Result<String, TemplateError> {
    let error = |message: String| TemplateError::new(name, message);
    let over_bound = |message: String| TemplateError {
        over_bound: true,
        ..error(message)
    };
    let template = env.get_template(name).map_err(|e| error(e.to_string()))?;
    let mut out = BoundedOutput::default();
    match template.render_captured_to(ctx, &mut out) {
        Ok(_) => String::from_utf8(out.text).map_err(|_| error("rendered invalid UTF-8".into())),
        Err(_) if out.overflowed => Err(over_bound(format!(
            "renders to more than {MAX_RENDERED_BYTES} bytes"
        ))),
        Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(over_bound(format!(
            "takes more than {RENDER_FUEL} steps to render; simplify its loops"
        ))),
        Err(e) => Err(error(e.to_string())),
    }
}

impl TemplateSpec {
    /// Every template string with its field name.
    fn sources(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut push = |name: String, value: &Option<String>| {
            if let Some(v) = value {
                out.push((name, v.clone()));
            }
        };
        push("title".into(), &self.title);
        push("subtitle".into(), &self.subtitle);
        push("body".into(), &self.body);
        for (tag, text) in &self.locales {
            push(format!("locales.{tag}.title"), &text.title);
            push(format!("locales.{tag}.subtitle"), &text.subtitle);
            push(format!("locales.{tag}.body"), &text.body);
        }
        let mut options = vec![("options", &self.options)];
        if let Some(a) = &self.apns {
            options.push(("apns", a));
        }
        if let Some(f) = &self.fcm {
            options.push(("fcm", f));
        }
        for (prefix, o) in options {
            if let Some(BadgeSpec::Template(t)) = &o.badge {
                out.push((format!("{prefix}.badge"), t.clone()));
            }
            if let Some(c) = &o.collapse_key {
                out.push((format!("{prefix}.collapse_key"), c.clone()));
            }
            for (k, v) in &o.data {
                out.push((format!("{prefix}.data.{k}"), v.clone()));
            }
        }
        out
    }

    /// What a template must pass to be saved: [`Self::compile`], and every field renders
    /// within the bounds against a sample context. Variables the sample lacks are undefined
    /// rather than errors here, so the check reaches the loops that real data would drive.
    /// The sample render, per platform and locale variant, must also make a payload the
    /// provider accepts ([`checks`]).
    pub fn validate(&self) -> Result<CompiledTemplate, TemplateError> {
        let compiled = self.compile()?;
        checks::check_data_keys(self)?;
        let mut env = environment(UndefinedBehavior::Chainable);
        for (name, source) in self.sources() {
            env.add_template_owned(name.clone(), source)
                .map_err(|e| TemplateError::new(name, e.to_string()))?;
        }
        let sample = CompiledTemplate {
            env,
            spec: self.clone(),
            sample: true,
        };
        let variants = std::iter::once(None).chain(self.locales.keys().map(|t| Some(t.as_str())));
        for locale in variants {
            for platform in Platform::ALL {
                let device = serde_json::json!({"platform": platform.as_str(),
                    "locale": locale.unwrap_or("en"), "timezone": "UTC",
                    "attributes": {}, "tags": []});
                let ctx = context(
                    &event_value(&serde_json::json!({"id": "evt_sample", "type": "sample"})),
                    &device,
                    Some("sample-user"),
                );
                let n = sample.render(&ctx, locale, platform)?;
                checks::check_shape(self, platform, locale, &n)?;
                checks::check_payload(self, platform, locale, &n)?;
            }
        }
        Ok(compiled)
    }

    /// Checks the spec and compiles every template string.
    pub fn compile(&self) -> Result<CompiledTemplate, TemplateError> {
        if self.title.is_none()
            && self.body.is_none()
            && self.options.content_available != Some(true)
            && self.options.data.is_empty()
        {
            return Err(TemplateError::new(
                "body",
                "a template needs a title or body, data, or content_available",
            ));
        }
        for tag in self.locales.keys() {
            if crate::model::canonical_locale(tag).as_deref() != Some(tag.as_str()) {
                return Err(TemplateError::new(
                    format!("locales.{tag}"),
                    "must be a canonical BCP-47 tag such as fr or pt-BR",
                ));
            }
        }
        let mut env = environment(UndefinedBehavior::Strict);
        for (name, source) in self.sources() {
            env.add_template_owned(name.clone(), source)
                .map_err(|e| TemplateError::new(name, e.to_string()))?;
        }
        Ok(CompiledTemplate {
            env,
            spec: self.clone(),
            sample: false,
        })
    }
}

impl CompiledTemplate {
    /// The template's urgency, if it states one.
    pub fn urgency(&self) -> Option<super::policy::Urgency> {
        self.spec.urgency
    }

    fn render_field(&self, name: &str, ctx: &minijinja::Value) -> Result<String, TemplateError> {
        match render_bounded(&self.env, name, ctx) {
            // Other errors come from the sample lacking real data.
            Err(e) if self.sample && !e.over_bound => Ok(String::new()),
            rendered => rendered,
        }
    }

    /// Which locale variant a device with `locale` is rendered with, and why (previews).
    pub fn locale_choice(&self, locale: Option<&str>) -> LocaleChoice {
        let chain: Vec<String> = self
            .locale_chain(locale)
            .into_iter()
            .map(str::to_string)
            .collect();
        let reason = match (locale, chain.first()) {
            (None, _) => "the device has no locale: the default text".to_string(),
            (Some(l), None) => format!(
                "no variant for {l} or its language: the default text (variants: {})",
                self.spec
                    .locales
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (Some(l), Some(v)) if v.eq_ignore_ascii_case(l) => {
                format!("the variant {v} matches the device locale {l} exactly")
            }
            (Some(l), Some(v)) => {
                format!("no variant for {l}; {v} is the variant of its language")
            }
        };
        LocaleChoice {
            variant: chain.first().cloned(),
            chain,
            reason,
        }
    }

    /// The locale variant chain for a device locale: exact tag, then its language.
    fn locale_chain(&self, locale: Option<&str>) -> Vec<&str> {
        let Some(locale) = locale else {
            return Vec::new();
        };
        let mut chain = Vec::new();
        let language = locale.split('-').next().unwrap_or(locale);
        for candidate in [locale, language] {
            if let Some((tag, _)) = self
                .spec
                .locales
                .iter()
                .find(|(tag, _)| tag.eq_ignore_ascii_case(candidate))
            {
                if !chain.contains(&tag.as_str()) {
                    chain.push(tag.as_str());
                }
            }
        }
        chain
    }

    fn localized(
        &self,
        chain: &[&str],
        field: &str,
        pick: impl Fn(&LocalizedText) -> &Option<String>,
        default: &Option<String>,
        ctx: &minijinja::Value,
    ) -> Result<Option<String>, TemplateError> {
        for tag in chain {
            if let Some(text) = self.spec.locales.get(*tag) {
                if pick(text).is_some() {
                    return self
                        .render_field(&format!("locales.{tag}.{field}"), ctx)
                        .map(Some);
                }
            }
        }
        match default {
            Some(_) => self.render_field(field, ctx).map(Some),
            None => Ok(None),
        }
    }

    /// Renders the notification for one device on `platform` (`apns` or `fcm`).
    pub fn render(
        &self,
        ctx: &minijinja::Value,
        locale: Option<&str>,
        platform: Platform,
    ) -> Result<Notification, TemplateError> {
        let chain = self.locale_chain(locale);
        let spec = &self.spec;
        let mut n = Notification {
            title: self.localized(&chain, "title", |t| &t.title, &spec.title, ctx)?,
            subtitle: self.localized(&chain, "subtitle", |t| &t.subtitle, &spec.subtitle, ctx)?,
            body: self.localized(&chain, "body", |t| &t.body, &spec.body, ctx)?,
            ..Notification::default()
        };
        let platform_options = match platform {
            Platform::Apns => spec.apns.as_ref(),
            Platform::Fcm => spec.fcm.as_ref(),
        }
        .map(|o| (platform.as_str(), o));
        for (prefix, o) in std::iter::once(("options", &spec.options)).chain(platform_options) {
            self.apply_options(&mut n, prefix, o, ctx)?;
        }
        Ok(n)
    }

    fn apply_options(
        &self,
        n: &mut Notification,
        prefix: &str,
        o: &DeliveryOptions,
        ctx: &minijinja::Value,
    ) -> Result<(), TemplateError> {
        match &o.badge {
            Some(BadgeSpec::Fixed(b)) => n.badge = Some(*b),
            Some(BadgeSpec::Template(_)) => {
                let field = format!("{prefix}.badge");
                let text = self.render_field(&field, ctx)?;
                n.badge = Some(match text.trim().parse() {
                    Ok(badge) => badge,
                    Err(_) if self.sample => 0,
                    Err(_) => {
                        return Err(TemplateError::new(
                            field,
                            format!("rendered to {text:?}, not a non-negative integer"),
                        ))
                    }
                });
            }
            None => {}
        }
        if let Some(c) = &o.collapse_key {
            let _ = c;
            n.collapse_key = Some(self.render_field(&format!("{prefix}.collapse_key"), ctx)?);
        }
        for k in o.data.keys() {
            let v = self.render_field(&format!("{prefix}.data.{k}"), ctx)?;
            n.data.insert(k.clone(), v);
        }
        macro_rules! copy {
            ($($field:ident),*) => {$(
                if let Some(v) = &o.$field {
                    n.$field = Some(v.clone());
                }
            )*};
        }
        copy!(
            sound,
            category,
            thread_id,
            priority,
            ttl_seconds,
            push_type,
            image,
            channel_id
        );
        if let Some(m) = o.mutable_content {
            n.mutable_content = m;
        }
        if let Some(c) = o.content_available {
            n.content_available = c;
        }
        Ok(())
    }
}

/// The locale variant a device gets: the first of `chain` that has a field gives it (a
/// field none of them has comes from the default text).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LocaleChoice {
    /// The variant chosen; `None` for the default text.
    pub variant: Option<String>,
    /// The variants tried for each field, in order: the exact tag, then its language.
    pub chain: Vec<String>,
    /// Why, in words.
    pub reason: String,
}

/// The event part of the context, converted once per event and shared by every device.
pub fn event_value(event: &Value) -> minijinja::Value {
    minijinja::Value::from_serialize(event)
}

/// Builds the rendering context for one device.
pub fn context(
    event: &minijinja::Value,
    device: &Value,
    user_id: Option<&str>,
) -> minijinja::Value {
    let mut user = device
        .get("attributes")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::Object(Default::default()));
    user["id"] = user_id.map(Value::from).unwrap_or(Value::Null);
    minijinja::context! {
        event => event.clone(),
        device => minijinja::Value::from_serialize(device),
        user => minijinja::Value::from_serialize(&user),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn priority_schema_lists_exactly_the_priorities_serde_reads() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(Priority::schema()).expect("schema");
        let names: Vec<Value> = schema["enum"].as_array().expect("enum").clone();
        let mut parsed: Vec<Priority> = names
            .iter()
            .map(|n| serde_json::from_value(n.clone()).expect("a Priority"))
            .collect();
        parsed.dedup();
        assert_eq!(parsed, vec![Priority::High, Priority::Normal]);
    }

    fn spec(v: Value) -> TemplateSpec {
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn locale_variants_fall_back_from_exact_to_language_to_default() {
        let t = spec(json!({
            "title": "Payment",
            "body": "Hi {{ user.first_name }}, you got {{ event.data.amount }}",
            "locales": {
                "fr": {"body": "Salut {{ user.first_name }}"},
                "fr-CA": {"body": "Allo {{ user.first_name }}"}
            }
        }))
        .compile()
        .expect("compiles");
        let ctx = context(
            &event_value(&json!({"data": {"amount": 5}})),
            &json!({"attributes": {"first_name": "Zoé"}}),
            Some("u1"),
        );
        let body = |locale| t.render(&ctx, locale, Platform::Fcm).expect("renders").body;
        assert_eq!(body(Some("fr-CA")).as_deref(), Some("Allo Zoé"));
        assert_eq!(body(Some("fr-FR")).as_deref(), Some("Salut Zoé"));
        assert_eq!(body(Some("de")).as_deref(), Some("Hi Zoé, you got 5"));
        assert_eq!(body(None).as_deref(), Some("Hi Zoé, you got 5"));
        // Fields a variant does not translate come from the default.
        assert_eq!(
            t.render(&ctx, Some("fr"), Platform::Fcm)
                .expect("r")
                .title
                .as_deref(),
            Some("Payment")
        );
    }

    #[test]
    fn platform_options_override_the_shared_ones() {
        let t = spec(json!({
            "body": "x",
            "options": {"sound": "default", "badge": "{{ user.unread }}", "data": {"url": "/p/{{ event.id }}"}},
            "apns": {"sound": "chime.caf", "push_type": "alert", "collapse_key": "pay-{{ event.id }}"},
            "fcm": {"channel_id": "payments", "priority": "high", "ttl_seconds": 60}
        }))
        .compile()
        .expect("compiles");
        let ctx = context(
            &event_value(&json!({"id": "e1"})),
            &json!({"attributes": {"unread": 3}}),
            None,
        );
        let apns = t.render(&ctx, None, Platform::Apns).expect("apns");
        assert_eq!(apns.sound.as_deref(), Some("chime.caf"));
        assert_eq!(apns.badge, Some(3));
        assert_eq!(apns.collapse_key.as_deref(), Some("pay-e1"));
        assert_eq!(apns.data.get("url").map(String::as_str), Some("/p/e1"));
        assert_eq!(apns.channel_id, None);
        let fcm = t.render(&ctx, None, Platform::Fcm).expect("fcm");
        assert_eq!(fcm.sound.as_deref(), Some("default"));
        assert_eq!(fcm.channel_id.as_deref(), Some("payments"));
        assert_eq!(fcm.priority, Some(Priority::High));
        assert_eq!(fcm.ttl_seconds, Some(60));
    }

    #[test]
    fn errors_name_the_template_field() {
        let err = spec(json!({"body": "{{ unclosed"}))
            .compile()
            .err()
            .expect("syntax error");
        assert_eq!(err.field, "body");
        let t = spec(json!({"body": "Hi {{ user.missing }}"}))
            .compile()
            .expect("compiles");
        let err = t
            .render(
                &context(&event_value(&json!({})), &json!({}), None),
                None,
                Platform::Apns,
            )
            .expect_err("strict undefined");
        assert_eq!(err.field, "body");
        let t = spec(json!({"body": "Hi {{ user.missing | default('there') }}"}))
            .compile()
            .expect("c");
        let ok = t
            .render(
                &context(&event_value(&json!({})), &json!({}), None),
                None,
                Platform::Apns,
            )
            .expect("default filter");
        assert_eq!(ok.body.as_deref(), Some("Hi there"));
        assert!(
            spec(json!({"title": "x", "locales": {"en_US": {"body": "y"}}}))
                .compile()
                .is_err()
        );
    }

    #[test]
    fn templates_cannot_include_files() {
        let t = spec(json!({"body": "{% include '/etc/passwd' %}"}))
            .compile()
            .expect("compiles");
        assert!(t
            .render(
                &context(&event_value(&json!({})), &json!({}), None),
                None,
                Platform::Apns,
            )
            .is_err());
    }

    #[test]
    fn renders_over_the_bounds_fail_with_a_reason() {
        let ctx = context(&event_value(&json!({"n": 100_000})), &json!({}), None);
        let t = spec(json!({"body": "{% for i in range(event.n) %}{% endfor %}"}))
            .compile()
            .expect("compiles");
        let err = t
            .render(&ctx, None, Platform::Apns)
            .expect_err("out of fuel");
        assert!(err.over_bound && err.message.contains("steps"), "{err}");
        let t = spec(json!({"body": "{{ 'x' * (event.n // 4) }}"}))
            .compile()
            .expect("compiles");
        let err = t.render(&ctx, None, Platform::Apns).expect_err("too large");
        assert!(err.over_bound && err.message.contains("bytes"), "{err}");
        // Within both bounds, the same templates render.
        let small = context(&event_value(&json!({"n": 100})), &json!({}), None);
        assert_eq!(
            t.render(&small, None, Platform::Apns)
                .expect("renders")
                .body,
            Some("x".repeat(25))
        );
    }

    #[test]
    fn validation_refuses_only_what_cannot_finish_without_data() {
        let slow = "{% for i in range(20000) %}{% for j in range(20000) %}{% endfor %}{% endfor %}";
        let err = spec(json!({"body": slow}))
            .validate()
            .err()
            .expect("refused");
        assert!(err.over_bound, "{err}");
        // Undefined data is no error at save time: real events bring it.
        spec(json!({"body": "{{ event.data.amount }} {% for x in event.items %}{{ x }}{% endfor %}"}))
            .validate()
            .expect("accepted");
    }
}
