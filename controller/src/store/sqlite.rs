//! The SQLite backend of the [`Store`](super::Store): one database file in the
//! data directory, WAL mode, migrations from `migrations/` applied at open.
//!
//! Every multi-statement write runs in `BEGIN IMMEDIATE`, so it takes the write
//! lock up front and never fails half-way on a lock upgrade. Single-statement
//! state changes (claim, set_status, decide_approval) are one conditional
//! `UPDATE ... RETURNING`, which is what makes them atomic.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use protocol::ExecutionEvent;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use subtle::ConstantTimeEq;

use super::{
    AppendOutcome, ApprovalDecision, ApprovalRecord, ArtifactInfo, AuditEntry, AuditRecord,
    CreatedToken, Execution, ExecutionFilter, ExecutionStatus, LaunchRecord, MAX_PAGE_LIMIT,
    ModelCallEnd, ModelCallRow, ModelCallStatus, ModelCallTotals, ModelUsage, NewApproval,
    NewExecution, NewModelCall, Page, PurgeReport, StoreError, TokenInfo, check_artifact_name,
    now_ms,
};

/// Prefix of every bearer token Kiln issues: `kiln_<id>_<secret>`.
const TOKEN_PREFIX: &str = "kiln_";

macro_rules! execution_columns {
    () => {
        "num, id, owner_token_id, recipe_source, gallery_name, inputs_json, files_json, class, status, \
         status_detail, created_at_ms, started_at_ms, finished_at_ms, deadline_at_ms, container_id, step_uid, \
         agent_session_sha256, last_acked_seq"
    };
}

macro_rules! approval_columns {
    () => {
        "execution_id, stage, prompt, timeout_secs, default_decision, requested_at_ms, decision, decided_by, \
         message, decided_at_ms"
    };
}

/// The aggregate that [`usage_from_row`] reads: every admitted call is a request.
macro_rules! usage_columns {
    () => {
        "COUNT(*) AS requests, COALESCE(SUM(input_tokens), 0) AS input_tokens, \
         COALESCE(SUM(output_tokens), 0) AS output_tokens"
    };
}

/// Statuses that may still change, as SQL (kept in sync with `ExecutionStatus::is_final`).
macro_rules! unfinished_statuses {
    () => {
        "('queued', 'running')"
    };
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    max_artifact_bytes: u64,
}

