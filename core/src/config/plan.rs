//! Checks a decoded config for meaning and compiles its views.
//!
//! Everything here is without I/O: relations and fields exist, types fit
//! each measure, names are unique, sinks name declared views. Every
//! problem is reported, not just the first.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::expr::{Scope, check_syntax, compile, compile_condition};
use super::model::*;
use super::{Diagnostics, PipelinePlan};
use crate::relation::Relation;
use crate::template::KeyTemplate;
use crate::value::{FieldType, Value};
use crate::view::{KeyPlan, LabelPlan, MeasurePlan, PAGING_PARAMETERS, ViewPlan};

/// Checks `config` and compiles its views; problems go to `diags`.
pub(super) fn plan(config: PipelineConfig, diags: &mut Diagnostics) -> PipelinePlan {
    let mut views = Vec::new();
    for view in &config.views {
        if let Some(plan) = view_plan(view, diags) {
            views.push(Arc::new(plan));
        }
    }
    let mut outputs: BTreeMap<std::path::PathBuf, String> = BTreeMap::new();
    let mut tables: BTreeMap<(String, String), String> = BTreeMap::new();
    for source in &config.sources {
        if let SourceKind::File(file) = &source.kind
            && let Some(path) = &file.dead_letters
        {
            outputs.insert(path.clone(), format!("source {:?}", source.name));
        }
    }
    for sink in &config.sinks {
        let component = format!("sink {:?}", sink.name);
        // That `view` names a declared view is checked as the sink is read
        // (`decode::sink`), also when the rest of the sink has errors.
        let view = views.iter().find(|v| v.name == sink.view.value);
        match &sink.kind {
            SinkKind::File(FileSinkConfig { path }) | SinkKind::Parquet(ParquetSinkConfig { path, .. }) => {
                if let Some(other) = outputs.insert(path.clone(), component.clone()) {
                    diags.push(
                        sink.pos,
                        &component,
                        "path",
                        format!("{} is also written by {other}; each file needs one writer", path.display()),
                    );
                }
            }
            SinkKind::Redis(redis) => {
                if let Some(view) = view {
                    check_redis_sink(redis, view, &component, diags);
                }
            }
            SinkKind::ClickHouse(clickhouse) => {
                let table = if clickhouse.table.is_empty() { &sink.view.value } else { &clickhouse.table };
                let place = format!("{}.{table}", clickhouse.database);
                if let Some(other) = tables.insert((clickhouse.url.clone(), place.clone()), component.clone()) {
                    diags.push(
                        sink.pos,
                        &component,
                        "table",
                        format!("{place} is also written by {other}; each table needs one writer"),
                    );
                }
            }
        }
    }
    if let Some(api) = &config.api {
        check_read_from(&config, api, diags);
    }
    PipelinePlan { config, views }
}

/// Each `api.read_from` entry names a declared view and a Redis or
/// ClickHouse sink of that view.
fn check_read_from(config: &PipelineConfig, api: &ApiConfig, diags: &mut Diagnostics) {
    for (view, sink) in &api.read_from {
        let path = format!("read_from.{}", view.value);
        if !config.views.iter().any(|v| v.name == view.value) {
            let declared: Vec<&str> = config.views.iter().map(|v| v.name.as_str()).collect();
            diags.push(
                view.pos,
                "api",
                &path,
                format!("{:?} is not a declared view; declared views: {}", view.value, declared.join(", ")),
            );
            continue;
        }
        let candidates: Vec<&str> = config
            .sinks
            .iter()
            .filter(|s| s.view.value == view.value && matches!(s.kind, SinkKind::Redis(_) | SinkKind::ClickHouse(_)))
            .map(|s| s.name.as_str())
            .collect();
        let problem = match config.sinks.iter().find(|s| s.name == sink.value) {
            None => Some(format!("{:?} is not a declared sink", sink.value)),
            Some(found) if found.view.value != view.value => {
                Some(format!("sink {:?} materializes view {:?}, not {:?}", sink.value, found.view.value, view.value))
            }
            Some(found) if matches!(found.kind, SinkKind::File(_) | SinkKind::Parquet(_)) => {
                Some(format!("sink {:?} is a file sink; reads come from a redis or clickhouse sink", sink.value))
            }
            Some(_) => None,
        };
        if let Some(problem) = problem {
            let hint = if candidates.is_empty() {
                format!("view {:?} has no redis or clickhouse sink", view.value)
            } else {
                format!("its redis and clickhouse sinks: {}", candidates.join(", "))
            };
            diags.push(sink.pos, "api", &path, format!("{problem}; {hint}"));
        }
    }
}

