//! Fan-out: a received event becomes one rendered delivery job per device, written one page of
//! devices per transaction together with the event's cursor, and marked dispatched after the
//! last page. A fan-out cut short resumes after its last committed page.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{field, Instrument};

use super::{JobPayload, Worker};
use crate::model::device::normalize_token;
use crate::model::policy::{self, zone_for, Hold, QuietHours, SendPolicy, Urgency};
use crate::model::rules::{user_ids_at, Audience, DeviceFilter, RuleSpec, TemplateRef};
use crate::model::template::{context, event_value, CompiledTemplate, TemplateSpec};
use crate::model::{JobStatus, Platform};
use crate::store::{
    Device, Event, FanOutCursor, FanOutSlice, Handing, NewJob, SpecKind, Store, StoredPolicy,
    WholeFanOut,
};
use crate::telemetry;

/// Events leased per round.
const EVENT_BATCH: i64 = 128;
/// How long the dispatch loop waits, once woken with the queue drained, before it claims:
/// at a moderate rate events arrive one by one, and each claim and fan-out write (a few
/// statements and a commit) would otherwise carry one event.
const EVENT_LINGER: Duration = Duration::from_millis(10);
/// Apps' fan-out tasks running at once; the loop claims no more while this many run.
const FANOUT_TASKS: usize = 16;
/// Devices read per page when scanning by tags/attributes.
const DEVICE_PAGE: u32 = 2000;
/// Jobs of small events written together in one transaction, at most (about).
const WHOLE_BATCH_JOBS: usize = 2000;

