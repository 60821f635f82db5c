//! Fan-out: a received event becomes one rendered delivery job per device, written one page of
//! devices per transaction together with the event's cursor, and marked dispatched after the
//! last page. A fan-out cut short resumes after its last committed page.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{JobPayload, Worker};
use crate::rules::{user_ids_at, Audience, DeviceFilter, RuleSpec, TemplateRef};
use crate::store::{Device, Event, FanOutCursor, FanOutSlice, JobStatus, NewJob, SpecKind, Store};
use crate::template::{context, event_value, CompiledTemplate, TemplateSpec};

/// Events leased per round.
const EVENT_BATCH: i64 = 128;
/// Devices read per page when scanning by tags/attributes.
const DEVICE_PAGE: u32 = 2000;

impl Worker {
    pub(crate) async fn dispatch_loop(self, mut stop: watch::Receiver<bool>) {
        let lease_ms = (self.config.lease_secs * 1000) as i64;
        loop {
            if *stop.borrow() {
                return;
            }
            match self
                .store
                .claim_events(&self.owner, lease_ms, EVENT_BATCH)
                .await
            {
                Ok(events) if !events.is_empty() => {
                    // Rules are read once per app per round; events no rule matches are
                    // completed together in one statement.
                    let mut rules_by_app: HashMap<String, Vec<(Option<String>, RuleSpec)>> =
                        HashMap::new();
                    let mut unmatched = Vec::new();
                    for event in events {
                        let outcome = match self.rules_for(&event, &mut rules_by_app).await {
                            Ok((rules, _)) if rules.is_empty() => {
                                unmatched.push(event.id.clone());
                                Ok(())
                            }
                            Ok((rules, payload)) => self.dispatch(&event, rules, payload).await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = outcome {
                            tracing::error!(event = %event.id, error = %format!("{e:#}"), "fan-out failed; will retry");
                            let _ = self
                                .store
                                .release_event(&event.id, &self.owner, 5_000)
                                .await;
                        }
                    }
                    if !unmatched.is_empty() {
                        if let Err(e) = self.store.complete_unmatched(&self.owner, &unmatched).await
                        {
                            tracing::error!(error = %e, "completing events without rules failed; will retry");
                        }
                    }
                }
                Ok(_) => {
                    if !self.idle(&self.wake.events, &mut stop).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "claiming events failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// The rules that apply to an event (its own rule for a direct send), and its payload.
    async fn rules_for(
        &self,
        event: &Event,
        cache: &mut HashMap<String, Vec<(Option<String>, RuleSpec)>>,
    ) -> anyhow::Result<(Vec<(Option<String>, RuleSpec)>, Value)> {
        let payload: Value = serde_json::from_str(&event.payload)?;
        if let Some(rule) = &event.direct_rule {
            return Ok((vec![(None, serde_json::from_str(rule)?)], payload));
        }
        if !cache.contains_key(&event.app_id) {
            let rules = self
                .store
                .list_specs(SpecKind::Rule, &event.app_id)
                .await?
                .into_iter()
                .filter_map(|n| match serde_json::from_str(&n.spec) {
                    Ok(spec) => Some((Some(n.name), spec)),
                    Err(e) => {
                        tracing::error!(rule = %n.name, error = %e, "stored rule does not parse; skipped");
                        None
                    }
                })
                .collect();
            cache.insert(event.app_id.clone(), rules);
        }
        let matching = cache
            .get(&event.app_id)
            .map(|rules| {
                rules
                    .iter()
                    .filter(|(_, r)| r.matches(&event.event_type, &payload))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        Ok((matching, payload))
    }

    /// Renders and writes one event's jobs for its matching rules, one committed slice per page
    /// of devices, resuming after the event's cursor when an earlier fan-out was cut short.
    async fn dispatch(
        &self,
        event: &Event,
        mut rules: Vec<(Option<String>, RuleSpec)>,
        payload: Value,
    ) -> anyhow::Result<()> {
        let lease_ms = (self.config.lease_secs * 1000) as i64;
        let event_ctx = event_value(&event_context(event, &payload));
        let resume: Option<FanOutCursor> = event
            .fanout_cursor
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .context("reading the event's fan-out cursor")?;
        // The cursor's order: rules by name, compared here rather than in SQL, whose collation
        // may differ between databases.
        let name = |n: &Option<String>| n.clone().unwrap_or_else(|| "direct".into());
        rules.sort_by_key(|(n, _)| name(n));
        let mut seq = event.fanout_jobs;
        let (mut queued, mut dead) = (0u64, 0u64);
        for (rule_name, rule) in rules {
            let rule_name = name(&rule_name);
            let after = match &resume {
                Some(c) if rule_name < c.rule => continue,
                Some(c) if rule_name == c.rule => match &c.after {
                    Some(token) => Some(token.clone()),
                    None => continue,
                },
                _ => None,
            };
            let template = self.template(&event.app_id, &rule.template).await?;
            // Devices arrive in pages; each page is rendered and committed on its own, so
            // memory stays flat however large the audience is and workers start sending while
            // later pages are written. A device appears at most once per rule: tokens are
            // unique per app, list audiences are one `IN (...)` query, and filter pages follow
            // a strictly increasing token cursor.
            let mut pages = self.audience(&event.app_id, &rule.audience, &payload, after);
            while let Some(devices) = pages.next_page(&self.store).await? {
                let jobs: Vec<NewJob> = devices
                    .iter()
                    .map(|d| render_job(&rule_name, &template, &event_ctx, d))
                    .collect();
                let cursor = FanOutCursor {
                    rule: rule_name.clone(),
                    after: pages.resume_after(),
                };
                let slice = FanOutSlice {
                    jobs: &jobs,
                    cursor: &cursor,
                };
                match self
                    .store
                    .write_fan_out_slice(event, &self.owner, lease_ms, seq, slice)
                    .await?
                {
                    Some(total) => seq = total,
                    None => {
                        tracing::warn!(event = %event.id, "lost the event's lease during fan-out; its new holder continues");
                        return Ok(());
                    }
                }
                let slice_queued = jobs
                    .iter()
                    .filter(|j| j.status == JobStatus::Queued)
                    .count() as u64;
                let slice_dead = jobs.len() as u64 - slice_queued;
                self.metrics.fanned_out(slice_queued, slice_dead);
                (queued, dead) = (queued + slice_queued, dead + slice_dead);
                if slice_queued > 0 {
                    self.wake.jobs.notify_one();
                }
            }
        }
        if self.store.finish_fan_out(&event.id, &self.owner).await? {
            tracing::info!(event = %event.id, queued, dead, jobs = seq, "event dispatched");
        }
        Ok(())
    }

    /// Loads and compiles a rule's template; a missing or broken template becomes the reason
    /// every job of the rule is dead-lettered.
    async fn template(
        &self,
        app_id: &str,
        reference: &TemplateRef,
    ) -> anyhow::Result<Result<CompiledTemplate, String>> {
        let spec: TemplateSpec = match reference {
            TemplateRef::Inline(spec) => (**spec).clone(),
            TemplateRef::Named(name) => match self
                .store
                .get_spec(SpecKind::Template, app_id, name)
                .await?
            {
                Some(stored) => match serde_json::from_str(&stored.spec) {
                    Ok(spec) => spec,
                    Err(e) => return Ok(Err(format!("template {name} does not parse: {e}"))),
                },
                None => return Ok(Err(format!("template {name} does not exist"))),
            },
        };
        Ok(spec.compile().map_err(|e| format!("template error: {e}")))
    }

    /// The devices a rule addresses, as a pager.
    /// `after`: resume a filter audience after this token.
    fn audience(
        &self,
        app_id: &str,
        audience: &Audience,
        payload: &Value,
        after: Option<String>,
    ) -> AudiencePages {
        let app_id = app_id.to_string();
        match audience {
            Audience::UserIdPath(path) => AudiencePages::Users {
                app_id,
                users: Some(user_ids_at(payload, path)),
            },
            Audience::Users(users) => AudiencePages::Users {
                app_id,
                users: Some(users.clone()),
            },
            Audience::Tokens(tokens) => AudiencePages::Tokens {
                app_id,
                tokens: Some(
                    tokens
                        .iter()
                        .map(|t| {
                            if t.bytes().all(|b| b.is_ascii_hexdigit()) {
                                t.to_ascii_lowercase()
                            } else {
                                t.clone()
                            }
                        })
                        .collect(),
                ),
            },
            Audience::Devices(filter) => AudiencePages::Filter {
                app_id,
                filter: filter.clone(),
                after: Some(after.unwrap_or_default()),
            },
        }
    }
}

/// Pages of an audience's devices.
enum AudiencePages {
    /// Devices of listed users (one page).
    Users {
        app_id: String,
        users: Option<Vec<String>>,
    },
    /// Registered devices among listed tokens (one page).
    Tokens {
        app_id: String,
        tokens: Option<Vec<String>>,
    },
    /// Every device matching a filter, scanned in token order.
    Filter {
        app_id: String,
        filter: DeviceFilter,
        after: Option<String>,
    },
}

impl AudiencePages {
    /// Where the next page starts, while there is one.
    fn resume_after(&self) -> Option<String> {
        match self {
            Self::Filter { after, .. } => after.clone(),
            Self::Users { .. } | Self::Tokens { .. } => None,
        }
    }

    async fn next_page(&mut self, store: &Store) -> anyhow::Result<Option<Vec<Device>>> {
        match self {
            Self::Users { app_id, users } => match users.take() {
                Some(u) => Ok(Some(store.devices_of_users(app_id, &u).await?)),
                None => Ok(None),
            },
            Self::Tokens { app_id, tokens } => match tokens.take() {
                Some(t) => Ok(Some(store.devices_by_tokens(app_id, &t).await?)),
                None => Ok(None),
            },
            Self::Filter {
                app_id,
                filter,
                after,
            } => {
                let Some(cursor) = after.take() else {
                    return Ok(None);
                };
                let page = store
                    .devices_page(app_id, filter.platform.as_deref(), &cursor, DEVICE_PAGE)
                    .await?;
                if page.len() == DEVICE_PAGE as usize {
                    *after = page.last().map(|d| d.token.clone());
                }
                let unfiltered = filter.tags.is_empty() && filter.attributes.is_empty();
                Ok(Some(
                    page.into_iter()
                        .filter(|d| {
                            unfiltered || filter.matches(&d.tags_list(), &d.attributes_json())
                        })
                        .collect(),
                ))
            }
        }
    }
}

/// The event as templates see it: the payload, with `id` and `type` filled in when absent.
fn event_context(event: &Event, payload: &Value) -> Value {
    let mut ctx = payload.clone();
    if let Some(obj) = ctx.as_object_mut() {
        obj.entry("id")
            .or_insert_with(|| Value::from(event.id.clone()));
        obj.entry("type")
            .or_insert_with(|| Value::from(event.event_type.clone()));
    }
    ctx
}

fn render_job(
    rule: &str,
    template: &Result<CompiledTemplate, String>,
    event_ctx: &minijinja::Value,
    device: &Device,
) -> NewJob {
    let device_ctx = json!({
        "platform": device.platform,
        "locale": device.locale,
        "timezone": device.timezone,
        "app_version": device.app_version,
        "environment": device.environment,
        "attributes": device.attributes_json(),
        "tags": device.tags_list(),
    });
    let rendered = template.as_ref().map_err(Clone::clone).and_then(|t| {
        let ctx = context(event_ctx, &device_ctx, device.user_id.as_deref());
        t.render(&ctx, device.locale.as_deref(), &device.platform)
            .map_err(|e| format!("template error: {e}"))
    });
    let (status, last_reason, notification) = match rendered {
        Ok(n) => (JobStatus::Queued, None, n),
        Err(reason) => (JobStatus::Dead, Some(reason), Default::default()),
    };
    let payload = JobPayload::V1 {
        environment: device.environment.clone(),
        topic: device.topic.clone(),
        notification,
    };
    NewJob {
        rule: Some(rule.to_string()),
        platform: device.platform.clone(),
        token: device.token.clone(),
        job: serde_json::to_string(&payload).unwrap_or_default(),
        status,
        last_reason,
    }
}