impl SqliteStore {
    pub async fn open(path: &Path, max_artifact_bytes: u64) -> Result<SqliteStore, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        sqlx::migrate!("../migrations").run(&pool).await?;
        Ok(SqliteStore {
            pool,
            max_artifact_bytes,
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    pub async fn bootstrap_admin_token(&self) -> Result<Option<String>, StoreError> {
        let (id, secret, token) = new_token_parts();
        // One statement: two controllers starting at once cannot both create one.
        let result = sqlx::query(
            "INSERT INTO api_tokens (id, name, secret_sha256, is_admin, created_at_ms)
             SELECT ?1, 'admin', ?2, 1, ?3 WHERE NOT EXISTS (SELECT 1 FROM api_tokens)",
        )
        .bind(&id)
        .bind(sha256(secret.as_bytes()).to_vec())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Ok(None);
        }
        self.audit_token_created(&id, "admin", true).await?;
        Ok(Some(token))
    }

    pub async fn create_token(
        &self,
        name: &str,
        is_admin: bool,
    ) -> Result<CreatedToken, StoreError> {
        let (id, secret, token) = new_token_parts();
        let created_at_ms = now_ms();
        sqlx::query(
            "INSERT INTO api_tokens (id, name, secret_sha256, is_admin, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&id)
        .bind(name)
        .bind(sha256(secret.as_bytes()).to_vec())
        .bind(is_admin)
        .bind(created_at_ms)
        .execute(&self.pool)
        .await?;
        self.audit_token_created(&id, name, is_admin).await?;
        Ok(CreatedToken {
            info: TokenInfo {
                id,
                name: name.to_string(),
                is_admin,
                created_at_ms,
            },
            token,
        })
    }

    /// Every token creation is audited by the store itself, whoever asked for it.
    async fn audit_token_created(
        &self,
        id: &str,
        name: &str,
        is_admin: bool,
    ) -> Result<(), StoreError> {
        let detail =
            serde_json::json!({ "token_id": id, "name": name, "is_admin": is_admin }).to_string();
        self.audit(&AuditEntry {
            actor: "kiln".to_string(),
            action: "token_created".to_string(),
            execution_id: None,
            detail,
        })
        .await
    }

    pub async fn verify_token(&self, presented: &str) -> Result<Option<TokenInfo>, StoreError> {
        let Some((id, secret)) = split_token(presented) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT id, name, secret_sha256, is_admin, created_at_ms FROM api_tokens WHERE id = ?1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: Vec<u8> = row.try_get("secret_sha256")?;
        let presented_hash = sha256(secret.as_bytes());
        if !bool::from(presented_hash.as_slice().ct_eq(stored.as_slice())) {
            return Ok(None);
        }
        Ok(Some(TokenInfo {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            is_admin: row.try_get("is_admin")?,
            created_at_ms: row.try_get("created_at_ms")?,
        }))
    }

    pub async fn create_execution(&self, new: NewExecution) -> Result<Execution, StoreError> {
        let id = format!("ex_{}", uuid::Uuid::new_v4().simple());
        let row = sqlx::query(concat!(
            "INSERT INTO executions (id, owner_token_id, recipe_source, gallery_name, inputs_json, files_json, class,
                                     status, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8) RETURNING ",
            execution_columns!()
        ))
        .bind(&id)
        .bind(&new.owner_token_id)
        .bind(&new.recipe_source)
        .bind(&new.gallery_name)
        .bind(serde_json::to_string(&new.inputs)?)
        .bind(serde_json::to_string(&new.files)?)
        .bind(&new.class)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        execution_from_row(&row)
    }

    pub async fn claim_next_queued(&self) -> Result<Option<Execution>, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE executions SET status = 'running', started_at_ms = ?1
             WHERE num = (SELECT num FROM executions WHERE status = 'queued' ORDER BY num LIMIT 1)
               AND status = 'queued'
             RETURNING ",
            execution_columns!()
        ))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(execution_from_row).transpose()
    }

    pub async fn set_status(
        &self,
        execution_id: &str,
        status: ExecutionStatus,
        detail: Option<&str>,
    ) -> Result<Execution, StoreError> {
        let now = now_ms();
        let finished_at = status.is_final().then_some(now);
        let started_at = (status == ExecutionStatus::Running).then_some(now);
        let row = sqlx::query(concat!(
            "UPDATE executions
             SET status = ?2, status_detail = ?3,
                 finished_at_ms = COALESCE(?4, finished_at_ms),
                 started_at_ms = COALESCE(started_at_ms, ?5)
             WHERE id = ?1 AND status IN ",
            unfinished_statuses!(),
            " RETURNING ",
            execution_columns!()
        ))
        .bind(execution_id)
        .bind(status.as_str())
        .bind(detail)
        .bind(finished_at)
        .bind(started_at)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => execution_from_row(&row),
            None => match self.get_execution(execution_id, None).await? {
                Some(current) => Err(StoreError::AlreadyFinal {
                    execution_id: execution_id.to_string(),
                    status: current.status,
                }),
                None => Err(StoreError::ExecutionNotFound {
                    execution_id: execution_id.to_string(),
                }),
            },
        }
    }

    pub async fn transition_status(
        &self,
        execution_id: &str,
        from: ExecutionStatus,
        to: ExecutionStatus,
        detail: Option<&str>,
    ) -> Result<bool, StoreError> {
        if from.is_final() {
            return Ok(false);
        }
        let now = now_ms();
        let result = sqlx::query(
            "UPDATE executions
             SET status = ?3, status_detail = ?4,
                 finished_at_ms = COALESCE(?5, finished_at_ms),
                 started_at_ms = COALESCE(started_at_ms, ?6)
             WHERE id = ?1 AND status = ?2",
        )
        .bind(execution_id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(detail)
        .bind(to.is_final().then_some(now))
        .bind((to == ExecutionStatus::Running).then_some(now))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn record_launch(
        &self,
        execution_id: &str,
        launch: &LaunchRecord,
    ) -> Result<(), StoreError> {
        let result =
            sqlx::query("UPDATE executions SET container_id = ?2, step_uid = ?3, deadline_at_ms = ?4 WHERE id = ?1")
                .bind(execution_id)
                .bind(&launch.container_id)
                .bind(i64::from(launch.step_uid))
                .bind(launch.deadline_at_ms)
                .execute(&self.pool)
                .await?;
        require_row(result.rows_affected(), execution_id)
    }

    pub async fn record_agent_session(
        &self,
        execution_id: &str,
        session_sha256: &str,
    ) -> Result<(), StoreError> {
        let result = sqlx::query("UPDATE executions SET agent_session_sha256 = ?2 WHERE id = ?1")
            .bind(execution_id)
            .bind(session_sha256)
            .execute(&self.pool)
            .await?;
        require_row(result.rows_affected(), execution_id)
    }

    pub async fn record_acked_seq(&self, execution_id: &str, seq: u64) -> Result<(), StoreError> {
        self.append_events(execution_id, &[], Some(seq))
            .await
            .map(|_| ())
    }

    pub async fn append_events(
        &self,
        execution_id: &str,
        events: &[ExecutionEvent],
        acked_seq: Option<u64>,
    ) -> Result<AppendOutcome, StoreError> {
        let mut outcome = AppendOutcome {
            n_inserted: 0,
            n_duplicates: 0,
        };
        if events.is_empty() && acked_seq.is_none() {
            return Ok(outcome);
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(seq) = acked_seq {
            // In the same transaction as the events: a failing insert below
            // rolls the position back too, so both are stored or neither.
            let result = sqlx::query(
                "UPDATE executions SET last_acked_seq = MAX(last_acked_seq, ?2) WHERE id = ?1",
            )
            .bind(execution_id)
            .bind(to_i64(seq))
            .execute(&mut *tx)
            .await?;
            require_row(result.rows_affected(), execution_id)?;
        }
        for event in events {
            let body_json = serde_json::to_string(&event.body)?;
            let inserted = sqlx::query(
                "INSERT INTO events (execution_id, seq, at_ms, body_json) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (execution_id, seq) DO NOTHING",
            )
            .bind(execution_id)
            .bind(to_i64(event.seq))
            .bind(to_i64(event.at_ms))
            .bind(&body_json)
            .execute(&mut *tx)
            .await
            .map_err(|err| foreign_key_to_not_found(err, execution_id))?;
            if inserted.rows_affected() == 1 {
                outcome.n_inserted += 1;
                continue;
            }
            let stored = sqlx::query(
                "SELECT at_ms, body_json FROM events WHERE execution_id = ?1 AND seq = ?2",
            )
            .bind(execution_id)
            .bind(to_i64(event.seq))
            .fetch_one(&mut *tx)
            .await?;
            let stored_at_ms: i64 = stored.try_get("at_ms")?;
            let stored_body: String = stored.try_get("body_json")?;
            if stored_at_ms != to_i64(event.at_ms) || stored_body != body_json {
                // Dropping `tx` rolls the whole batch back.
                return Err(StoreError::ConflictingEvent {
                    execution_id: execution_id.to_string(),
                    seq: event.seq,
                });
            }
            outcome.n_duplicates += 1;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    pub async fn events_after(
        &self,
        execution_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<ExecutionEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, body_json FROM events WHERE execution_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(execution_id)
        .bind(to_i64(after_seq))
        .bind(i64::from(limit.clamp(1, MAX_PAGE_LIMIT)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let body_json: String = row.try_get("body_json")?;
                Ok(ExecutionEvent {
                    seq: to_u64(row.try_get("seq")?, "events.seq")?,
                    at_ms: to_u64(row.try_get("at_ms")?, "events.at_ms")?,
                    body: serde_json::from_str(&body_json)?,
                })
            })
            .collect()
    }

    pub async fn last_event_seq(&self, execution_id: &str) -> Result<u64, StoreError> {
        let row =
            sqlx::query("SELECT COALESCE(MAX(seq), 0) AS last FROM events WHERE execution_id = ?1")
                .bind(execution_id)
                .fetch_one(&self.pool)
                .await?;
        to_u64(row.try_get("last")?, "events.seq")
    }

    pub async fn get_execution(
        &self,
        execution_id: &str,
        owner: Option<&str>,
    ) -> Result<Option<Execution>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM executions WHERE id = ?1 AND (?2 IS NULL OR owner_token_id = ?2)"
        ))
        .bind(execution_id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(execution_from_row).transpose()
    }

    pub async fn list_executions(
        &self,
        filter: &ExecutionFilter,
    ) -> Result<Page<Execution>, StoreError> {
        let before_num = match &filter.cursor {
            Some(cursor) => Some(parse_cursor(cursor)?),
            None => None,
        };
        let limit = filter.limit.clamp(1, MAX_PAGE_LIMIT);
        let rows = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM executions
              WHERE (?1 IS NULL OR owner_token_id = ?1) AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR num < ?3)
              ORDER BY num DESC LIMIT ?4"
        ))
        .bind(filter.owner_token_id.as_deref())
        .bind(filter.status.map(ExecutionStatus::as_str))
        .bind(before_num)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let has_more = rows.len() > limit as usize;
        let mut items = Vec::with_capacity(rows.len().min(limit as usize));
        let mut last_num = None;
        for row in rows.iter().take(limit as usize) {
            last_num = Some(row.try_get::<i64, _>("num")?);
            items.push(execution_from_row(row)?);
        }
        let next_cursor = if has_more {
            last_num.map(encode_cursor)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    pub async fn list_unfinished(&self) -> Result<Vec<Execution>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM executions WHERE status IN ",
            unfinished_statuses!(),
            " ORDER BY num"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(execution_from_row).collect()
    }

    pub async fn put_artifact(
        &self,
        execution_id: &str,
        name: &str,
        content: &[u8],
    ) -> Result<ArtifactInfo, StoreError> {
        check_artifact_name(name)?;
        let size_bytes = content.len() as u64;
        if size_bytes > self.max_artifact_bytes {
            return Err(StoreError::ArtifactTooLarge {
                name: name.to_string(),
                size: size_bytes,
                max: self.max_artifact_bytes,
            });
        }
        let info = ArtifactInfo {
            name: name.to_string(),
            size_bytes,
            sha256: hex::encode(sha256(content)),
            created_at_ms: now_ms(),
        };
        sqlx::query(
            "INSERT INTO artifacts (execution_id, name, size_bytes, sha256, content, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (execution_id, name) DO UPDATE SET
                size_bytes = excluded.size_bytes, sha256 = excluded.sha256,
                content = excluded.content, created_at_ms = excluded.created_at_ms",
        )
        .bind(execution_id)
        .bind(name)
        .bind(to_i64(size_bytes))
        .bind(&info.sha256)
        .bind(content)
        .bind(info.created_at_ms)
        .execute(&self.pool)
        .await
        .map_err(|err| foreign_key_to_not_found(err, execution_id))?;
        Ok(info)
    }

    pub async fn get_artifact(
        &self,
        execution_id: &str,
        name: &str,
    ) -> Result<Option<(ArtifactInfo, Vec<u8>)>, StoreError> {
        let row = sqlx::query(
            "SELECT name, size_bytes, sha256, created_at_ms, content FROM artifacts WHERE execution_id = ?1 AND name = ?2",
        )
        .bind(execution_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Some((artifact_from_row(&row)?, row.try_get("content")?))),
            None => Ok(None),
        }
    }

    pub async fn list_artifacts(
        &self,
        execution_id: &str,
    ) -> Result<Vec<ArtifactInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, size_bytes, sha256, created_at_ms FROM artifacts WHERE execution_id = ?1 ORDER BY name",
        )
        .bind(execution_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(artifact_from_row).collect()
    }

    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO audit_log (at_ms, actor, action, execution_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)")
            .bind(now_ms())
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.execution_id)
            .bind(&entry.detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn list_audit(
        &self,
        execution_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT num, at_ms, actor, action, execution_id, detail FROM audit_log
             WHERE (?1 IS NULL OR execution_id = ?1) ORDER BY num DESC LIMIT ?2",
        )
        .bind(execution_id)
        .bind(i64::from(limit.clamp(1, MAX_PAGE_LIMIT)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    num: row.try_get("num")?,
                    at_ms: row.try_get("at_ms")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    execution_id: row.try_get("execution_id")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }

    pub async fn request_approval(
        &self,
        execution_id: &str,
        gate: &NewApproval,
    ) -> Result<ApprovalRecord, StoreError> {
        let row = sqlx::query(concat!(
            "INSERT INTO approvals (execution_id, stage, prompt, timeout_secs, default_decision, requested_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (execution_id, stage) DO NOTHING RETURNING ",
            approval_columns!()
        ))
        .bind(execution_id)
        .bind(&gate.stage)
        .bind(&gate.prompt)
        .bind(gate.timeout_secs.map(to_i64))
        .bind(gate.default_decision.map(ApprovalDecision::as_str))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(|err| foreign_key_to_not_found(err, execution_id))?;
        match row {
            Some(row) => approval_from_row(&row),
            None => Err(StoreError::ApprovalExists {
                execution_id: execution_id.to_string(),
                stage: gate.stage.clone(),
            }),
        }
    }

    pub async fn decide_approval(
        &self,
        execution_id: &str,
        stage: &str,
        decision: ApprovalDecision,
        by: &str,
        message: Option<&str>,
    ) -> Result<ApprovalRecord, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE approvals SET decision = ?3, decided_by = ?4, message = ?5, decided_at_ms = ?6
             WHERE execution_id = ?1 AND stage = ?2 AND decision IS NULL RETURNING ",
            approval_columns!()
        ))
        .bind(execution_id)
        .bind(stage)
        .bind(decision.as_str())
        .bind(by)
        .bind(message)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return approval_from_row(&row);
        }
        match self.get_approval(execution_id, stage).await? {
            Some(ApprovalRecord {
                decision: Some(existing),
                ..
            }) => Err(StoreError::ApprovalAlreadyDecided {
                execution_id: execution_id.to_string(),
                stage: stage.to_string(),
                decision: existing,
            }),
            _ => Err(StoreError::ApprovalNotFound {
                execution_id: execution_id.to_string(),
                stage: stage.to_string(),
            }),
        }
    }

    pub async fn get_approval(
        &self,
        execution_id: &str,
        stage: &str,
    ) -> Result<Option<ApprovalRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            approval_columns!(),
            " FROM approvals WHERE execution_id = ?1 AND stage = ?2"
        ))
        .bind(execution_id)
        .bind(stage)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(approval_from_row).transpose()
    }

    pub async fn list_approvals(
        &self,
        execution_id: &str,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            approval_columns!(),
            " FROM approvals WHERE execution_id = ?1 ORDER BY requested_at_ms, stage"
        ))
        .bind(execution_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(approval_from_row).collect()
    }

    pub async fn begin_model_call(&self, call: &NewModelCall) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO model_calls (execution_id, request_id, step_id, user_id, provider, model, profile,
                                      status, started_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'running', ?8) RETURNING id",
        )
        .bind(&call.execution_id)
        .bind(to_i64(call.request_id))
        .bind(&call.step_id)
        .bind(&call.user_id)
        .bind(&call.provider)
        .bind(&call.model)
        .bind(&call.profile)
        .bind(call.started_at_ms)
        .fetch_one(&self.pool)
        .await
        .map_err(|err| foreign_key_to_not_found(err, &call.execution_id))?;
        Ok(row.try_get("id")?)
    }

    pub async fn finish_model_call(&self, id: i64, end: &ModelCallEnd) -> Result<(), StoreError> {
        if end.status == ModelCallStatus::Running {
            return Err(StoreError::ModelCallEndRunning { id });
        }
        let result = sqlx::query(
            "UPDATE model_calls
             SET status = ?2, error_code = ?3, input_tokens = ?4, output_tokens = ?5, finished_at_ms = ?6,
                 provider = COALESCE(?7, provider), model = COALESCE(?8, model)
             WHERE id = ?1 AND status = 'running'",
        )
        .bind(id)
        .bind(end.status.as_str())
        .bind(&end.error_code)
        .bind(to_i64(end.input_tokens))
        .bind(to_i64(end.output_tokens))
        .bind(end.finished_at_ms)
        .bind(&end.provider)
        .bind(&end.model)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 1 {
            return Ok(());
        }
        let row = sqlx::query("SELECT status FROM model_calls WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Err(StoreError::ModelCallAlreadyEnded {
                id,
                status: model_call_status(row.try_get("status")?)?,
            }),
            None => Err(StoreError::ModelCallNotFound { id }),
        }
    }

    pub async fn interrupt_running_model_calls(
        &self,
        finished_at_ms: i64,
    ) -> Result<Vec<ModelCallRow>, StoreError> {
        let rows = sqlx::query(
            "UPDATE model_calls SET status = 'interrupted', finished_at_ms = ?1 WHERE status = 'running'
             RETURNING id, execution_id, request_id, step_id, user_id, provider, model, profile, status,
                       error_code, input_tokens, output_tokens, started_at_ms, finished_at_ms",
        )
        .bind(finished_at_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut calls = rows
            .iter()
            .map(model_call_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        calls.sort_by_key(|call| call.id);
        Ok(calls)
    }

    pub async fn model_calls(&self, execution_id: &str) -> Result<Vec<ModelCallRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, execution_id, request_id, step_id, user_id, provider, model, profile, status, error_code,
                    input_tokens, output_tokens, started_at_ms, finished_at_ms
             FROM model_calls WHERE execution_id = ?1 ORDER BY id",
        )
        .bind(execution_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(model_call_from_row).collect()
    }

    pub async fn model_usage_of_execution(
        &self,
        execution_id: &str,
    ) -> Result<(ModelUsage, BTreeMap<String, ModelUsage>), StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT step_id, ",
            usage_columns!(),
            " FROM model_calls WHERE execution_id = ?1 GROUP BY step_id"
        ))
        .bind(execution_id)
        .fetch_all(&self.pool)
        .await?;
        let mut total = ModelUsage::default();
        let mut steps = BTreeMap::new();
        for row in &rows {
            let usage = usage_from_row(row)?;
            total.requests = total.requests.saturating_add(usage.requests);
            total.input_tokens = total.input_tokens.saturating_add(usage.input_tokens);
            total.output_tokens = total.output_tokens.saturating_add(usage.output_tokens);
            steps.insert(row.try_get("step_id")?, usage);
        }
        Ok((total, steps))
    }

    pub async fn model_usage_of_user(&self, user_id: &str) -> Result<ModelUsage, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            usage_columns!(),
            " FROM model_calls WHERE user_id = ?1"
        ))
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        usage_from_row(&row)
    }

    pub async fn model_usage_by_user(&self) -> Result<Vec<(String, ModelUsage)>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT user_id, ",
            usage_columns!(),
            " FROM model_calls GROUP BY user_id ORDER BY user_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("user_id")?, usage_from_row(row)?)))
            .collect()
    }

    pub async fn model_call_totals(&self) -> Result<Vec<ModelCallTotals>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT provider, model, status, ",
            usage_columns!(),
            " FROM model_calls GROUP BY provider, model, status ORDER BY provider, model, status"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ModelCallTotals {
                    provider: row.try_get("provider")?,
                    model: row.try_get("model")?,
                    status: model_call_status(row.try_get("status")?)?,
                    usage: usage_from_row(row)?,
                })
            })
            .collect()
    }

    pub async fn count_executions_by_status(
        &self,
    ) -> Result<Vec<(ExecutionStatus, u64)>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM executions GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        let mut counts: Vec<(ExecutionStatus, u64)> = ExecutionStatus::ALL
            .into_iter()
            .map(|status| (status, 0))
            .collect();
        for row in &rows {
            let text: String = row.try_get("status")?;
            let status = ExecutionStatus::parse(&text).ok_or(StoreError::CorruptValue {
                column: "executions.status",
                value: text,
            })?;
            let n = to_u64(row.try_get("n")?, "count(executions)")?;
            if let Some(slot) = counts.iter_mut().find(|(each, _)| *each == status) {
                slot.1 = n;
            }
        }
        Ok(counts)
    }

    pub async fn purge(
        &self,
        finished_before_ms: i64,
        keep_max_finished: u64,
    ) -> Result<PurgeReport, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let by_age = sqlx::query(concat!(
            "DELETE FROM executions WHERE status NOT IN ",
            unfinished_statuses!(),
            " AND finished_at_ms < ?1"
        ))
        .bind(finished_before_ms)
        .execute(&mut *tx)
        .await?;
        let by_count = sqlx::query(concat!(
            "DELETE FROM executions WHERE num IN (
                SELECT num FROM executions WHERE status NOT IN ",
            unfinished_statuses!(),
            " ORDER BY num DESC LIMIT -1 OFFSET ?1)"
        ))
        .bind(to_i64(keep_max_finished))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(PurgeReport {
            n_executions: by_age.rows_affected() + by_count.rows_affected(),
        })
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A fresh `(id, secret, token)`: 8 random bytes of id, 32 of secret, both hex.
fn new_token_parts() -> (String, String, String) {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let token = format!("{TOKEN_PREFIX}{id}_{secret}");
    (id, secret, token)
}

