//! A call's plan: the policy (within the configured ceiling), the remote block, the budgets
//! and each target's exclusions decide which targets a call tries, best first.

use super::*;

impl Router {
    /// Resolves an explicit model name.
    fn resolve(&self, name: &str, kind: ModelKind) -> Result<Target, RouterError> {
        if let Some(e) = self.inference.list().into_iter().find(|e| e.id == name) {
            if e.kind != kind.name() {
                return Err(RouterError::WrongKind {
                    model: name.into(),
                    kind: e.kind,
                });
            }
            return Ok(Target::Local(e.id));
        }
        if let Some((prov, model)) = name.split_once('/')
            && let Some(p) = self
                .providers
                .read()
                .ok()
                .and_then(|m| m.get(prov).cloned())
        {
            let Some(m) = p.config.model(model).cloned() else {
                return Err(RouterError::UnknownModel(name.into()));
            };
            if m.kind != kind {
                return Err(RouterError::WrongKind {
                    model: name.into(),
                    kind: m.kind.name(),
                });
            }
            return Ok(Target::Remote(p, m));
        }
        Err(RouterError::UnknownModel(name.into()))
    }

    /// The policy of a call: its own when it chose one within the configured policy (a
    /// ceiling it can only narrow), else the configured one.
    fn call_policy(ctx: &CallContext, s: &RouterSettings) -> Result<Policy, RouterError> {
        match ctx.policy {
            None => Ok(s.policy),
            Some(p) if p.within(s.policy) => Ok(p),
            Some(p) => Err(RouterError::Forbidden(format!(
                "policy {} is wider than the configured policy {}: a call may only narrow it \
                 (local-only, then prefer-local, then cheapest, fastest and best-quality)",
                p.name(),
                s.policy.name()
            ))),
        }
    }

    /// Why remote targets are out for this call, if they are.
    fn remote_block(ctx: &CallContext, s: &RouterSettings, policy: Policy) -> Option<String> {
        if s.offline {
            Some("the router is offline (no remote call)".into())
        } else if ctx.sensitive {
            Some("the call is marked sensitive, so its data never leaves the appliance".into())
        } else if policy == Policy::LocalOnly {
            Some("policy local-only allows no remote call".into())
        } else {
            None
        }
    }

    fn spent_today(&self, caller: Option<&str>) -> Result<f64, RouterError> {
        let today = (unix_now() / 86_400) as u32;
        Ok(self
            .ledger
            .usage(today, today, caller)?
            .iter()
            .map(|r| r.4.cost_usd)
            .sum())
    }

    /// Checks the token budgets; returns the cost budget left today (`None`: unlimited).
    fn check_budgets(
        &self,
        ctx: &CallContext,
        s: &RouterSettings,
        need: u64,
    ) -> Result<Option<f64>, RouterError> {
        let now = unix_now();
        let hour = now / 3600;
        let label = ctx.caller.label();
        let agent = match &ctx.caller {
            Caller::Agent { name, .. } => s
                .budgets
                .agents
                .get(name)
                .map(|b| (format!("agent {name}'s"), b)),
            Caller::Api => None,
        };
        let scopes = [
            Some(("the global".to_string(), &s.budgets.global, None)),
            agent.map(|(n, b)| (n, b, Some(label.as_str()))),
        ];
        let mut cost_left: Option<f64> = None;
        for (scope, budget, who) in scopes.into_iter().flatten() {
            if let Some(limit) = budget.tokens_per_hour {
                let used = self.ledger.tokens_in_hour(hour, who)?;
                if used.saturating_add(need) > limit {
                    return Err(RouterError::Budget {
                        message: format!(
                            "{scope} token budget is spent: {used} of {limit} tokens used this hour and this call may need {need}"
                        ),
                        cost: false,
                        retry_after: Some(3600 - now % 3600),
                    });
                }
            }
            if let Some(limit) = budget.cost_per_day_usd {
                let left = limit - self.spent_today(who)?;
                cost_left = Some(cost_left.map_or(left, |c: f64| c.min(left)));
            }
        }
        Ok(cost_left)
    }

    /// Why a target is not eligible now, or `None`.
    fn exclusion(
        &self,
        t: &Target,
        ctx: &CallContext,
        est_cost: f64,
        cost_left: Option<f64>,
    ) -> Option<Exclusion> {
        let name = t.name();
        if let Target::Remote(p, _) = t {
            let now = Instant::now();
            if let Ok(h) = self.health.lock()
                && let Some(h) = h.get(&p.config.name)
            {
                if !h.breaker.would_allow(now) {
                    return Some(Exclusion::Unavailable(
                        format!("{name}: circuit breaker open"),
                        h.breaker.retry_in(now).unwrap_or(Duration::from_secs(1)),
                    ));
                }
                if let Some(until) = h.rate_limited_until.filter(|u| *u > now) {
                    return Some(Exclusion::Unavailable(
                        format!("{name}: rate limited by the provider"),
                        until - now,
                    ));
                }
            }
            if !p.config.enabled {
                return Some(Exclusion::Forbidden(format!(
                    "{name}: the provider is disabled"
                )));
            }
        }
        if let Some(max) = ctx.max_cost_usd
            && est_cost > max
        {
            return Some(Exclusion::Forbidden(format!(
                "{name}: estimated cost ${est_cost:.6} exceeds the call's maximum ${max:.6}"
            )));
        }
        if let Some(left) = cost_left
            && est_cost > 0.0
            && est_cost > left
        {
            return Some(Exclusion::Budget(format!(
                "{name}: estimated cost ${est_cost:.6} exceeds the ${:.6} left in today's cost budget",
                left.max(0.0)
            )));
        }
        if let Some(max) = ctx.max_latency_ms
            && let Some(lat) = self.latency.lock().ok().and_then(|l| l.get(&name).copied())
            && lat > max as f64
        {
            return Some(Exclusion::Forbidden(format!(
                "{name}: measured latency {lat:.0} ms exceeds the call's maximum {max} ms"
            )));
        }
        None
    }

