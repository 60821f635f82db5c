//! What Apple and Google would refuse or ignore in a template, found when it is saved: a
//! stated push type or priority its content contradicts, options a background push cannot
//! carry, reserved data keys, and payloads over a provider's limit. The shape checks and the
//! sizes come from the requests the senders build from a sample render, so they follow the
//! same rules as a real send.

use super::{DeliveryOptions, TemplateError, TemplateSpec};
use crate::model::{Notification, Platform, Priority};
use crate::push::apns::request::{ApnsRequest, DeliveryOptions as ApnsDelivery};
use crate::push::apns::wire::{push_type, reason};
use crate::push::fcm::request::{is_reserved_data_key, request_body};
use crate::push::Outcome;

/// Topic and token the sample requests are built for; neither is sent anywhere.
const SAMPLE_TOPIC: &str = "com.example.sample";
const SAMPLE_TOKEN: &str = "sample-token";

impl TemplateSpec {
    /// The section (`options`, `apns`, `fcm`) whose value of an option applies on
    /// `platform`, with that value: the platform's override, else the shared one.
    fn stated<'s, T>(
        &'s self,
        platform: Platform,
        pick: impl Fn(&'s DeliveryOptions) -> Option<T>,
    ) -> Option<(&'static str, T)> {
        let own = match platform {
            Platform::Apns => self.apns.as_ref(),
            Platform::Fcm => self.fcm.as_ref(),
        };
        own.and_then(|o| pick(o).map(|v| (platform.as_str(), v)))
            .or_else(|| pick(&self.options).map(|v| ("options", v)))
    }
}

/// Custom data keys neither provider lets through: `aps` (Apple's dictionary; FCM data
/// reaches Apple devices as top-level keys too) and, in data bound for FCM, Google's.
pub(super) fn check_data_keys(spec: &TemplateSpec) -> Result<(), TemplateError> {
    let sections = [
        ("options", Some(&spec.options)),
        ("apns", spec.apns.as_ref()),
        ("fcm", spec.fcm.as_ref()),
    ];
    for (prefix, options) in sections {
        let Some(options) = options else { continue };
        for key in options.data.keys() {
            let field = || format!("{prefix}.data.{key}");
            if key == "aps" {
                return Err(TemplateError::new(
                    field(),
                    "aps is Apple's dictionary in the payload; a custom key cannot use it",
                ));
            }
            if prefix != "apns" && is_reserved_data_key(key) {
                return Err(TemplateError::new(
                    field(),
                    "FCM reserves this key (from, message_type, and keys starting with \
                     google or gcm); rename it",
                ));
            }
        }
    }
    Ok(())
}

/// `" in the fr variant"`, or nothing for the default text.
fn variant_note(locale: Option<&str>) -> String {
    locale
        .map(|tag| format!(" (in the {tag} variant)"))
        .unwrap_or_default()
}

/// The push type and priority `n` (one platform's and locale's sample render) goes out with
/// must agree with what the template states, and a background push carries nothing but
/// `content-available`.
pub(super) fn check_shape(
    spec: &TemplateSpec,
    platform: Platform,
    locale: Option<&str>,
    n: &Notification,
) -> Result<(), TemplateError> {
    let note = variant_note(locale);
    let error = |prefix: &str, option: &str, message: String| {
        TemplateError::new(format!("{prefix}.{option}"), message)
    };
    if let Some((prefix, stated)) = spec.stated(platform, |o| o.push_type.as_deref()) {
        if !push_type::ALL.contains(&stated) {
            return Err(error(
                prefix,
                "push_type",
                format!(
                    "must be one of Apple's push types: {}",
                    push_type::ALL.join(", ")
                ),
            ));
        }
        if stated == push_type::BACKGROUND && !n.is_background() {
            return Err(error(
                prefix,
                "push_type",
                format!(
                    "a background push shows nothing, but this template has a title, \
                     subtitle, body, badge or sound{note}"
                ),
            ));
        }
        if stated == push_type::ALERT && n.is_background() {
            return Err(error(
                prefix,
                "push_type",
                format!("an alert push needs a title, subtitle, body, badge or sound{note}"),
            ));
        }
    }
    if !ApnsDelivery::of(n, 0).is_background() {
        return Ok(());
    }
    let why = format!("this template shows nothing{note}, so it goes out as a background push");
    // On FCM a stated `high` is Android's priority; the APNs block still gets 5.
    if platform == Platform::Apns {
        if let Some((prefix, Priority::High)) = spec.stated(platform, |o| o.priority) {
            return Err(error(
                prefix,
                "priority",
                format!("{why}, which Apple accepts only at priority normal (apns-priority 5)"),
            ));
        }
    }
    if let Some((prefix, false)) = spec.stated(platform, |o| o.content_available) {
        return Err(error(
            prefix,
            "content_available",
            format!("{why}, which needs content-available; leave the option out"),
        ));
    }
    let display_only = [
        (
            "category",
            spec.stated(platform, |o| o.category.as_ref().map(|_| ())),
        ),
        (
            "thread_id",
            spec.stated(platform, |o| o.thread_id.as_ref().map(|_| ())),
        ),
        (
            "mutable_content",
            spec.stated(platform, |o| o.mutable_content.filter(|m| *m).map(|_| ())),
        ),
    ];
    for (option, stated) in display_only {
        if let Some((prefix, ())) = stated {
            return Err(error(
                prefix,
                option,
                format!("{why}, whose aps may hold only content-available; remove the option"),
            ));
        }
    }
    Ok(())
}