fn split_token(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let is_hex = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit());
    (is_hex(id) && id.len() == 16 && is_hex(secret) && secret.len() == 64).then_some((id, secret))
}

fn require_row(rows_affected: u64, execution_id: &str) -> Result<(), StoreError> {
    if rows_affected == 0 {
        return Err(StoreError::ExecutionNotFound {
            execution_id: execution_id.to_string(),
        });
    }
    Ok(())
}

fn foreign_key_to_not_found(err: sqlx::Error, execution_id: &str) -> StoreError {
    let is_fk = err
        .as_database_error()
        .is_some_and(|db| db.is_foreign_key_violation());
    if is_fk {
        StoreError::ExecutionNotFound {
            execution_id: execution_id.to_string(),
        }
    } else {
        StoreError::Database(err)
    }
}

/// SQLite integers are i64; sequence numbers and sizes never get near 2^63.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64, column: &'static str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::CorruptValue {
        column,
        value: value.to_string(),
    })
}

fn encode_cursor(num: i64) -> String {
    format!("c{num}")
}

fn parse_cursor(cursor: &str) -> Result<i64, StoreError> {
    cursor
        .strip_prefix('c')
        .and_then(|digits| i64::from_str(digits).ok())
        .filter(|num| *num > 0)
        .ok_or_else(|| StoreError::InvalidCursor {
            cursor: cursor.chars().take(64).collect(),
        })
}