/// Key templates name key fields, the row key names every key field, and a
/// ranking's score is a numeric field.
fn check_redis_sink(redis: &RedisSinkConfig, view: &ViewPlan, component: &str, diags: &mut Diagnostics) {
    let keys: Vec<String> = view.keys.iter().map(|k| k.name.clone()).collect();
    let parse =
        |text: &Spanned<String>, path: &str, diags: &mut Diagnostics| match KeyTemplate::parse(&text.value, &keys) {
            Ok(template) => Some(template),
            Err(error) => {
                diags.push(text.pos, component, path, error);
                None
            }
        };
    let missing = |named: &[usize]| -> Vec<&str> {
        (0..keys.len()).filter(|i| !named.contains(i)).map(|i| keys[i].as_str()).collect()
    };
    if let Some(template) = parse(&redis.key, "key", diags) {
        let absent = missing(&template.fields().collect::<Vec<_>>());
        if !absent.is_empty() {
            diags.push(
                redis.key.pos,
                component,
                "key",
                format!(
                    "must name every key field of view {:?}, or rows would share a hash; missing: {}",
                    view.name,
                    absent.iter().map(|f| format!("{{{f}}}")).collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
    let fields = view.output_fields();
    for ranking in &redis.rankings {
        let path = format!("rankings.{}", ranking.name.value);
        let set = parse(&ranking.key, &format!("{path}.key"), diags);
        let member = parse(&ranking.member, &format!("{path}.member"), diags);
        if let (Some(set), Some(member)) = (set, member) {
            let absent = missing(&set.fields().chain(member.fields()).collect::<Vec<_>>());
            if !absent.is_empty() {
                diags.push(
                    ranking.member.pos,
                    component,
                    &format!("{path}.member"),
                    format!(
                        "with the ranking's key, must name every key field, or rows would share a member; missing: {}",
                        absent.iter().map(|f| format!("{{{f}}}")).collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
        match fields.iter().find(|(name, _)| *name == ranking.score.value) {
            Some((_, ty)) if ty.is_numeric() => {}
            Some((_, ty)) => diags.push(
                ranking.score.pos,
                component,
                &format!("{path}.score"),
                format!("{:?} is a {ty} field; a score must be a number", ranking.score.value),
            ),
            None => {
                let numeric: Vec<&str> =
                    fields.iter().filter(|(_, ty)| ty.is_numeric()).map(|(name, _)| name.as_str()).collect();
                diags.push(
                    ranking.score.pos,
                    component,
                    &format!("{path}.score"),
                    format!(
                        "{:?} is not a field of view {:?}; numeric fields: {}",
                        ranking.score.value,
                        view.name,
                        numeric.join(", ")
                    ),
                );
            }
        }
    }
}

fn view_plan(view: &ViewConfig, diags: &mut Diagnostics) -> Option<ViewPlan> {
    let component = format!("view {:?}", view.name);
    let Some(relation) = Relation::from_name(&view.from.value) else {
        let known: Vec<&str> = Relation::ALL.iter().map(|r| r.name()).collect();
        diags.push(
            view.from.pos,
            &component,
            "from",
            format!("names {:?}, which is not a relation; relations: {}", view.from.value, known.join(", ")),
        );
        // Without a relation no field can be checked, but every
        // expression's syntax still can.
        for (path, text) in view_expressions(view) {
            if let Err(error) = check_syntax(&text.value) {
                diags.push(text.pos_at(error.offset), &component, &path, error.message);
            }
        }
        return None;
    };
    let scope = Scope::new(
        format!("relation '{}'", relation.name()),
        relation.fields().iter().map(|f| (f.name.to_string(), f.ty)),
    );
    let mut ok = true;
    let condition = |text: &Spanned<String>, path: &str, scope: &Scope, diags: &mut Diagnostics| match compile_condition(
        &text.value,
        scope,
    ) {
        Ok(expr) => Some(expr),
        Err(error) => {
            diags.push(text.pos_at(error.offset), &component, path, error.message);
            None
        }
    };
    let filter = match &view.filter {
        Some(text) => {
            let expr = condition(text, "filter", &scope, diags);
            ok &= expr.is_some();
            expr
        }
        None => None,
    };
    let mut names: Vec<(String, usize)> = Vec::new();
    let mut check_name = |name: &Spanned<String>, path: &str, diags: &mut Diagnostics| -> bool {
        if !super::decode::is_identifier(&name.value) {
            diags.push(
                name.pos,
                &format!("view {:?}", view.name),
                path,
                format!(
                    "{:?} is not a valid field name; use lowercase letters, digits and '_', starting with a letter or '_'",
                    name.value
                ),
            );
            return false;
        }
        if let Some((_, first_line)) = names.iter().find(|(n, _)| *n == name.value) {
            diags.push(
                name.pos,
                &format!("view {:?}", view.name),
                path,
                format!(
                    "output field {:?} is already defined on line {}; output field names must be unique",
                    name.value, first_line
                ),
            );
            return false;
        }
        names.push((name.value.clone(), name.pos.line));
        true
    };

    let mut keys = Vec::new();
    for (index, key) in view.group_by.iter().enumerate() {
        let path = format!("group_by[{index}]");
        ok &= check_name(&key.name, &path, diags);
        if PAGING_PARAMETERS.contains(&key.name.value.as_str()) {
            diags.push(
                key.name.pos,
                &format!("view {:?}", view.name),
                &path,
                format!(
                    "key field {:?} would clash with the paging parameter of the same name in GET /v1/views/{}; \
                     key fields may not be named {}",
                    key.name.value,
                    view.name,
                    PAGING_PARAMETERS.join(" or ")
                ),
            );
            ok = false;
        }
        match compile(&key.expr.value, &scope) {
            Ok((expr, ty)) => keys.push(KeyPlan { name: key.name.value.clone(), expr, ty }),
            Err(error) => {
                diags.push(key.expr.pos_at(error.offset), &component, &path, error.message);
                ok = false;
            }
        }
    }

    let mut measures = Vec::new();
    for measure in &view.measures {
        let path = format!("measures.{}", measure.name.value);
        ok &= check_name(&measure.name, &path, diags);
        let filter = match &measure.filter {
            Some(text) => match condition(text, &format!("{path}.where"), &scope, diags) {
                Some(expr) => Some(expr),
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let function_path = format!("{path}.{}", measure.function.key());
        let (input, ty) = if measure.function == MeasureFunction::Count {
            (None, FieldType::UInt)
        } else {
            match compile(&measure.input.value, &scope) {
                Ok((expr, input_ty)) => {
                    let ty = match measure.function {
                        MeasureFunction::Sum | MeasureFunction::Avg if !input_ty.is_numeric() => {
                            diags.push(
                                measure.input.pos,
                                &component,
                                &function_path,
                                format!(
                                    "needs an integer field, but {:?} is a {input_ty}; integer fields of relation '{}': {}",
                                    measure.input.value,
                                    relation.name(),
                                    numeric_fields(relation)
                                ),
                            );
                            ok = false;
                            continue;
                        }
                        MeasureFunction::Sum | MeasureFunction::Avg => FieldType::Int,
                        MeasureFunction::CountDistinct => FieldType::UInt,
                        MeasureFunction::Min | MeasureFunction::Max => input_ty,
                        MeasureFunction::Count => FieldType::UInt,
                    };
                    (Some(expr), ty)
                }
                Err(error) => {
                    diags.push(measure.input.pos_at(error.offset), &component, &function_path, error.message);
                    ok = false;
                    continue;
                }
            }
        };
        measures.push(MeasurePlan {
            name: measure.name.value.clone(),
            function: measure.function,
            input,
            filter,
            ty,
            slot: 0,
        });
    }

    let output_scope = |keys: &[KeyPlan], measures: &[MeasurePlan], labels: &[LabelPlan]| {
        Scope::new(
            format!("view '{}'", view.name),
            keys.iter()
                .map(|k| (k.name.clone(), k.ty))
                .chain(measures.iter().map(|m| (m.name.clone(), m.ty)))
                .chain(labels.iter().map(|l| (l.name.clone(), FieldType::Text))),
        )
    };
    let mut labels = Vec::new();
    for label in &view.labels {
        let path = format!("labels.{}", label.name.value);
        ok &= check_name(&label.name, &path, diags);
        let rule_scope = output_scope(&keys, &measures, &[]);
        let mut rules = Vec::new();
        for (index, rule) in label.rules.iter().enumerate() {
            let when = match &rule.when {
                Some(text) => match condition(text, &format!("{path}[{index}].when"), &rule_scope, diags) {
                    Some(expr) => Some(expr),
                    None => {
                        ok = false;
                        continue;
                    }
                },
                None => None,
            };
            rules.push((when, Value::Text(rule.value.value.as_str().into())));
        }
        if label.rules.is_empty() {
            diags.push(
                label.name.pos,
                &component,
                &path,
                "has no rules; add at least one `- { value: ... }`".to_string(),
            );
            ok = false;
        }
        labels.push(LabelPlan { name: label.name.value.clone(), rules });
    }

    let having = match &view.having {
        Some(text) => {
            let expr = condition(text, "having", &output_scope(&keys, &measures, &labels), diags);
            ok &= expr.is_some();
            expr
        }
        None => None,
    };
    ok.then(|| {
        let mut plan = ViewPlan {
            name: view.name.clone(),
            relation,
            filter,
            keys,
            measures,
            labels,
            having,
            buckets: view.buckets,
            slots: Vec::new(),
        };
        plan.assign_slots();
        plan
    })
}

/// Every expression of `view`, with its path in the view.
fn view_expressions(view: &ViewConfig) -> Vec<(String, &Spanned<String>)> {
    let mut expressions = Vec::new();
    expressions.extend(view.filter.iter().map(|text| ("filter".to_string(), text)));
    for (index, key) in view.group_by.iter().enumerate() {
        expressions.push((format!("group_by[{index}]"), &key.expr));
    }
    for measure in &view.measures {
        let path = format!("measures.{}", measure.name.value);
        expressions.extend(measure.filter.iter().map(|text| (format!("{path}.where"), text)));
        if measure.function != MeasureFunction::Count {
            expressions.push((format!("{path}.{}", measure.function.key()), &measure.input));
        }
    }
    for label in &view.labels {
        for (index, rule) in label.rules.iter().enumerate() {
            expressions
                .extend(rule.when.iter().map(|text| (format!("labels.{}[{index}].when", label.name.value), text)));
        }
    }
    expressions.extend(view.having.iter().map(|text| ("having".to_string(), text)));
    expressions
}

fn numeric_fields(relation: Relation) -> String {
    relation.fields().iter().filter(|f| f.ty.is_numeric()).map(|f| f.name).collect::<Vec<_>>().join(", ")
}
