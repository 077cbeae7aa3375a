//! Validation: cross-step rules over a loaded [`Recipe`] (Part B section 16
//! plus the "do better" items).
//!
//! Loading already checked each node on its own (types, unknown keys, the
//! per-step-type rules of 5.7). This pass checks what needs the whole recipe:
//! name and version formats, stage rules, duplicate ids (across stages and in
//! nested loop bodies), `depends_on` (each problem reported once), expression
//! syntax of `condition` / `while_condition` / `break_when`, and every
//! variable reference, walking the steps in execution order with the set of
//! names that is really available at that point (`stage.*` in staged mode,
//! `_loop_*` inside loops, `_approval_message` after a stage, ...).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};

use crate::check::CheckOptions;
use crate::diagnostic::{Sink, Span};
use crate::expr;
use crate::load::{ScalarPos, SourceMap};
use crate::model::{Body, Loop, Parallel, Recipe, Stage, Step, StepKind};
use crate::template;

/// How far a name may be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VarKind {
    /// A recipe `context` key: dotted paths are walked into its value.
    Context,
    /// Anything else (metadata, step outputs, loop variables): not checked further.
    Opaque,
}

#[derive(Clone, Debug, Default)]
struct Scope {
    vars: BTreeMap<String, VarKind>,
}

impl Scope {
    fn add(&mut self, name: &str) {
        self.vars.insert(name.to_string(), VarKind::Opaque);
    }

    /// The names in scope, at most 40 (O(1) in the scope size: hostile input).
    fn available(&self) -> String {
        const SHOWN: usize = 40;
        let names: Vec<&str> = self.vars.keys().take(SHOWN).map(String::as_str).collect();
        if self.vars.len() > SHOWN {
            format!(
                "{} (and {} more)",
                names.join(", "),
                self.vars.len() - SHOWN
            )
        } else {
            names.join(", ")
        }
    }
}

struct Validator<'a, 's, 'k> {
    recipe: &'a Recipe,
    map: &'a SourceMap,
    options: &'a CheckOptions,
    sink: &'k mut Sink<'s>,
}

pub fn validate(recipe: &Recipe, map: &SourceMap, options: &CheckOptions, sink: &mut Sink<'_>) {
    let mut validator = Validator {
        recipe,
        map,
        options,
        sink,
    };
    validator.recipe_fields();
    validator.stages();
    validator.duplicate_ids();
    validator.dependencies();
    validator.variables();
}

/// `name` rule: non-empty, alphanumeric after removing `-` and `_` (Unicode `isalnum`).
pub fn is_valid_recipe_name(name: &str) -> bool {
    let rest: String = name.chars().filter(|c| *c != '-' && *c != '_').collect();
    !rest.is_empty() && rest.chars().all(char::is_alphanumeric)
}

/// Stage names may also contain spaces.
pub fn is_valid_stage_name(name: &str) -> bool {
    let rest: String = name
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | ' '))
        .collect();
    !rest.is_empty() && rest.chars().all(char::is_alphanumeric)
}

/// `MAJOR.MINOR.PATCH`; `Err` carries the reason (one of four messages).
pub fn check_version(version: &str) -> Result<(), String> {
    if version.starts_with('v') || version.starts_with('V') {
        return Err(format!(
            "version '{version}' must not start with 'v': use MAJOR.MINOR.PATCH such as 1.0.0"
        ));
    }
    if version.contains('-') {
        return Err(format!(
            "version '{version}' must not have a pre-release suffix ('-'): use MAJOR.MINOR.PATCH"
        ));
    }
    if version.contains('+') {
        return Err(format!(
            "version '{version}' must not have build metadata ('+'): use MAJOR.MINOR.PATCH"
        ));
    }
    let parts: Vec<&str> = version.split('.').collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|part| part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "invalid version '{version}': must be MAJOR.MINOR.PATCH with numeric parts such as 1.0.0"
        ));
    }
    Ok(())
}

fn byte_offset(text: &str, char_offset: usize) -> usize {
    text.char_indices()
        .nth(char_offset)
        .map_or(text.len(), |(idx, _)| idx)
}

fn python_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