fn execution_from_row(row: &SqliteRow) -> Result<Execution, StoreError> {
    let status_text: String = row.try_get("status")?;
    let status = ExecutionStatus::parse(&status_text).ok_or(StoreError::CorruptValue {
        column: "executions.status",
        value: status_text,
    })?;
    let inputs_json: String = row.try_get("inputs_json")?;
    let files_json: String = row.try_get("files_json")?;
    let step_uid: Option<i64> = row.try_get("step_uid")?;
    let step_uid = step_uid
        .map(|uid| {
            u32::try_from(uid).map_err(|_| StoreError::CorruptValue {
                column: "executions.step_uid",
                value: uid.to_string(),
            })
        })
        .transpose()?;
    let files: BTreeMap<String, String> = serde_json::from_str(&files_json)?;
    Ok(Execution {
        id: row.try_get("id")?,
        owner_token_id: row.try_get("owner_token_id")?,
        recipe_source: row.try_get("recipe_source")?,
        gallery_name: row.try_get("gallery_name")?,
        inputs: serde_json::from_str(&inputs_json)?,
        files,
        class: row.try_get("class")?,
        status,
        status_detail: row.try_get("status_detail")?,
        created_at_ms: row.try_get("created_at_ms")?,
        started_at_ms: row.try_get("started_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
        deadline_at_ms: row.try_get("deadline_at_ms")?,
        container_id: row.try_get("container_id")?,
        step_uid,
        agent_session_sha256: row.try_get("agent_session_sha256")?,
        last_acked_seq: to_u64(row.try_get("last_acked_seq")?, "executions.last_acked_seq")?,
    })
}

fn model_call_status(text: String) -> Result<ModelCallStatus, StoreError> {
    ModelCallStatus::parse(&text).ok_or(StoreError::CorruptValue {
        column: "model_calls.status",
        value: text,
    })
}

/// A `requests`, `input_tokens`, `output_tokens` aggregate.
fn usage_from_row(row: &SqliteRow) -> Result<ModelUsage, StoreError> {
    Ok(ModelUsage {
        requests: to_u64(row.try_get("requests")?, "count(model_calls)")?,
        input_tokens: to_u64(
            row.try_get("input_tokens")?,
            "sum(model_calls.input_tokens)",
        )?,
        output_tokens: to_u64(
            row.try_get("output_tokens")?,
            "sum(model_calls.output_tokens)",
        )?,
    })
}

fn model_call_from_row(row: &SqliteRow) -> Result<ModelCallRow, StoreError> {
    Ok(ModelCallRow {
        id: row.try_get("id")?,
        execution_id: row.try_get("execution_id")?,
        request_id: to_u64(row.try_get("request_id")?, "model_calls.request_id")?,
        step_id: row.try_get("step_id")?,
        user_id: row.try_get("user_id")?,
        provider: row.try_get("provider")?,
        model: row.try_get("model")?,
        profile: row.try_get("profile")?,
        status: model_call_status(row.try_get("status")?)?,
        error_code: row.try_get("error_code")?,
        input_tokens: to_u64(row.try_get("input_tokens")?, "model_calls.input_tokens")?,
        output_tokens: to_u64(row.try_get("output_tokens")?, "model_calls.output_tokens")?,
        started_at_ms: row.try_get("started_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
    })
}

fn artifact_from_row(row: &SqliteRow) -> Result<ArtifactInfo, StoreError> {
    Ok(ArtifactInfo {
        name: row.try_get("name")?,
        size_bytes: to_u64(row.try_get("size_bytes")?, "artifacts.size_bytes")?,
        sha256: row.try_get("sha256")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

fn approval_from_row(row: &SqliteRow) -> Result<ApprovalRecord, StoreError> {
    let parse_decision = |column: &'static str| -> Result<Option<ApprovalDecision>, StoreError> {
        let text: Option<String> = row.try_get(column)?;
        text.map(|text| {
            ApprovalDecision::parse(&text).ok_or(StoreError::CorruptValue {
                column,
                value: text,
            })
        })
        .transpose()
    };
    let timeout_secs: Option<i64> = row.try_get("timeout_secs")?;
    Ok(ApprovalRecord {
        execution_id: row.try_get("execution_id")?,
        stage: row.try_get("stage")?,
        prompt: row.try_get("prompt")?,
        timeout_secs: timeout_secs
            .map(|secs| to_u64(secs, "approvals.timeout_secs"))
            .transpose()?,
        default_decision: parse_decision("default_decision")?,
        requested_at_ms: row.try_get("requested_at_ms")?,
        decision: parse_decision("decision")?,
        decided_by: row.try_get("decided_by")?,
        message: row.try_get("message")?,
        decided_at_ms: row.try_get("decided_at_ms")?,
    })
}
