//! What the OpenAPI document says of every operation besides its own annotation: the answers
//! and parameters that come from what operations share (the caller's extractor, the JSON body
//! reader, the refusal limiter), and the forms of the ids in paths. Said here once, so that an
//! operation added later is described as completely as the others without repeating them.

use serde_json::Value;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Required, Type};

use crate::config::Config;

/// The form of each id a path can carry, as `clover_model` checks it: (parameter, pattern,
/// longest). The patterns are ECMA-262 regular expressions without lookaround, so that every
/// OpenAPI tool reads them.
const ID_PARAMETERS: &[(&str, &str, usize)] = &[
    // clover_model::SubjectId: 1 to 128 of A-Z a-z 0-9 - _ . : @, not only dots.
    ("subject_id", "^[A-Za-z0-9_.:@-]*[A-Za-z0-9_:@-][A-Za-z0-9_.:@-]*$", 128),
    // An account is a subject: the same form.
    ("account_id", "^[A-Za-z0-9_.:@-]*[A-Za-z0-9_:@-][A-Za-z0-9_.:@-]*$", 128),
    // crate::subjects::requests: `sr-` and 24 hex digits.
    ("request_id", "^sr-[0-9a-f]{24}$", 27),
    // crate::government: `gr-` and 24 hex digits.
    ("government_request_id", "^gr-[0-9a-f]{24}$", 27),
    // clover_model::RecordId: a UUID in its one spelling, lowercase with hyphens.
    ("record_id", "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", 36),
    // crate::repatriation::check_job: 1 to 64 of a-z 0-9 - _ ., not starting with a dot.
    ("job", "^[a-z0-9_-][a-z0-9._-]{0,63}$", 64),
];

/// The characters and length of the context headers (`pipeline::caller::context_header`).
const CONTEXT_HEADER_PATTERN: &str = "^[A-Za-z0-9_.:#/-]{1,128}$";

/// The paths whose refusals are rate-limited (answered 429 with `Retry-After`).
const LIMITED_PREFIXES: &[&str] = &[
    "/v1/records/",
    "/v1/subjects/",
    "/v1/repatriation/",
    "/v1/transfers",
    "/v1/me",
    "/v1/accounts/",
    "/v1/requests/",
    "/v1/government-requests",
];

/// Completes `api`, the document derived from the handlers' annotations.
pub(super) fn complete(api: &mut OpenApi) {
    for (path, item) in &mut api.paths.paths {
        for operation in operations(item) {
            describe_ids(operation);
            if needs_caller(operation) {
                describe_caller(operation);
            }
            if operation.request_body.is_some() {
                describe_body(operation);
            }
            if LIMITED_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
                describe_limit(operation);
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head]
        .into_iter()
        .filter_map(Option::as_mut)
}

/// Whether an operation authenticates its caller: it inherits the document's security (a token
/// or a service certificate) rather than declaring none (`security(())`).
fn needs_caller(operation: &Operation) -> bool {
    operation.security.as_ref().is_none_or(|requirements| {
        requirements.iter().any(|r| serde_json::to_value(r).is_ok_and(|v| v.as_object().is_some_and(|o| !o.is_empty())))
    })
}

/// A problem answer (RFC 9457).
fn problem(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
        )
        .build()
}

/// Adds `description` to the answer of `status`, or a problem answer of `status` if the
/// operation's annotation has none.
fn answer(operation: &mut Operation, status: &str, description: &str) {
    match operation.responses.responses.get_mut(status) {
        Some(RefOr::T(response)) => {
            if !response.description.contains(description) {
                response.description = format!("{}; or {description}", response.description);
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            operation.responses.responses.insert(status.to_owned(), RefOr::T(problem(description)));
        }
    }
}

/// A string of `pattern` (which bounds its length, or `longest` does).
fn string_schema(pattern: &str, longest: Option<usize>) -> RefOr<utoipa::openapi::Schema> {
    ObjectBuilder::new().schema_type(Type::String).max_length(longest).pattern(Some(pattern)).into()
}

fn describe_ids(operation: &mut Operation) {
    for parameter in operation.parameters.iter_mut().flatten() {
        let RefOr::T(parameter) = parameter else { continue };
        if let Some((_, pattern, longest)) = ID_PARAMETERS.iter().find(|(name, ..)| *name == parameter.name) {
            parameter.schema = Some(string_schema(pattern, Some(*longest)));
        }
    }
}

/// What every operation with a caller can answer before its handler runs
/// (`pipeline::caller::Caller`), and the headers it reads.
fn describe_caller(operation: &mut Operation) {
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    for (name, description) in [
        ("X-Clover-Purpose", "Why the caller calls: a reason code, one of the configured [[purposes]]"),
        (
            "X-Clover-Justification",
            "The ticket that justifies the call, which the log keeps: it must also match [policy] ticket_pattern \
             (free text is refused)",
        ),
    ] {
        let declared = parameters.iter().any(|p| matches!(p, RefOr::T(p) if p.name.eq_ignore_ascii_case(name)));
        if !declared {
            parameters.push(RefOr::T(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(description))
                    .schema(Some(string_schema(CONTEXT_HEADER_PATTERN, None)))
                    .build(),
            ));
        }
    }
    answer(
        operation,
        "400",
        "`invalid-header`: X-Clover-Purpose or X-Clover-Justification is not 1 to 128 characters of \
         A-Z a-z 0-9 - _ . : # /, or the justification does not match [policy] ticket_pattern",
    );
    let unauthenticated = ResponseBuilder::new()
        .description("`unauthenticated`: no valid bearer token (and no service certificate)")
        .content(
            "application/problem+json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
        )
        .header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .description(Some("`Bearer`"))
                .build(),
        )
        .build();
    operation.responses.responses.insert("401".to_owned(), RefOr::T(unauthenticated));
    answer(
        operation,
        "403",
        "`certificate-refused`: a client certificate that names no configured service, or is presented from \
         outside its site; the refusal is logged",
    );
    answer(
        operation,
        "503",
        "`log-unavailable`: the log cannot record the request, so nothing is decided or decrypted; retry later",
    );
    answer(operation, "500", "`internal`: the boundary failed; the cause is in its log, not in the answer");
}