impl Worker {
    /// Claims received events and fans them out, one task per app of each claimed batch:
    /// an app's events go one after the other, different apps' side by side, and the loop
    /// claims again without waiting for earlier tasks, so an app whose templates render
    /// slowly delays its own events, never another app's.
    pub(crate) async fn dispatch_loop(self, mut stop: watch::Receiver<bool>) {
        let lease_ms = (self.config.lease_secs * 1000) as i64;
        let mut running: JoinSet<Vec<String>> = JoinSet::new();
        let mut unmatched: Vec<String> = Vec::new();
        loop {
            while let Some(done) = running.try_join_next() {
                self.finished_app_task(done, &mut unmatched);
            }
            self.complete_unmatched(&mut unmatched).await;
            if *stop.borrow() {
                break;
            }
            if running.len() >= FANOUT_TASKS {
                tokio::select! {
                    done = running.join_next() => if let Some(done) = done {
                        self.finished_app_task(done, &mut unmatched);
                    },
                    _ = stop.wait_for(|s| *s) => {}
                }
                continue;
            }
            match self
                .store
                .claim_events(&self.owner, lease_ms, EVENT_BATCH)
                .await
            {
                Ok(events) if events.len() == EVENT_BATCH as usize => {
                    for events in by_app(events) {
                        let worker = self.clone();
                        running.spawn(async move { worker.dispatch_app(events).await });
                    }
                }
                Ok(events) => {
                    // The queue is drained: what arrives from now on is claimed on its
                    // wake-up, together, rather than by a claim as each task finishes.
                    for events in by_app(events) {
                        let worker = self.clone();
                        running.spawn(async move { worker.dispatch_app(events).await });
                    }
                    if !self
                        .wait_for_events(&mut running, &mut unmatched, &mut stop)
                        .await
                    {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "claiming events failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        // Shutdown: running fan-outs get the grace period to finish; one cut short resumes
        // from its committed cursor when its lease expires.
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        let drained = tokio::time::timeout(grace, async {
            while let Some(done) = running.join_next().await {
                self.finished_app_task(done, &mut unmatched);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                unfinished = running.len(),
                "shutdown grace over; fan-outs resume after their lease"
            );
            running.abort_all();
        }
        self.complete_unmatched(&mut unmatched).await;
    }

    /// Waits for a wake-up or the poll interval, finishing the fan-out tasks that end
    /// meanwhile, then [`EVENT_LINGER`] more, so that events arriving one by one are claimed
    /// and fanned out a few at a time rather than each on its own. False on shutdown.
    async fn wait_for_events(
        &self,
        running: &mut JoinSet<Vec<String>>,
        unmatched: &mut Vec<String>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        {
            let idle = self.idle(&self.wake.events, stop);
            tokio::pin!(idle);
            loop {
                tokio::select! {
                    keep_going = &mut idle => if keep_going {
                        break;
                    } else {
                        return false;
                    },
                    Some(done) = running.join_next(), if !running.is_empty() => {
                        self.finished_app_task(done, unmatched);
                        self.complete_unmatched(unmatched).await;
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(EVENT_LINGER) => true,
            _ = stop.wait_for(|s| *s) => false,
        }
    }

    fn finished_app_task(
        &self,
        done: Result<Vec<String>, tokio::task::JoinError>,
        unmatched: &mut Vec<String>,
    ) {
        match done {
            Ok(ids) => unmatched.extend(ids),
            // Its events stay leased and are claimed again when the lease expires.
            Err(e) => tracing::error!(error = %e, "a fan-out task failed"),
        }
    }

    /// Completes, in one statement, the events no rule matched.
    async fn complete_unmatched(&self, unmatched: &mut Vec<String>) {
        if unmatched.is_empty() {
            return;
        }
        match self.store.complete_unmatched(&self.owner, unmatched).await {
            Ok(()) => unmatched.clear(),
            // They stay leased by this worker and are claimed again after the lease.
            Err(e) => {
                tracing::error!(error = %e, "completing events without rules failed; will retry");
                unmatched.clear();
            }
        }
    }

    /// Fans out one app's claimed events in order; returns those no rule matched. Rules are
    /// read once for all of them. Events whose every audience is one page (users or tokens,
    /// as most transactional events are) are planned first, then their devices are read
    /// together, rendered together and written together, many per transaction; the others
    /// are written one committed page at a time.
    async fn dispatch_app(self, events: Vec<Event>) -> Vec<String> {
        let mut rules_by_app: HashMap<String, Vec<(Option<String>, RuleSpec)>> = HashMap::new();
        let mut templates = TemplateCache::default();
        let mut unmatched = Vec::new();
        let mut whole: Vec<WholePlan> = Vec::new();
        for event in events {
            let span = fan_out_span(&event);
            let trace = telemetry::traceparent(&span);
            let matched = self
                .rules_for(&event, &mut rules_by_app)
                .instrument(span.clone())
                .await;
            if let Ok((rules, _)) = &matched {
                span.record("rules", rules.len());
            }
            let outcome = match matched {
                Ok((rules, _)) if rules.is_empty() => {
                    span.record("outcome", "unmatched");
                    unmatched.push(event.id.clone());
                    Ok(())
                }
                Ok((rules, payload)) if is_one_page(&event, &rules) => {
                    match self
                        .plan_whole(event, rules, payload, &mut templates, trace)
                        .instrument(span.clone())
                        .await
                    {
                        Ok(plan) => {
                            whole.push(WholePlan { span, ..plan });
                            continue;
                        }
                        Err((event, e)) => {
                            span.record("outcome", "retry_later");
                            self.retry_later(&event, &e).await;
                            continue;
                        }
                    }
                }
                Ok((rules, payload)) => {
                    self.dispatch(&event, rules, payload, trace.as_deref())
                        .instrument(span.clone())
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                span.record("outcome", "retry_later");
                self.retry_later(&event, &e).await;
            }
        }
        self.fan_out_whole(whole).await;
        unmatched
    }

    /// A fan-out failed: the event goes back to the queue for another try in a few seconds.
    async fn retry_later(&self, event: &Event, e: &anyhow::Error) {
        tracing::error!(event = %event.id, error = %format!("{e:#}"), "fan-out failed; will retry");
        if let Err(e) = self
            .store
            .release_event(&event.id, &self.owner, 5_000)
            .await
        {
            tracing::error!(event = %event.id, error = %e, "releasing the event failed; its lease will expire");
        }
    }

    /// What an event whose audiences are one page each will render: per rule in name order,
    /// its template, timing and listed users or tokens. On failure the event comes back with
    /// the reason, to be retried.
    async fn plan_whole(
        &self,
        event: Event,
        mut rules: Vec<(Option<String>, RuleSpec)>,
        payload: Value,
        templates: &mut TemplateCache,
        trace: Option<String>,
    ) -> Result<WholePlan, (Event, anyhow::Error)> {
        rules.sort_by_key(|(n, _)| rule_name(n));
        let mut planned = Vec::with_capacity(rules.len());
        for (name, rule) in rules {
            let looked_up = async {
                let template = templates
                    .get(&self.store, &event.app_id, &rule.template)
                    .await?;
                let timing = self.timing(&event, &rule).await?;
                anyhow::Ok((template, timing))
            }
            .await;
            let (template, timing) = match looked_up {
                Ok(found) => found,
                Err(e) => return Err((event, e)),
            };
            let listed = match &rule.audience {
                Audience::UserIdPath(path) => Listed::Users(user_ids_at(&payload, path)),
                Audience::Users(users) => Listed::Users(users.clone()),
                Audience::Tokens(tokens) => {
                    Listed::Tokens(tokens.iter().map(|t| normalize_token(t)).collect())
                }
                Audience::Devices(_) => {
                    return Err((
                        event,
                        anyhow::anyhow!("a device filter is not a one-page audience"),
                    ))
                }
            };
            planned.push(PlannedRule {
                name: rule_name(&name),
                template,
                timing,
                listed,
            });
        }
        Ok(WholePlan {
            event_ctx: event_value(&event_context(&event, &payload)),
            event,
            rules: planned,
            trace,
            span: tracing::Span::none(),
        })
    }

    /// Reads the devices of every planned event at once, renders all their jobs on one
    /// blocking thread, and writes them in batches of about [`WHOLE_BATCH_JOBS`] jobs. A
    /// failed read sends every planned event back to the queue for another try.
    async fn fan_out_whole(&self, plans: Vec<WholePlan>) {
        let Some(first) = plans.first() else {
            return;
        };
        let app_id = first.event.app_id.clone();
        let read = async {
            let devices = AudienceDevices::read(&self.store, &app_id, &plans).await?;
            let quiet = devices.quiet_hours(&self.store, &app_id, &plans).await?;
            anyhow::Ok((devices, quiet))
        }
        .await;
        let (devices, quiet) = match read {
            Ok(read) => read,
            Err(e) => {
                for plan in &plans {
                    plan.span.record("outcome", "retry_later");
                    self.retry_later(&plan.event, &e).await;
                }
                return;
            }
        };
        let rendered = match render_plans(plans, devices, quiet).await {
            Ok(rendered) => rendered,
            // Its events stay leased and are claimed again when the lease expires.
            Err(e) => {
                tracing::error!(error = %e, "rendering a batch of events failed");
                return;
            }
        };
        let mut batch: Vec<(Event, Vec<NewJob>)> = Vec::new();
        let mut batch_jobs = 0;
        for (plan, jobs) in rendered {
            let jobs = match jobs {
                Ok(jobs) => jobs,
                Err(e) => {
                    plan.span.record("outcome", "retry_later");
                    self.retry_later(&plan.event, &e).await;
                    continue;
                }
            };
            plan.span.record("jobs", jobs.len());
            batch_jobs += jobs.len();
            batch.push((plan.event, jobs));
            if batch_jobs >= WHOLE_BATCH_JOBS {
                self.write_whole(std::mem::take(&mut batch)).await;
                batch_jobs = 0;
            }
        }
        self.write_whole(batch).await;
    }

    /// Writes a batch of whole fan-outs in one transaction; a failed write sends each event
    /// back to the queue for another try.
    async fn write_whole(&self, batch: Vec<(Event, Vec<NewJob>)>) {
        if batch.is_empty() {
            return;
        }
        let fan_outs: Vec<WholeFanOut<'_>> = batch
            .iter()
            .map(|(event, jobs)| WholeFanOut { event, jobs })
            .collect();
        // Jobs due at once go straight to this instance's sender, as many as it has room for.
        let due = batch
            .iter()
            .flat_map(|(_, jobs)| jobs)
            .filter(|j| j.status == JobStatus::Queued && j.due.is_none())
            .count();
        let room = self.handoff.as_ref().map(|h| h.room(due));
        let handing = Handing {
            max: room.as_ref().map_or(0, |r| r.len()),
            lease_ms: (self.config.lease_secs * 1000) as i64,
        };
        match self
            .store
            .write_whole_fan_outs(&self.owner, &fan_outs, handing)
            .await
        {
            Ok(written) => {
                self.metrics
                    .withheld(JobStatus::Superseded, written.superseded);
                let handed = written.handed.len() as u64;
                if let Some(room) = room {
                    room.hand(written.handed);
                }
                let (mut queued, mut dead) = (0u64, 0u64);
                for ((event, jobs), written) in batch.iter().zip(written.written) {
                    if !written {
                        tracing::warn!(event = %event.id, "lost the event's lease (or it was cancelled) before its fan-out was written; nothing of it was written");
                        continue;
                    }
                    let q = jobs
                        .iter()
                        .filter(|j| j.status == JobStatus::Queued)
                        .count() as u64;
                    (queued, dead) = (queued + q, dead + jobs.len() as u64 - q);
                    tracing::debug!(event = %event.id, jobs = jobs.len(), "event dispatched");
                }
                self.metrics.fanned_out(queued, dead);
                // The sender claims what was queued rather than handed.
                if queued > handed {
                    self.wake.jobs.notify_one();
                }
            }
            Err(e) => {
                for (event, _) in &batch {
                    self.retry_later(event, &e).await;
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
        trace: Option<&str>,
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
        rules.sort_by_key(|(n, _)| rule_name(n));
        let mut seq = event.fanout_jobs;
        let (mut queued, mut dead) = (0u64, 0u64);
        for (rule_name_opt, rule) in rules {
            let rule_name = rule_name(&rule_name_opt);
            let after = match &resume {
                Some(c) if rule_name < c.rule => continue,
                Some(c) if rule_name == c.rule => match &c.after {
                    Some(token) => Some(token.clone()),
                    None => continue,
                },
                _ => None,
            };
            let template =
                Arc::new(load_template(&self.store, &event.app_id, &rule.template).await?);
            // Devices arrive in pages; each page is rendered and committed on its own, so
            // memory stays flat however large the audience is and workers start sending while
            // later pages are written. A device appears at most once per rule: tokens are
            // unique per app, list audiences are one `IN (...)` query, and filter pages follow
            // a strictly increasing token cursor.
            let timing = self.timing(event, &rule).await?;
            let mut pages = self.audience(&event.app_id, &rule.audience, &payload, after);
            while let Some(devices) = pages.next_page(&self.store).await? {
                let timing = timing
                    .for_page(&self.store, &event.app_id, &devices)
                    .await?;
                let jobs =
                    render_page(&rule_name, &template, &event_ctx, timing, devices, trace).await?;
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
                    Some(written) => {
                        seq = written.jobs_after;
                        self.metrics
                            .withheld(JobStatus::Superseded, written.superseded);
                    }
                    None => {
                        tracing::warn!(event = %event.id, "lost the event's lease (or it was cancelled) during fan-out; it stops here");
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
        tracing::Span::current().record("jobs", queued + dead);
        if self.store.finish_fan_out(&event.id, &self.owner).await? {
            tracing::info!(event = %event.id, queued, dead, jobs = seq, "event dispatched");
        }
        Ok(())
    }

    /// When `rule`'s jobs for `event` are due, as of now.
    async fn timing(&self, event: &Event, rule: &RuleSpec) -> anyhow::Result<Timing> {
        Ok(Timing {
            now: self.store.now(),
            event_at: event.received_at,
            delivery: rule.delivery.clone(),
            app: self.policies.get(&self.store, &event.app_id).await?,
            user_quiet: Arc::default(),
        })
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
                tokens: Some(tokens.iter().map(|t| normalize_token(t)).collect()),
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
                    .devices_page(
                        app_id,
                        filter.platform.map(Platform::as_str),
                        &cursor,
                        DEVICE_PAGE,
                    )
                    .await?;
                if page.len() == DEVICE_PAGE as usize {
                    *after = page.last().map(|d| d.token.clone());
                }
                let unfiltered = filter.tags.is_empty() && filter.attributes.is_empty();
                Ok(Some(
                    page.into_iter()
                        .filter(|d| unfiltered || filter.matches(&d.tags, &d.attributes))
                        .collect(),
                ))
            }
        }
    }
}

/// The span of one event's fan-out (on this claim), a child of the span that accepted the
/// event when it was traced.
fn fan_out_span(event: &Event) -> tracing::Span {
    let span = tracing::info_span!(target: telemetry::SPANS, "event.fan_out",
        app_id = %event.app_id, event_id = %event.id, event_type = %event.event_type,
        rules = field::Empty, jobs = field::Empty, outcome = field::Empty);
    telemetry::continue_trace(&span, event.traceparent.as_deref());
    span
}

/// A rule's name in the fan-out cursor's order (`direct` for a direct send).
fn rule_name(name: &Option<String>) -> String {
    name.clone().unwrap_or_else(|| "direct".into())
}

/// Whether an event's fan-out is one page per rule (listed users or tokens), so it can be
/// rendered whole and written with other events. A fan-out already under way keeps its
/// committed slices.
fn is_one_page(event: &Event, rules: &[(Option<String>, RuleSpec)]) -> bool {
    event.fanout_cursor.is_none()
        && event.fanout_jobs == 0
        && rules
            .iter()
            .all(|(_, r)| !matches!(r.audience, Audience::Devices(_)))
}

/// An event whose audiences are one page each, planned for rendering with the app's other
/// such events.
struct WholePlan {
    event: Event,
    event_ctx: minijinja::Value,
    /// Its matching rules, in name order.
    rules: Vec<PlannedRule>,
    /// The fan-out's trace context, for the sends to continue.
    trace: Option<String>,
    /// The event's fan-out span.
    span: tracing::Span,
}

/// One rule of a planned event.
struct PlannedRule {
    name: String,
    template: Arc<Result<CompiledTemplate, String>>,
    timing: Timing,
    listed: Listed,
}

/// A one-page audience: listed users, or listed tokens (normalized).
enum Listed {
    Users(Vec<String>),
    Tokens(Vec<String>),
}

/// The active devices of every listed user and token of a batch of planned events, read
/// with one lookup per kind.
struct AudienceDevices {
    by_user: HashMap<String, Vec<Device>>,
    by_token: HashMap<String, Device>,
}

impl AudienceDevices {
    async fn read(store: &Store, app_id: &str, plans: &[WholePlan]) -> anyhow::Result<Self> {
        let (mut users, mut tokens) = (Vec::new(), Vec::new());
        for rule in plans.iter().flat_map(|p| &p.rules) {
            match &rule.listed {
                Listed::Users(u) => users.extend(u.iter().cloned()),
                Listed::Tokens(t) => tokens.extend(t.iter().cloned()),
            }
        }
        for list in [&mut users, &mut tokens] {
            list.sort_unstable();
            list.dedup();
        }
        let mut by_user: HashMap<String, Vec<Device>> = HashMap::new();
        if !users.is_empty() {
            for device in store.devices_of_users(app_id, &users).await? {
                if let Some(user) = device.user_id.clone() {
                    by_user.entry(user).or_default().push(device);
                }
            }
        }
        let by_token = if tokens.is_empty() {
            HashMap::new()
        } else {
            store
                .devices_by_tokens(app_id, &tokens)
                .await?
                .into_iter()
                .map(|d| (d.token.clone(), d))
                .collect()
        };
        Ok(Self { by_user, by_token })
    }

    /// The quiet hours the users of these devices set, when any of the app's users set some.
    async fn quiet_hours(
        &self,
        store: &Store,
        app_id: &str,
        plans: &[WholePlan],
    ) -> anyhow::Result<Arc<HashMap<String, QuietHours>>> {
        let any_preferences = plans
            .iter()
            .flat_map(|p| &p.rules)
            .any(|r| r.timing.app.has_user_preferences);
        if !any_preferences {
            return Ok(Arc::default());
        }
        let users = self
            .by_user
            .keys()
            .map(String::as_str)
            .chain(self.by_token.values().filter_map(|d| d.user_id.as_deref()));
        quiet_hours_of(store, app_id, users).await
    }

    /// A rule's devices, in token order, each once.
    fn of(&self, listed: &Listed) -> Vec<Device> {
        let mut devices: Vec<Device> = match listed {
            Listed::Users(users) => distinct(users)
                .filter_map(|u| self.by_user.get(u))
                .flatten()
                .cloned()
                .collect(),
            Listed::Tokens(tokens) => distinct(tokens)
                .filter_map(|t| self.by_token.get(t))
                .cloned()
                .collect(),
        };
        devices.sort_by(|a, b| a.token.cmp(&b.token));
        devices
    }
}

/// Each value of `list` once.
fn distinct(list: &[String]) -> impl Iterator<Item = &String> {
    let mut values: Vec<&String> = list.iter().collect();
    values.sort_unstable();
    values.dedup();
    values.into_iter()
}

/// The quiet hours that those of `users` who set their own chose.
async fn quiet_hours_of<'u>(
    store: &Store,
    app_id: &str,
    users: impl Iterator<Item = &'u str>,
) -> anyhow::Result<Arc<HashMap<String, QuietHours>>> {
    let mut users: Vec<&str> = users.collect();
    users.sort_unstable();
    users.dedup();
    Ok(Arc::new(
        store
            .preferences_of_users(app_id, &users)
            .await?
            .into_iter()
            .filter_map(|(user, prefs)| prefs.quiet_hours.map(|q| (user, q)))
            .collect(),
    ))
}

/// Renders every planned event's jobs on one blocking thread (see [`render_page`]); each
/// event's jobs, or the reason they could not be rendered, beside its plan.
async fn render_plans(
    plans: Vec<WholePlan>,
    devices: AudienceDevices,
    quiet: Arc<HashMap<String, QuietHours>>,
) -> anyhow::Result<Vec<(WholePlan, anyhow::Result<Vec<NewJob>>)>> {
    tokio::task::spawn_blocking(move || {
        plans
            .into_iter()
            .map(|plan| {
                let mut jobs = Vec::new();
                let rendered = plan.rules.iter().try_for_each(|rule| {
                    let mut timing = rule.timing.clone();
                    timing.user_quiet = quiet.clone();
                    for device in devices.of(&rule.listed) {
                        jobs.push(render_job(
                            &rule.name,
                            &rule.template,
                            &plan.event_ctx,
                            &timing,
                            &device,
                            plan.trace.as_deref(),
                        )?);
                    }
                    anyhow::Ok(())
                });
                let jobs = rendered.map(|()| jobs);
                (plan, jobs)
            })
            .collect()
    })
    .await
    .context("rendering a batch of events")
}

/// Named templates compiled once per batch of an app's events.
#[derive(Default)]
struct TemplateCache {
    named: HashMap<String, Arc<Result<CompiledTemplate, String>>>,
}

impl TemplateCache {
    async fn get(
        &mut self,
        store: &Store,
        app_id: &str,
        reference: &TemplateRef,
    ) -> anyhow::Result<Arc<Result<CompiledTemplate, String>>> {
        let TemplateRef::Named(name) = reference else {
            return Ok(Arc::new(load_template(store, app_id, reference).await?));
        };
        if let Some(t) = self.named.get(name) {
            return Ok(t.clone());
        }
        let t = Arc::new(load_template(store, app_id, reference).await?);
        self.named.insert(name.clone(), t.clone());
        Ok(t)
    }
}

/// Loads and compiles a rule's template; a missing or broken template becomes the reason
/// every job of the rule is dead-lettered.
pub(crate) async fn load_template(
    store: &Store,
    app_id: &str,
    reference: &TemplateRef,
) -> anyhow::Result<Result<CompiledTemplate, String>> {
    let spec: TemplateSpec = match reference {
        TemplateRef::Inline(spec) => (**spec).clone(),
        TemplateRef::Named(name) => match store.get_spec(SpecKind::Template, app_id, name).await? {
            Some(stored) => match serde_json::from_str(&stored.spec) {
                Ok(spec) => spec,
                Err(e) => return Ok(Err(format!("template {name} does not parse: {e}"))),
            },
            None => return Ok(Err(format!("template {name} does not exist"))),
        },
    };
    Ok(spec.compile().map_err(|e| format!("template error: {e}")))
}

/// The event as templates see it: the payload, with `id` and `type` filled in when absent.
pub(crate) fn event_context(event: &Event, payload: &Value) -> Value {
    event_context_of(&event.id, &event.event_type, payload)
}

/// [`event_context`] of an event known by its id and type (a preview's).
pub(crate) fn event_context_of(id: &str, event_type: &str, payload: &Value) -> Value {
    let mut ctx = payload.clone();
    if let Some(obj) = ctx.as_object_mut() {
        obj.entry("id").or_insert_with(|| Value::from(id));
        obj.entry("type").or_insert_with(|| Value::from(event_type));
    }
    ctx
}

/// When a rule's jobs for one event are due: the rule's delivery policy, applied at fan-out
/// time to each device in its own time zone.
#[derive(Clone, Debug)]
pub(crate) struct Timing {
    /// Fan-out time, unix ms.
    pub now: i64,
    /// When the event was received (the base of a rule's `delay`).
    pub event_at: i64,
    /// The rule's (or the send's) policy.
    pub delivery: SendPolicy,
    /// The app's policy (default zone, quiet hours).
    pub app: Arc<StoredPolicy>,
    /// The quiet hours of the users of the page being rendered who set their own.
    pub user_quiet: Arc<HashMap<String, QuietHours>>,
}

impl Timing {
    /// This timing for a page of `devices`: with the quiet hours their users set, when any
    /// of the app's users set some.
    async fn for_page(
        &self,
        store: &Store,
        app_id: &str,
        devices: &[Device],
    ) -> anyhow::Result<Self> {
        let mut timing = self.clone();
        if !self.app.has_user_preferences {
            return Ok(timing);
        }
        let users = devices.iter().filter_map(|d| d.user_id.as_deref());
        timing.user_quiet = quiet_hours_of(store, app_id, users).await?;
        Ok(timing)
    }

    /// The due time and hold, and the expiry, of a job for `device`: its user's quiet hours
    /// if they set some, else the app's, in the device's zone (else the app's, else UTC).
    /// The template's `urgency` applies when the rule or send states none, and a provider
    /// lifetime the notification carries (`ttl_seconds` above 0) also bounds the expiry.
    fn for_device(
        &self,
        device: &Device,
        urgency: Option<Urgency>,
        ttl_seconds: Option<u64>,
    ) -> (Option<(i64, Hold)>, Option<i64>) {
        let quiet = device
            .user_id
            .as_ref()
            .and_then(|u| self.user_quiet.get(u))
            .or(self.app.policy.quiet_hours.as_ref());
        let ttl_ms = ttl_seconds
            .filter(|s| *s > 0)
            .and_then(|s| i64::try_from(s.saturating_mul(1000)).ok());
        if self.delivery.is_empty() && quiet.is_none() && ttl_ms.is_none() {
            return (None, None);
        }
        let mut delivery = std::borrow::Cow::Borrowed(&self.delivery);
        if delivery.urgency.is_none() && urgency.is_some() {
            delivery.to_mut().urgency = urgency;
        }
        let zone = zone_for(
            device.timezone.as_deref(),
            self.app.policy.timezone.as_deref(),
        );
        let due = policy::due(
            self.now,
            self.event_at,
            &delivery,
            &zone,
            quiet,
            &device.token,
        );
        let lifetime = ttl_ms.map(|ttl| due.at_ms.saturating_add(ttl));
        let expires_at = match (policy::expiry(&delivery, due.at_ms), lifetime) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (due.hold.map(|h| (due.at_ms, h)), expires_at)
    }
}

/// Renders a page of jobs on a blocking thread: however long a template takes within its
/// bounds, the runtime's threads stay free for other apps' fan-outs and for sending.
/// Each job carries `trace`, the fan-out's trace context, for its send to continue.
async fn render_page(
    rule: &str,
    template: &Arc<Result<CompiledTemplate, String>>,
    event_ctx: &minijinja::Value,
    timing: Timing,
    devices: Vec<Device>,
    trace: Option<&str>,
) -> anyhow::Result<Vec<NewJob>> {
    let (rule, template, event_ctx) = (rule.to_string(), template.clone(), event_ctx.clone());
    let trace = trace.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        devices
            .iter()
            .map(|d| render_job(&rule, &template, &event_ctx, &timing, d, trace.as_deref()))
            .collect()
    })
    .await
    .context("rendering a page of jobs")?
}

/// One device's job: queued with its rendered notification, or dead with the reason it did
/// not render (or did not serialize). Fails only when not even the unrendered marker can be
/// written, which fails the fan-out rather than storing an empty job.
fn render_job(
    rule: &str,
    template: &Result<CompiledTemplate, String>,
    event_ctx: &minijinja::Value,
    timing: &Timing,
    device: &Device,
    trace: Option<&str>,
) -> anyhow::Result<NewJob> {
    let (mut collapse_key, mut ttl_seconds) = (None, None);
    let rendered = render_payload(template, event_ctx, device).and_then(|mut payload| {
        if let JobPayload::V1 {
            notification,
            traceparent,
            ..
        } = &mut payload
        {
            collapse_key.clone_from(&notification.collapse_key);
            ttl_seconds = notification.ttl_seconds;
            *traceparent = trace.map(str::to_string);
        }
        serde_json::to_string(&payload)
            .map_err(|e| format!("the rendered notification does not serialize: {e}"))
    });
    let (status, last_reason, job) = match rendered {
        Ok(job) => (JobStatus::Queued, None, job),
        Err(reason) => (
            JobStatus::Dead,
            Some(reason),
            serde_json::to_string(&JobPayload::Unrendered)
                .context("serializing an unrendered job")?,
        ),
    };
    let urgency = template.as_ref().ok().and_then(CompiledTemplate::urgency);
    let (due, expires_at) = timing.for_device(device, urgency, ttl_seconds);
    Ok(NewJob {
        rule: Some(rule.to_string()),
        platform: device.platform,
        token: device.token.clone(),
        job,
        status,
        last_reason,
        due,
        expires_at,
        collapse_key,
        user_id: device.user_id.clone(),
        category: timing.delivery.category.clone(),
    })
}

/// Renders one device's notification, or the reason it does not render.
pub(crate) fn render_payload(
    template: &Result<CompiledTemplate, String>,
    event_ctx: &minijinja::Value,
    device: &Device,
) -> Result<JobPayload, String> {
    let device_ctx = json!({
        "platform": device.platform,
        "locale": device.locale,
        "timezone": device.timezone,
        "app_version": device.app_version,
        "environment": device.environment,
        "attributes": device.attributes,
        "tags": device.tags,
    });
    let notification = template.as_ref().map_err(Clone::clone).and_then(|t| {
        let ctx = context(event_ctx, &device_ctx, device.user_id.as_deref());
        t.render(&ctx, device.locale.as_deref(), device.platform)
            .map_err(|e| format!("template error: {e}"))
    })?;
    Ok(JobPayload::V1 {
        environment: device.environment,
        topic: device.topic.clone(),
        notification,
        traceparent: None,
    })
}

/// Groups claimed events by app, keeping the claim order within and across apps.
fn by_app(events: Vec<Event>) -> Vec<Vec<Event>> {
    let mut groups: Vec<Vec<Event>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for event in events {
        let i = *index.entry(event.app_id.clone()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[i].push(event);
    }
    groups
}