impl Validator<'_, '_, '_> {
    fn path_of(&self, span: Span) -> String {
        self.map.paths.get(&span).cloned().unwrap_or_default()
    }

    fn pos(&self, path: &str, fallback: Span) -> ScalarPos {
        self.map.scalar(path).unwrap_or(ScalarPos {
            span: fallback,
            content_start: None,
        })
    }

    fn key_span(&self, path: &str, fallback: Span) -> Span {
        self.map
            .keys
            .get(path)
            .copied()
            .or_else(|| self.map.scalar(path).map(|pos| pos.span))
            .unwrap_or(fallback)
    }

    fn recipe_fields(&mut self) {
        let recipe = self.recipe;
        if !recipe.name.is_empty() && !is_valid_recipe_name(&recipe.name) {
            let span = self.pos("name", recipe.span).span;
            self.sink.error(
                "invalid-name",
                "name",
                span,
                format!(
                    "recipe name '{}' must be alphanumeric (letters and digits, with '-' and '_' allowed)",
                    recipe.name
                ),
            );
        }
        if !recipe.version.is_empty()
            && let Err(message) = check_version(&recipe.version)
        {
            let span = self.pos("version", recipe.span).span;
            self.sink.error("invalid-version", "version", span, message);
        }
        if matches!(&recipe.body, Body::Flat(steps) if steps.is_empty()) {
            let span = self.key_span(
                "steps",
                self.key_span("stages", Span::new(recipe.span.start, recipe.span.start)),
            );
            self.sink.error(
                "no-steps",
                "",
                span,
                "recipe must have at least one step or stage".to_string(),
            );
        }
    }

    fn stages(&mut self) {
        let Body::Staged(stages) = &self.recipe.body else {
            return;
        };
        let mut seen: HashMap<&str, String> = HashMap::new();
        for stage in stages {
            let path = self.path_of(stage.span);
            let name_path = format!("{path}.name");
            let name_span = self.pos(&name_path, stage.span).span;
            if stage.name.trim().is_empty() {
                if self.map.scalar(&name_path).is_some() || !self.map.keys.contains_key(&name_path)
                {
                    self.sink.error(
                        "missing-field",
                        &name_path,
                        name_span,
                        "stage is missing required field 'name'".to_string(),
                    );
                }
            } else if !is_valid_stage_name(&stage.name) {
                self.sink.error(
                    "invalid-name",
                    &name_path,
                    name_span,
                    format!("stage name '{}' must be alphanumeric (letters, digits, '-', '_' and spaces)", stage.name),
                );
            }
            if !stage.name.is_empty() {
                if let Some(first) = seen.get(stage.name.as_str()) {
                    self.sink.error(
                        "duplicate-stage-name",
                        &name_path,
                        name_span,
                        format!(
                            "duplicate stage names: '{}' is also used at {first}",
                            stage.name
                        ),
                    );
                } else {
                    seen.insert(&stage.name, path.clone());
                }
            }
            if stage.steps.is_empty() {
                let span = self.key_span(&format!("{path}.steps"), stage.span);
                self.sink.error(
                    "empty-stage",
                    &path,
                    span,
                    format!("stage '{}' must have at least one step", stage.name),
                );
            }
        }
    }

    /// Ids are unique across the whole recipe: all stages and nested loop bodies.
    fn duplicate_ids(&mut self) {
        let mut seen: HashMap<String, (String, Option<usize>)> = HashMap::new();
        match &self.recipe.body {
            Body::Flat(steps) => self.duplicate_ids_in(steps, None, &mut seen),
            Body::Staged(stages) => {
                for (stage_idx, stage) in stages.iter().enumerate() {
                    self.duplicate_ids_in(&stage.steps, Some((stage_idx, stage)), &mut seen);
                }
            }
        }
    }

    fn duplicate_ids_in(
        &mut self,
        steps: &[Step],
        stage: Option<(usize, &Stage)>,
        seen: &mut HashMap<String, (String, Option<usize>)>,
    ) {
        for step in steps {
            if !step.id.is_empty() {
                let path = self.path_of(step.span);
                let id_path = format!("{path}.id");
                let span = self.pos(&id_path, step.span).span;
                let stage_idx = stage.map(|(idx, _)| idx);
                match seen.get(&step.id) {
                    Some((first, first_stage)) => {
                        let message = match (stage, *first_stage) {
                            (Some((idx, this)), Some(other)) if other != idx => format!(
                                "duplicate step IDs across stages: '{}' in stage '{}' is also defined at {first}",
                                step.id, this.name
                            ),
                            (Some((_, this)), _) => {
                                format!(
                                    "duplicate step id '{}' in stage '{}' (also defined at {first})",
                                    step.id, this.name
                                )
                            }
                            (None, _) => {
                                format!("duplicate step id '{}' (also defined at {first})", step.id)
                            }
                        };
                        self.sink
                            .error("duplicate-step-id", &id_path, span, message);
                    }
                    None => {
                        seen.insert(step.id.clone(), (path.clone(), stage_idx));
                    }
                }
            }
            self.duplicate_ids_in(&step.body, stage, seen);
        }
    }

    fn dependencies(&mut self) {
        let steps = self.recipe.all_steps();
        let order: HashMap<&str, usize> = steps
            .iter()
            .enumerate()
            .rev()
            .map(|(idx, step)| (step.id.as_str(), idx))
            .collect();
        let mut id_list: Vec<&str> = Vec::new();
        collect_ids(&steps, &mut id_list);
        let all_ids: HashSet<&str> = id_list.into_iter().collect();
        let mut n_declaring = 0usize;
        let mut first_span: Option<(String, Span)> = None;
        for (step_idx, step) in steps.iter().enumerate() {
            self.check_depends(
                step,
                Some((step_idx, &order)),
                &all_ids,
                &mut n_declaring,
                &mut first_span,
            );
        }
        if let Some((path, span)) = first_span {
            let plural = if n_declaring == 1 { "" } else { "s" };
            self.sink.warning(
                "depends-on-not-enforced",
                &path,
                span,
                format!(
                    "recipe '{}' declares depends_on on {n_declaring} step{plural}; Kiln validates but does not currently enforce depends_on: steps run in declaration order",
                    self.recipe.name
                ),
            );
        }
    }

    fn check_depends(
        &mut self,
        step: &Step,
        order: Option<(usize, &HashMap<&str, usize>)>,
        all_ids: &HashSet<&str>,
        n_declaring: &mut usize,
        first_span: &mut Option<(String, Span)>,
    ) {
        let path = self.path_of(step.span);
        if !step.depends_on.is_empty() {
            *n_declaring += 1;
            if first_span.is_none() {
                let dep_path = format!("{path}.depends_on");
                *first_span = Some((dep_path.clone(), self.key_span(&dep_path, step.span)));
            }
        }
        for (dep_idx, dep) in step.depends_on.iter().enumerate() {
            let item_path = format!("{path}.depends_on[{dep_idx}]");
            let span = self
                .map
                .scalar(&item_path)
                .or_else(|| self.map.scalar(&format!("{path}.depends_on")))
                .map_or(step.span, |pos| pos.span);
            if *dep == step.id {
                self.sink.error(
                    "depends-on-self",
                    &item_path,
                    span,
                    format!("step '{}' cannot depend on itself", step.id),
                );
            } else if !all_ids.contains(dep.as_str()) {
                self.sink.error(
                    "depends-on-unknown",
                    &item_path,
                    span,
                    format!(
                        "step '{}': depends_on references unknown step '{dep}'",
                        step.id
                    ),
                );
            } else if let Some((own_idx, order)) = order
                && let Some(dep_idx) = order.get(dep.as_str())
                && *dep_idx >= own_idx
            {
                self.sink.error(
                            "depends-on-later",
                            &item_path,
                            span,
                            format!(
                                "step '{}': depends_on '{dep}' appears later in recipe (index {dep_idx} >= {own_idx})",
                                step.id
                            ),
                        );
            }
        }
        for child in &step.body {
            self.check_depends(child, None, all_ids, n_declaring, first_span);
        }
    }

    fn variables(&mut self) {
        let mut scope = Scope::default();
        for key in self.recipe.context.keys() {
            scope.vars.insert(key.clone(), VarKind::Context);
        }
        for name in ["recipe", "session", "step"] {
            scope.add(name);
        }
        match &self.recipe.body {
            Body::Flat(steps) => {
                for step in steps {
                    self.step_variables(step, &mut scope);
                }
            }
            Body::Staged(stages) => {
                scope.add("stage");
                for stage in stages {
                    for step in &stage.steps {
                        self.step_variables(step, &mut scope);
                    }
                    if let Some(approval) = &stage.approval {
                        let path = format!("{}.approval.prompt", self.path_of(stage.span));
                        let pos = self.pos(&path, approval.span);
                        self.template(&approval.prompt, &path, pos, &scope, "approval prompt");
                    }
                    // Every stage end sets `_approval_message` (the gate's message or "").
                    scope.add("_approval_message");
                }
            }
        }
    }

    fn step_variables(&mut self, step: &Step, scope: &mut Scope) {
        let path = self.path_of(step.span);
        let at = |key: &str| format!("{path}.{key}");
        if let Some(condition) = &step.condition {
            self.expression(condition, &at("condition"), step.span, scope, "condition");
        }
        if step.looping.is_none() && step.body.is_empty() {
            // Plain step: no scope of its own (keeps long recipes linear).
            self.step_kind_variables(step, &path, scope);
            self.leave_outputs(step, scope);
            return;
        }
        let mut inner = scope.clone();
        match &step.looping {
            Some(Loop::Foreach(foreach)) => {
                let foreach_path = at("foreach");
                let pos = self.pos(&foreach_path, step.span);
                let found = template::placeholders(&foreach.foreach);
                if found.is_empty() {
                    self.sink.error(
                        "foreach-no-variable",
                        &foreach_path,
                        pos.span,
                        format!("step '{}': foreach must contain a variable reference such as {{{{items}}}}", step.id),
                    );
                } else {
                    let trimmed = foreach.foreach.trim();
                    let single = found.len() == 1 && found[0].end - found[0].start == trimmed.len();
                    if !single {
                        self.sink.warning(
                            "foreach-extra-text",
                            &foreach_path,
                            pos.span,
                            format!(
                                "step '{}': foreach should be a single reference such as {{{{items}}}}; only the first reference is used",
                                step.id
                            ),
                        );
                    }
                    self.template(&foreach.foreach, &foreach_path, pos, scope, "foreach");
                }
                inner.add(&foreach.as_name);
                inner.add("_loop_index");
                inner.add("_loop_iteration");
                if foreach.parallel != Parallel::Sequential
                    && matches!(step.kind, StepKind::Recipe(_))
                {
                    let span = self.key_span(&at("parallel"), step.span);
                    self.sink.warning(
                        "parallel-recipe-foreach",
                        &at("parallel"),
                        span,
                        format!(
                            "step '{}': parallel foreach with type='recipe' runs sub-recipes concurrently; approval gates inside them are not supported",
                            step.id
                        ),
                    );
                }
            }
            Some(Loop::While(while_loop)) => {
                inner.add("_loop_index");
                inner.add("_loop_iteration");
                if let Some(output) = &step.output {
                    inner.add(output);
                }
                for update in &while_loop.update_context {
                    inner.add(&update.name);
                }
                // From the second iteration on, the body's outputs exist too.
                let mut body_outputs = Vec::new();
                collect_outputs(&step.body, &mut body_outputs);
                for name in body_outputs {
                    inner.add(name);
                }
                let cond_path = at("while_condition");
                if !while_loop.condition.trim().eq_ignore_ascii_case("true") {
                    if template::placeholders(&while_loop.condition).is_empty() {
                        let span = self.pos(&cond_path, step.span).span;
                        self.sink.error(
                            "while-no-variable",
                            &cond_path,
                            span,
                            format!("step '{}': while_condition must contain a variable reference or be 'true'", step.id),
                        );
                    }
                    self.expression(
                        &while_loop.condition,
                        &cond_path,
                        step.span,
                        &inner,
                        "while_condition",
                    );
                }
            }
            None => {}
        }

        self.step_kind_variables(step, &path, &inner);
        for child in &step.body {
            self.step_variables(child, &mut inner);
        }
        if let Some(Loop::While(while_loop)) = &step.looping {
            for update in &while_loop.update_context {
                let update_path = format!("{path}.update_context.{}", update.name);
                let pos = self.pos(&update_path, step.span);
                self.template(&update.value, &update_path, pos, &inner, "update_context");
            }
            if let Some(break_when) = &while_loop.break_when {
                self.expression(
                    break_when,
                    &at("break_when"),
                    step.span,
                    &inner,
                    "break_when",
                );
            }
        }

        // What the step leaves behind for later steps.
        for (name, kind) in &inner.vars {
            if *kind == VarKind::Opaque
                && !scope.vars.contains_key(name)
                && !name.starts_with("_loop_")
            {
                if let Some(Loop::Foreach(foreach)) = &step.looping
                    && *name == foreach.as_name
                {
                    continue;
                }
                scope.add(name);
            }
        }
        self.leave_outputs(step, scope);
    }

    /// Adds what `step` writes (output, collect, exit code) for later steps.
    fn leave_outputs(&mut self, step: &Step, scope: &mut Scope) {
        if let Some(output) = &step.output {
            scope.add(output);
        }
        match &step.looping {
            Some(Loop::Foreach(foreach)) => {
                if let Some(collect) = &foreach.collect {
                    scope.add(collect);
                }
            }
            Some(Loop::While(while_loop)) => {
                if let Some(collect) = &while_loop.collect {
                    scope.add(collect);
                }
            }
            None => {}
        }
        if let StepKind::Bash(bash) = &step.kind
            && let Some(name) = &bash.output_exit_code
        {
            scope.add(name);
        }
        if step.condition.is_some() || matches!(step.looping, Some(Loop::Foreach(_))) {
            scope.add("_skipped_steps");
        }
    }

    fn step_kind_variables(&mut self, step: &Step, path: &str, scope: &Scope) {
        let at = |key: &str| format!("{path}.{key}");
        match &step.kind {
            StepKind::Agent(agent) => {
                let fields = [
                    ("prompt", Some(&agent.prompt)),
                    ("provider", agent.provider.as_ref()),
                    ("model", agent.model.as_ref()),
                ];
                for (key, value) in fields {
                    if let Some(text) = value {
                        let pos = self.pos(&at(key), step.span);
                        self.template(text, &at(key), pos, scope, key);
                    }
                }
                if let Some(known) = &self.options.known_agents {
                    let is_container = !step.body.is_empty() && step.looping.is_some();
                    if !agent.agent.is_empty() && !is_container && !known.contains(&agent.agent) {
                        let span = self.pos(&at("agent"), step.span).span;
                        self.sink.warning(
                            "unknown-agent",
                            &at("agent"),
                            span,
                            format!(
                                "step '{}': agent '{}' may not be available on this server",
                                step.id, agent.agent
                            ),
                        );
                    }
                }
            }
            StepKind::Bash(bash) => {
                let pos = self.pos(&at("command"), step.span);
                self.template(&bash.command, &at("command"), pos, scope, "command");
                if let Some(cwd) = &bash.cwd {
                    let pos = self.pos(&at("cwd"), step.span);
                    self.template(cwd, &at("cwd"), pos, scope, "cwd");
                }
                for (key, value) in &bash.env {
                    if let Value::String(text) = value {
                        let env_path = format!("{path}.env.{key}");
                        let pos = self.pos(&env_path, step.span);
                        self.template(text, &env_path, pos, scope, "env value");
                    }
                }
            }
            StepKind::Recipe(sub) => {
                let recipe_path = at("recipe");
                let pos = self.pos(&recipe_path, step.span);
                self.template(&sub.recipe, &recipe_path, pos, scope, "recipe path");
                if let Some(available) = &self.options.available_recipes {
                    let literal = template::placeholders(&sub.recipe).is_empty();
                    let wanted = sub.recipe.trim().trim_start_matches("./");
                    let found = available
                        .iter()
                        .any(|name| name.trim_start_matches("./") == wanted);
                    if literal && !wanted.is_empty() && !found {
                        self.sink.error(
                            "sub-recipe-not-found",
                            &recipe_path,
                            pos.span,
                            format!("step '{}': sub-recipe '{}' not found among the submitted files and the gallery", step.id, sub.recipe),
                        );
                    }
                }
                self.context_values(&sub.context, &at("context"), step.span, scope);
            }
        }
    }

    fn context_values(
        &mut self,
        values: &Map<String, Value>,
        path: &str,
        fallback: Span,
        scope: &Scope,
    ) {
        for (key, value) in values {
            self.context_value(value, &format!("{path}.{key}"), fallback, scope);
        }
    }

    fn context_value(&mut self, value: &Value, path: &str, fallback: Span, scope: &Scope) {
        match value {
            Value::String(text) => {
                let pos = self.pos(path, fallback);
                self.template(text, path, pos, scope, "context value");
            }
            Value::Array(items) => {
                for (idx, item) in items.iter().enumerate() {
                    self.context_value(item, &format!("{path}[{idx}]"), fallback, scope);
                }
            }
            Value::Object(map) => self.context_values(map, path, fallback, scope),
            _ => {}
        }
    }

    fn template(&mut self, text: &str, path: &str, pos: ScalarPos, scope: &Scope, what: &str) {
        let handlebars = text.contains("{{#") || text.contains("{{/") || text.contains("{{else}}");
        if handlebars {
            self.sink.warning(
                "handlebars-literal",
                path,
                pos.span,
                format!("Handlebars blocks ({{{{#if}}}}, {{{{else}}}}, {{{{/if}}}}) in this {what} are not supported and stay literal text"),
            );
        }
        let mut reported: HashSet<Vec<String>> = HashSet::new();
        for placeholder in template::placeholders(text) {
            if handlebars && placeholder.path.len() == 1 && placeholder.path[0] == "else" {
                continue;
            }
            if reported.contains(&placeholder.path) {
                continue;
            }
            let span = pos.inner(placeholder.start, placeholder.end);
            if self.reference(&placeholder.path, path, span, scope, what) {
                reported.insert(placeholder.path);
            }
        }
    }

    fn expression(&mut self, text: &str, path: &str, fallback: Span, scope: &Scope, what: &str) {
        let pos = self.pos(path, fallback);
        match expr::parse(text) {
            Err(error) => {
                let start = byte_offset(text, error.offset);
                let end = byte_offset(text, error.offset + 1);
                self.sink.error(
                    "expression-syntax",
                    path,
                    pos.inner(start, end),
                    format!("{what}: {}", error.message),
                );
            }
            Ok(parsed) => {
                let mut reported: HashSet<Vec<String>> = HashSet::new();
                for var in parsed.variable_refs() {
                    if reported.contains(&var.path) {
                        continue;
                    }
                    let span = pos.inner(byte_offset(text, var.start), byte_offset(text, var.end));
                    if self.reference(&var.path, path, span, scope, what) {
                        reported.insert(var.path);
                    }
                }
            }
        }
    }

    /// Checks one `{{a.b.c}}` reference; returns true when it reported a problem.
    fn reference(
        &mut self,
        var: &[String],
        path: &str,
        span: Span,
        scope: &Scope,
        what: &str,
    ) -> bool {
        let Some(first) = var.first() else {
            return false;
        };
        let shown = format!("{{{{{}}}}}", var.join("."));
        match scope.vars.get(first) {
            Some(VarKind::Opaque) => false,
            Some(VarKind::Context) => {
                let Some(mut value) = self.recipe.context.get(first) else {
                    return false;
                };
                for (depth, segment) in var.iter().enumerate().skip(1) {
                    let parent = var[..depth].join(".");
                    match value {
                        Value::Object(map) => match map.get(segment) {
                            Some(next) => value = next,
                            None => {
                                let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                                self.sink.error(
                                    "unknown-context-key",
                                    path,
                                    span,
                                    format!(
                                        "{shown} in {what}: key '{segment}' not found in '{parent}'. Available keys: {}",
                                        keys.join(", ")
                                    ),
                                );
                                return true;
                            }
                        },
                        other => {
                            self.sink.error(
                                "not-a-dict",
                                path,
                                span,
                                format!(
                                    "{shown} in {what}: '{parent}' is not a dict (cannot access '{segment}' on type {})",
                                    python_type(other)
                                ),
                            );
                            return true;
                        }
                    }
                }
                false
            }
            None => {
                let available = scope.available();
                let message = if var.len() == 1 {
                    format!(
                        "undefined variable {shown} in {what}: '{first}' is not defined. Available variables: {available}"
                    )
                } else {
                    format!(
                        "{shown} in {what} references unknown namespace '{first}'. Available variables: {available}"
                    )
                };
                let code = if var.len() == 1 {
                    "undefined-variable"
                } else {
                    "unknown-namespace"
                };
                self.sink.error(code, path, span, message);
                true
            }
        }
    }
}

fn collect_ids<'a>(steps: &[&'a Step], out: &mut Vec<&'a str>) {
    for step in steps {
        out.push(&step.id);
        let children: Vec<&Step> = step.body.iter().collect();
        collect_ids(&children, out);
    }
}

/// Names written by `steps` (and their nested bodies): outputs, collects, exit codes.
fn collect_outputs<'a>(steps: &'a [Step], out: &mut Vec<&'a str>) {
    for step in steps {
        out.extend(step.output.as_deref());
        match &step.looping {
            Some(Loop::Foreach(foreach)) => out.extend(foreach.collect.as_deref()),
            Some(Loop::While(while_loop)) => out.extend(while_loop.collect.as_deref()),
            None => {}
        }
        if let StepKind::Bash(bash) = &step.kind {
            out.extend(bash.output_exit_code.as_deref());
        }
        collect_outputs(&step.body, out);
    }
}