    /// The targets to try, best first.
    pub(super) fn plan(
        &self,
        ctx: &CallContext,
        kind: ModelKind,
        model: Option<&str>,
        prompt_est: u64,
        out_est: u64,
    ) -> Result<Vec<Target>, RouterError> {
        let s = self.settings();
        let policy = Self::call_policy(ctx, &s)?;
        let block = Self::remote_block(ctx, &s, policy);
        let explicit = model
            .map(str::trim)
            .filter(|m| !m.is_empty() && *m != "auto");
        // Resolve first: an unknown model is a 404 whatever the budgets say.
        let explicit = explicit.map(|m| self.resolve(m, kind)).transpose()?;
        let cost_left = self.check_budgets(ctx, &s, prompt_est + out_est)?;
        if let Some(t) = explicit {
            if !t.is_local()
                && let Some(why) = &block
            {
                return Err(RouterError::Forbidden(format!(
                    "{} is a remote model and {why}",
                    t.name()
                )));
            }
            let cost = t.cost(prompt_est, out_est);
            return match self.exclusion(&t, ctx, cost, cost_left) {
                None => Ok(vec![t]),
                Some(x) => Err(x.into_error(vec![])),
            };
        }
        let mut all: Vec<Target> = self
            .inference
            .list()
            .into_iter()
            .filter(|e| e.kind == kind.name())
            .map(|e| Target::Local(e.id))
            .collect();
        if block.is_none() {
            for p in self.provider_list() {
                for m in &p.config.models {
                    if m.kind == kind {
                        all.push(Target::Remote(p.clone(), m.clone()));
                    }
                }
            }
        }
        if all.is_empty() {
            return Err(RouterError::Unavailable {
                message: match &block {
                    Some(why) => format!("no local {} model is installed and {why}", kind.name()),
                    None => format!("no {} model is installed or configured", kind.name()),
                },
                retry_after: None,
                load: false,
            });
        }
        let mut ok = Vec::new();
        let mut excluded = Vec::new();
        let task = ctx.task_kind.as_deref().unwrap_or("default");
        for t in all {
            let cost = t.cost(prompt_est, out_est);
            match self.exclusion(&t, ctx, cost, cost_left) {
                Some(x) => excluded.push(x),
                None => {
                    let name = t.name();
                    let r = Rank {
                        local: t.is_local(),
                        cost,
                        latency_ms: self.latency.lock().ok().and_then(|l| l.get(&name).copied()),
                        score: self
                            .scores
                            .lock()
                            .ok()
                            .and_then(|s| s.get(&(name.clone(), task.to_string())).copied()),
                    };
                    ok.push((t, r));
                }
            }
        }
        if ok.is_empty() {
            let first = excluded.remove(0);
            return Err(first.into_error(excluded));
        }
        let ranks: Vec<Rank> = ok.iter().map(|(_, r)| r.clone()).collect();
        let order = rank(policy, &ranks);
        Ok(order.into_iter().map(|i| ok[i].0.clone()).collect())
    }
}

/// Why a target was left out of a call's plan.
enum Exclusion {
    Forbidden(String),
    Budget(String),
    Unavailable(String, Duration),
}

impl Exclusion {
    fn message(&self) -> &str {
        match self {
            Exclusion::Forbidden(m) | Exclusion::Budget(m) | Exclusion::Unavailable(m, _) => m,
        }
    }

    /// The error when every target was left out (`self` first, then `rest`).
    fn into_error(self, rest: Vec<Exclusion>) -> RouterError {
        let all: Vec<Exclusion> = std::iter::once(self).chain(rest).collect();
        let message = if all.len() == 1 {
            all[0].message().to_string()
        } else {
            format!(
                "no target is eligible: {}",
                all.iter()
                    .map(Exclusion::message)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        if all.iter().all(|x| matches!(x, Exclusion::Budget(_))) {
            return RouterError::Budget {
                message,
                cost: true,
                retry_after: Some(86_400 - unix_now() % 86_400),
            };
        }
        if all
            .iter()
            .any(|x| matches!(x, Exclusion::Forbidden(_) | Exclusion::Budget(_)))
        {
            return RouterError::Forbidden(message);
        }
        let wait = all
            .iter()
            .filter_map(|x| match x {
                Exclusion::Unavailable(_, d) => Some(d.as_secs().max(1)),
                _ => None,
            })
            .min();
        RouterError::Unavailable {
            message,
            retry_after: wait,
            load: false,
        }
    }
}