/// The requests the senders would build from `n` (a sample render, in which missing data is
/// empty) must fit the provider's limits; over one, the template's own text is too long.
pub(super) fn check_payload(
    spec: &TemplateSpec,
    platform: Platform,
    locale: Option<&str>,
    n: &Notification,
) -> Result<(), TemplateError> {
    let refused = match platform {
        Platform::Apns => ApnsRequest::build(n, SAMPLE_TOPIC, 0).err(),
        Platform::Fcm => request_body(SAMPLE_TOKEN, n, 0).err(),
    };
    let Some(Outcome::Failed { reason: why }) = refused else {
        return Ok(());
    };
    let note = variant_note(locale);
    match why.as_str() {
        reason::PAYLOAD_TOO_LARGE => {
            let (provider, limit) = match platform {
                Platform::Apns => ("APNs", crate::push::apns::wire::MAX_PAYLOAD_BYTES),
                Platform::Fcm => ("FCM", crate::push::fcm::wire::MAX_PAYLOAD_BYTES),
            };
            Err(TemplateError::new(
                longest_source(spec, platform, locale),
                format!(
                    "the template's own text{note} already makes the {provider} payload larger                      than its {limit}-byte limit"
                ),
            ))
        }
        reason::BAD_COLLAPSE_ID => {
            let prefix = spec
                .stated(platform, |o| o.collapse_key.as_ref().map(|_| ()))
                .map_or("options", |(p, ())| p);
            Err(TemplateError::new(
                format!("{prefix}.collapse_key"),
                format!(
                    "renders longer than APNs' {}-byte collapse id limit even without data",
                    crate::push::apns::wire::MAX_COLLAPSE_ID_BYTES
                ),
            ))
        }
        // Anything else depends on the real device or data.
        _ => Ok(()),
    }
}

