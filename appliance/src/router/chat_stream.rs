//! Streamed chats: targets are tried (with retries and fallbacks) until one starts answering;
//! a task then carries the answer to the caller's [`ChatStream`] and accounts it.

use super::*;

impl Router {
    /// One chat, streamed. Targets are tried (with retries and fallbacks) until one starts
    /// answering; after that a failure ends the stream with [`StreamEvent::Error`].
    pub async fn chat_stream(
        &self,
        ctx: &CallContext,
        call: ChatCall,
    ) -> Result<ChatStream, RouterError> {
        let (prompt_est, out_est) = Self::check_chat(&call)?;
        let targets = self.plan(
            ctx,
            ModelKind::Chat,
            call.model.as_deref(),
            prompt_est,
            out_est,
        )?;
        let acct = self.accountant(ctx);
        let mut failures = Vec::new();
        for t in targets {
            let started = Instant::now();
            let (tx, rx) = mpsc::channel::<StreamEvent>(64);
            let name = t.name();
            let provider = t.provider();
            match &t {
                Target::Local(id) => {
                    match local::submit(&self.inference, &self.metrics, id, &call).await {
                        Ok(erx) => {
                            let metrics = self.metrics.clone();
                            let acct = acct.clone();
                            let (name2, id2) = (name.clone(), id.clone());
                            tokio::task::spawn_blocking(move || {
                                use cairn_models::engine::Event;
                                let mut text = String::new();
                                let (mut prompt, mut pieces) = (0u64, 0u64);
                                while let Ok(ev) = erx.recv() {
                                    match ev {
                                        Event::Started { usage: u } => {
                                            metrics.first_token();
                                            prompt = u.prompt_tokens as u64;
                                        }
                                        Event::Text(t) => {
                                            text.push_str(&t);
                                            pieces += 1;
                                            if tx.blocking_send(StreamEvent::Delta(t)).is_err() {
                                                // The caller went away: dropping the engine's
                                                // receiver cancels the generation; what it
                                                // used so far is still accounted.
                                                acct.record(
                                                    "local",
                                                    &id2,
                                                    UsageRow {
                                                        calls: 1,
                                                        failures: 0,
                                                        prompt_tokens: prompt,
                                                        completion_tokens: pieces,
                                                        cost_usd: 0.0,
                                                    },
                                                );
                                                return;
                                            }
                                        }
                                        Event::Done { reason, usage: u } => {
                                            metrics.done(&u);
                                            let latency = started.elapsed();
                                            acct.observe_latency(
                                                &name2,
                                                latency.as_secs_f64() * 1000.0,
                                            );
                                            let usage = local::usage(&u);
                                            acct.record(
                                                "local",
                                                &id2,
                                                UsageRow {
                                                    calls: 1,
                                                    failures: 0,
                                                    prompt_tokens: usage.prompt_tokens,
                                                    completion_tokens: usage.completion_tokens,
                                                    cost_usd: 0.0,
                                                },
                                            );
                                            let _ =
                                                tx.blocking_send(StreamEvent::Done(ChatOutcome {
                                                    text: std::mem::take(&mut text),
                                                    model: name2.clone(),
                                                    provider: "local".into(),
                                                    usage,
                                                    cost_usd: 0.0,
                                                    latency,
                                                    finish_reason: local::finish(reason),
                                                }));
                                            return;
                                        }
                                        Event::Error(e) => {
                                            let _ = tx.blocking_send(StreamEvent::Error(e));
                                            return;
                                        }
                                    }
                                }
                                let _ = tx.blocking_send(StreamEvent::Error(
                                    "the generation ended unexpectedly".into(),
                                ));
                            });
                            return Ok(ChatStream {
                                model: name,
                                provider,
                                rx,
                            });
                        }
                        Err(LocalFailure::Invalid(m)) => {
                            return Err(RouterError::Invalid {
                                message: m,
                                param: None,
                            });
                        }
                        Err(f) => failures.push((name, TargetFailure::Local(f))),
                    }
                }
                Target::Remote(p, m) => {
                    let call_ref = &call;
                    let p2 = p.clone();
                    let watch = Unsettled::watch(&acct, &t);
                    let opened = self
                        .with_retries(p, ctx, |timeout| {
                            let p = p2.clone();
                            let id = m.id.clone();
                            async move {
                                remote::open_stream(&p.endpoint(), &id, call_ref, timeout).await
                            }
                        })
                        .await;
                    // From here the stream's task, or note_failure, accounts the call.
                    if let Some(w) = watch {
                        w.settle();
                    }
                    match opened {
                        Ok(resp) => {
                            let kind = p.config.kind;
                            let idle = Self::timeout_for(p, ctx);
                            let acct = acct.clone();
                            let t2 = t.clone();
                            let model_id = m.id.clone();
                            let pname = p.config.name.clone();
                            let watch = Unsettled::watch(&acct, &t);
                            tokio::spawn(async move {
                                let r = remote::pump(kind, resp, idle, &tx).await;
                                // Both arms account the call before their last wait.
                                if let Some(w) = watch {
                                    w.settle();
                                }
                                match r {
                                    Ok(rc) => {
                                        if let Ok(mut h) = acct.health.lock()
                                            && let Some(h) = h.get_mut(&pname)
                                        {
                                            h.breaker.success();
                                        }
                                        let latency = started.elapsed();
                                        acct.observe_latency(
                                            &t2.name(),
                                            latency.as_secs_f64() * 1000.0,
                                        );
                                        let usage = TokenUsage {
                                            prompt_tokens: rc.prompt_tokens.unwrap_or(prompt_est),
                                            completion_tokens: rc
                                                .completion_tokens
                                                .unwrap_or_else(|| estimate_tokens(rc.text.len())),
                                            cached_tokens: 0,
                                        };
                                        let cost =
                                            t2.cost(usage.prompt_tokens, usage.completion_tokens);
                                        acct.record_async(
                                            pname.clone(),
                                            model_id,
                                            UsageRow {
                                                calls: 1,
                                                failures: 0,
                                                prompt_tokens: usage.prompt_tokens,
                                                completion_tokens: usage.completion_tokens,
                                                cost_usd: cost,
                                            },
                                        )
                                        .await;
                                        let _ = tx
                                            .send(StreamEvent::Done(ChatOutcome {
                                                text: rc.text,
                                                model: t2.name(),
                                                provider: pname,
                                                usage,
                                                cost_usd: cost,
                                                latency,
                                                finish_reason: rc.finish,
                                            }))
                                            .await;
                                    }
                                    Err(f) => {
                                        if f.kind.unhealthy() {
                                            acct.breaker_failure(&pname);
                                        }
                                        acct.record_async(
                                            pname.clone(),
                                            model_id,
                                            UsageRow {
                                                failures: 1,
                                                ..Default::default()
                                            },
                                        )
                                        .await;
                                        let _ = tx
                                            .send(StreamEvent::Error(format!(
                                                "{}: {}",
                                                t2.name(),
                                                f.message
                                            )))
                                            .await;
                                    }
                                }
                            });
                            return Ok(ChatStream {
                                model: name,
                                provider,
                                rx,
                            });
                        }
                        Err(f) => {
                            tracing::info!("router: {name} failed: {}", f.message());
                            self.note_failure(&acct, &t, &f).await;
                            failures.push((name, f));
                        }
                    }
                }
            }
        }
        Err(combine(failures))
    }
}