/// What an operation that reads a JSON body can answer about it (`problem::Body`).
fn describe_body(operation: &mut Operation) {
    answer(operation, "400", "`malformed-json`: the body is not JSON");
    answer(operation, "413", "`payload-too-large`: the body is over the boundary's max_body_bytes");
    answer(
        operation,
        "415",
        "`unsupported-media-type`: the body is not declared as JSON (`application/json`, in UTF-8)",
    );
    answer(
        operation,
        "422",
        "`invalid-body`: the JSON is not of the form described (a field missing, unknown or invalid)",
    );
}

/// The answer of the refusal limiter: too many refused requests from one principal or address.
fn describe_limit(operation: &mut Operation) {
    if operation.responses.responses.contains_key("429") {
        return;
    }
    let limited = ResponseBuilder::new()
        .description(
            "`too-many-refusals`: this caller, or their address, was refused more often than [policy] \
             refusal_limit allows in the window; this refusal is not logged one by one (the window's summary \
             entry counts it); retry after Retry-After seconds",
        )
        .content(
            "application/problem+json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
        )
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0))))
                .description(Some("Seconds to wait before asking again"))
                .build(),
        )
        .build();
    operation.responses.responses.insert("429".to_owned(), RefOr::T(limited));
}

/// The document as a boundary serves it: what its configuration decides stated too, so that a
/// client (or a tool that generates requests from the document) knows which values this
/// boundary accepts: its categories, its purposes, and the form of its justification tickets
/// (and the form of the subject ids an approval names, which utoipa cannot put on the items of
/// a list).
pub(super) fn configured(api: &OpenApi, config: &Config) -> Value {
    let mut doc = serde_json::to_value(api).unwrap_or_default();
    let categories: Vec<Value> = config.categories.iter().map(|c| Value::from(c.name.as_str())).collect();
    let purposes: Vec<Value> = config.purposes.iter().map(|p| Value::from(p.name.as_str())).collect();
    let destinations: Vec<Value> = config.destinations.iter().map(|d| Value::from(d.name.as_str())).collect();
    let mut schemas = doc.pointer_mut("/components/schemas").map(std::mem::take).unwrap_or_default();
    for pointer in ["/ApprovalBody/properties/subjects/items", "/RepatriatedRecordBody/properties/subject_id"] {
        if let Some(Value::Object(items)) = schemas.pointer_mut(pointer)
            && let Some((_, pattern, longest)) = ID_PARAMETERS.iter().find(|(name, ..)| *name == "subject_id")
        {
            items.insert("pattern".to_owned(), Value::from(*pattern));
            items.insert("maxLength".to_owned(), Value::from(*longest));
        }
    }
    for (pointer, values) in [
        ("/RecordBody/properties/category", &categories),
        ("/RepatriatedRecordBody/properties/category", &categories),
        ("/VerifyBatch/properties/category", &categories),
        ("/ApprovalBody/properties/categories/items", &categories),
        ("/ApprovalBody/properties/purpose", &purposes),
        ("/TransferBody/properties/categories/items", &categories),
        ("/TransferBody/properties/purpose", &purposes),
        ("/TransferBody/properties/destination", &destinations),
        ("/AggregateBody/properties/categories/items", &categories),
        ("/AggregateBody/properties/purpose", &purposes),
        ("/AggregateBody/properties/destination", &destinations),
    ] {
        if let Some(Value::Object(schema)) = schemas.pointer_mut(pointer) {
            schema.insert("enum".to_owned(), Value::Array(values.clone()));
        }
    }
    if let Some(slot) = doc.pointer_mut("/components/schemas") {
        *slot = schemas;
    }
    let ticket = config.policy.ticket_pattern.as_str();
    if let Some(Value::Object(paths)) = doc.get_mut("paths") {
        let parameters = paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|item| item.values_mut())
            .filter_map(|operation| operation.get_mut("parameters").and_then(Value::as_array_mut))
            .flatten();
        for parameter in parameters {
            if parameter.get("name").and_then(Value::as_str) == Some("X-Clover-Justification")
                && let Some(Value::Object(schema)) = parameter.get_mut("schema")
            {
                schema.insert("pattern".to_owned(), Value::from(ticket));
            }
        }
    }
    doc
}
