//! Dead-letter replay, for the API and the dashboard alike. A dead letter that was rendered
//! goes back to the queue as it is. One whose template never rendered is rendered again
//! first, from its event, its rule as it is now and the device as it is registered now, so a
//! fixed template takes effect; one that still does not render stays dead with the new
//! reason. Nothing unrendered is ever queued.

use std::collections::HashMap;

use anyhow::Context;

use super::dispatch::{event_context, load_template, render_payload};
use super::JobPayload;
use crate::model::rules::RuleSpec;
use crate::model::template::event_value;
use crate::store::{DeadLetter, Event, SpecKind, Store};

/// Which dead letters to replay.
#[derive(Clone, Copy, Debug, Default)]
pub struct Selection<'a> {
    /// Exactly these (of the app), if given.
    pub ids: Option<&'a [String]>,
    /// Only this event's.
    pub event_id: Option<&'a str>,
    /// Only those that died at or after this time, unix ms.
    pub since_ms: Option<i64>,
}

/// What a replay did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Dead letters back in the queue.
    pub requeued: u64,
    /// Dead letters that still do not render, with the reason; they stay dead.
    pub not_rendered: Vec<(String, String)>,
}

/// Replays the selected dead letters of `app_id`.
pub async fn replay_dead(
    store: &Store,
    app_id: &str,
    selection: Selection<'_>,
) -> anyhow::Result<Report> {
    let dead = store
        .dead_letters(
            app_id,
            selection.ids,
            selection.event_id,
            selection.since_ms,
        )
        .await?;
    let mut events: HashMap<String, Option<Event>> = HashMap::new();
    let mut requeue = Vec::with_capacity(dead.len());
    let mut not_rendered = Vec::new();
    for letter in dead {
        let rendered = serde_json::from_str::<JobPayload>(&letter.job)
            .ok()
            .and_then(JobPayload::into_rendered)
            .is_some();
        if rendered {
            requeue.push((letter.id, None));
            continue;
        }
        match render_again(store, app_id, &letter, &mut events).await? {
            Ok(payload) => requeue.push((letter.id, Some(payload))),
            Err(reason) => not_rendered.push((letter.id, reason)),
        }
    }
    let requeued = store.requeue_dead(app_id, &requeue).await?;
    store.keep_dead(app_id, &not_rendered).await?;
    Ok(Report {
        requeued,
        not_rendered,
    })
}

/// Renders a dead letter again: its serialized payload, or why it still cannot be rendered.
async fn render_again(
    store: &Store,
    app_id: &str,
    letter: &DeadLetter,
    events: &mut HashMap<String, Option<Event>>,
) -> anyhow::Result<Result<String, String>> {
    if !events.contains_key(&letter.event_id) {
        let event = store.get_event(app_id, &letter.event_id).await?;
        events.insert(letter.event_id.clone(), event);
    }
    let Some(Some(event)) = events.get(&letter.event_id) else {
        return Ok(Err("its event no longer exists".into()));
    };
    let rule: RuleSpec = match (&event.direct_rule, letter.rule.as_deref()) {
        (Some(direct), _) => serde_json::from_str(direct).context("reading a direct send")?,
        (None, Some(name)) => match store.get_spec(SpecKind::Rule, app_id, name).await? {
            Some(stored) => match serde_json::from_str(&stored.spec) {
                Ok(rule) => rule,
                Err(e) => return Ok(Err(format!("rule {name} does not parse: {e}"))),
            },
            None => return Ok(Err(format!("rule {name} no longer exists"))),
        },
        (None, None) => return Ok(Err("the job names no rule".into())),
    };
    let Some(device) = store.get_device(app_id, &letter.token).await? else {
        return Ok(Err("the device is no longer registered".into()));
    };
    let template = load_template(store, app_id, &rule.template).await?;
    let payload: serde_json::Value =
        serde_json::from_str(&event.payload).context("reading the event payload")?;
    let event_ctx = event_value(&event_context(event, &payload));
    let rendered =
        tokio::task::spawn_blocking(move || render_payload(&template, &event_ctx, &device))
            .await
            .context("rendering a replayed job")?;
    Ok(rendered.and_then(|p| serde_json::to_string(&p).map_err(|e| e.to_string())))
}