/// The longest template field that goes into `platform`'s payload for `locale`: the one to
/// shorten when the payload is too large.
fn longest_source(spec: &TemplateSpec, platform: Platform, locale: Option<&str>) -> String {
    let variant = locale.map(|tag| format!("locales.{tag}."));
    let own = format!("{}.", platform.as_str());
    spec.sources()
        .into_iter()
        .filter(|(name, _)| {
            ["title", "subtitle", "body"].contains(&name.as_str())
                || name.starts_with("options.")
                || name.starts_with(&own)
                || variant.as_deref().is_some_and(|v| name.starts_with(v))
        })
        .max_by_key(|(_, source)| source.len())
        .map_or_else(|| platform.as_str().to_string(), |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::TemplateSpec;

    fn spec(v: Value) -> TemplateSpec {
        serde_json::from_value(v).expect("spec")
    }

    fn refused_field(v: Value) -> String {
        match spec(v.clone()).validate() {
            Ok(_) => panic!("accepted: {v}"),
            Err(e) => e.field,
        }
    }

    #[test]
    fn a_stated_push_type_or_priority_must_agree_with_the_content() {
        let data_only = json!({"options": {"data": {"sync": "inbox"}}});
        spec(data_only.clone())
            .validate()
            .expect("a data-only template");
        let with = |section: &str, option: Value| {
            let mut t = data_only.clone();
            t[section] = option;
            t
        };
        let high = json!({"priority": "high", "data": {"sync": "inbox"}});
        assert_eq!(refused_field(with("options", high)), "options.priority");
        assert_eq!(
            refused_field(with("apns", json!({"priority": "high"}))),
            "apns.priority"
        );
        // High is Android's priority for a data message; Apple devices still get 5.
        spec(with("fcm", json!({"priority": "high"})))
            .validate()
            .expect("high on FCM");
        assert_eq!(
            refused_field(json!({"title": "Hi", "apns": {"push_type": "background"}})),
            "apns.push_type"
        );
        assert_eq!(
            refused_field(json!({"options": {"push_type": "alert", "data": {"k": "v"}}})),
            "options.push_type"
        );
        assert_eq!(
            refused_field(json!({"body": "x", "options": {"push_type": "banner"}})),
            "options.push_type"
        );
        // A locale variant that adds text is no background push either.
        let err = spec(
            json!({"options": {"push_type": "background", "data": {"k": "v"}},
                              "locales": {"fr": {"title": "Salut"}}}),
        )
        .validate()
        .err()
        .expect("refused");
        assert_eq!(err.field, "options.push_type");
        assert!(err.message.contains("fr variant"), "{err}");
        spec(json!({"body": "x", "options": {"badge": 1, "push_type": "alert"}}))
            .validate()
            .expect("an alert with text");
        spec(json!({"options": {"push_type": "alert", "badge": 3, "content_available": true}}))
            .validate()
            .expect("a badge is an alert");
    }

    #[test]
    fn a_background_push_cannot_carry_display_options() {
        for (option, value) in [
            ("category", json!("NEW_MAIL")),
            ("thread_id", json!("inbox")),
            ("mutable_content", json!(true)),
            ("content_available", json!(false)),
        ] {
            let mut t = json!({"options": {"data": {"k": "v"}}});
            t["options"][option] = value;
            assert_eq!(refused_field(t), format!("options.{option}"));
        }
        spec(json!({"options": {"data": {"k": "v"}, "mutable_content": false}}))
            .validate()
            .expect("a flag that is off");
    }

    #[test]
    fn reserved_data_keys_are_refused_naming_the_key() {
        for (t, field) in [
            (
                json!({"body": "x", "options": {"data": {"google.x": "1"}}}),
                "options.data.google.x",
            ),
            (
                json!({"body": "x", "fcm": {"data": {"from": "me"}}}),
                "fcm.data.from",
            ),
            (
                json!({"body": "x", "options": {"data": {"gcm.notification.e": "1"}}}),
                "options.data.gcm.notification.e",
            ),
            (
                json!({"body": "x", "options": {"data": {"message_type": "1"}}}),
                "options.data.message_type",
            ),
            (
                json!({"body": "x", "apns": {"data": {"aps": "1"}}}),
                "apns.data.aps",
            ),
        ] {
            assert_eq!(refused_field(t), field);
        }
        // Google's reserved keys mean nothing to APNs.
        spec(json!({"body": "x", "apns": {"data": {"from": "me"}}}))
            .validate()
            .expect("APNs-only data");
    }

    #[test]
    fn static_text_over_a_payload_limit_is_refused_naming_the_longest_field() {
        let long = "x".repeat(4100);
        let err = spec(json!({"title": "Hi", "body": long}))
            .validate()
            .err()
            .expect("refused");
        assert_eq!(err.field, "body");
        assert!(err.message.contains("4096"), "{err}");
        // Only the FCM data is too long for FCM: APNs never sees it.
        let err = spec(json!({"title": "Hi", "fcm": {"data": {"blob": "y".repeat(4100)}}}))
            .validate()
            .err()
            .expect("refused");
        assert_eq!(err.field, "fcm.data.blob");
        assert!(err.message.contains("FCM"), "{err}");
        let err = spec(json!({"title": "Hi", "locales": {"de": {"body": "z".repeat(4100)}}}))
            .validate()
            .err()
            .expect("refused");
        assert_eq!(err.field, "locales.de.body");
        assert_eq!(
            refused_field(json!({"body": "x", "apns": {"collapse_key": "c".repeat(65)}})),
            "apns.collapse_key"
        );
        // Text that data fills in is measured empty.
        spec(json!({"title": "Hi", "body": "{{ event.text }}", "options": {"badge": "{{ user.n }}"}}))
            .validate()
            .expect("sized by its data");
    }
}
