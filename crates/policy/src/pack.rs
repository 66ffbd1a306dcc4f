//! The Cedar policy pack: a schema, policies, and decisions with four outcomes.
//!
//! A pack is a directory holding one `*.cedarschema` file and any number of `*.cedar` files.
//! Every policy carries an `@id("...")` annotation, its name in decisions and in the log. A
//! pack is accepted only if it parses, every id is present and unique, and every policy
//! validates against the schema (strict mode): a typo in an attribute name is an error, not a
//! policy that silently never matches.
//!
//! Reads are decided twice, first for a full view (`read`), then, if refused, for a
//! pseudonymised view (`read_pseudonymised`). A refusal whose only deciding policies are marked
//! `@outcome("approval")` is [`Outcome::ApprovalRequired`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use clover_model::{Action, SubjectId, View};

use crate::{Decision, Outcome, Permit, Verdict};

/// The default pack's schema, shipped in the binary.
pub const DEFAULT_SCHEMA: &str = include_str!("../../../policies/clover.cedarschema");
/// The default pack's policies, shipped in the binary.
pub const DEFAULT_POLICIES: &str = include_str!("../../../policies/default.cedar");

/// Why a pack was refused.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// A file could not be read.
    #[error("cannot read {path:?}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        cause: std::io::Error,
    },
    /// The directory does not hold exactly one schema.
    #[error("{0:?} must hold exactly one *.cedarschema file")]
    Schema(PathBuf),
    /// The schema does not parse.
    #[error("the schema does not parse")]
    BadSchema(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A policy file does not parse.
    #[error("{file} does not parse")]
    Parse {
        /// The file.
        file: String,
        /// The parser's errors.
        #[source]
        source: Box<cedar_policy::ParseErrors>,
    },
    /// A policy has no `@id`, or an id is used twice.
    #[error("{0}")]
    Ids(String),
    /// Cedar refused a policy into the pack's sets.
    #[error("policy {id:?} cannot be taken into the pack")]
    Refused {
        /// The policy's id.
        id: String,
        /// Cedar's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Policies do not validate against the schema.
    #[error("the policies do not validate against the schema:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// Who asks, as the pack sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackPrincipal {
    /// Employee or service.
    pub kind: clover_model::PrincipalKind,
    /// Their id.
    pub id: String,
    /// Their home region.
    pub home_region: String,
    /// Their site.
    pub site: String,
    /// Their roles.
    pub roles: Vec<String>,
}

/// What is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackResource {
    /// A record.
    Record {
        /// Its id.
        id: String,
        /// Its category.
        category: String,
        /// Whether the category is sensitive.
        sensitive: bool,
        /// Whether its subject is a minor.
        subject_minor: bool,
        /// Its region.
        home_region: String,
    },
    /// A subject as a whole.
    Subject {
        /// Its id (or keyed hash).
        id: String,
        /// Whether they are a minor.
        minor: bool,
        /// Their home region.
        home_region: String,
    },
    /// A request for an approval.
    Approval {
        /// Its id.
        id: String,
        /// Who asked for it.
        requester: String,
    },
    /// The boundary itself, for administration (key rotation).
    Boundary {
        /// Its region.
        region: String,
    },
    /// A request from an authority, as it is answered.
    GovernmentRequest {
        /// Its id.
        id: String,
        /// The authority's country (ISO 3166-1 alpha-2, lowercase).
        country: String,
        /// The instrument (`production-order`, `emergency`, ...).
        instrument: String,
        /// Whether the region answers that country under that instrument (`[government]
        /// recognised`).
        recognised: bool,
        /// How many of the legal team approved it (each another person than the one who
        /// registered it).
        approvals: i64,
        /// Whether it names a subject who is a minor.
        minors: bool,
    },
}

/// Everything a decision is taken on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRequest {
    /// The boundary's region.
    pub boundary_region: String,
    /// The caller.
    pub principal: PackPrincipal,
    /// Read, write or erase.
    pub action: Action,
    /// The record or subject.
    pub resource: PackResource,
    /// The origin's site and region, or `None` for an unknown origin.
    pub origin: Option<(String, String)>,
    /// The declared purpose.
    pub purpose: Option<String>,
    /// Whether the purpose is on the configured list.
    pub purpose_declared: bool,
    /// Whether the record's category declares the purpose.
    pub purpose_allowed_for_category: bool,
    /// Whether the purpose is allowed for pseudonymised transfers out of the region.
    pub purpose_allows_transfer: bool,
    /// Whether the caller holds one of the roles the purpose names (false for a purpose that is
    /// not on the configured list).
    pub purpose_role_ok: bool,
    /// Whether the caller holds one of the roles the record's category names (false for a
    /// category that names none, and for requests about no record).
    pub category_role_ok: bool,
    /// Whether a justification ticket was given.
    pub has_justification: bool,
    /// Whether an approval covers the access.
    pub approved: bool,
    /// Distinct subjects the caller touched in the window.
    pub subjects_touched: i64,
    /// The threshold above which an approval is needed.
    pub bulk_threshold: i64,
    /// Where the data would go: for a transfer, its destination; for a read from outside the
    /// region, the destination configured for the caller's region and purpose (none if none is).
    pub destination: Option<PackDestination>,
}

/// A destination's facts, as a decision sees them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PackDestination {
    /// Its region.
    pub region: String,
    /// Its legal basis (`adequacy`, `scc`, `bcr`, `derogation`, `none`).
    pub legal_basis: String,
    /// Whether the declared purpose is one it may receive data for.
    pub purpose_allowed: bool,
}

/// A validated policy pack.
#[derive(Debug)]
pub struct PolicyPack {
    policies: PolicySet,
    /// For each action of the schema, the policies whose scope can match it: a request is
    /// evaluated against these only (Cedar would evaluate every policy's scope otherwise, and
    /// skip the others as not applicable, with the same answer).
    by_action: HashMap<String, ActionPolicies>,
    types: EntityTypes,
    authorizer: Authorizer,
    /// SHA-256 of the schema and policy files it was built from (hex).
    digest: String,
}

/// An action's uid and the policies that may apply to it.
#[derive(Debug)]
struct ActionPolicies {
    uid: EntityUid,
    policies: PolicySet,
}

/// The schema's entity type names, parsed once.
#[derive(Debug)]
struct EntityTypes {
    employee: EntityTypeName,
    service: EntityTypeName,
    data_subject: EntityTypeName,
    record: EntityTypeName,
    subject: EntityTypeName,
    approval: EntityTypeName,
    boundary: EntityTypeName,
    government_request: EntityTypeName,
}

impl EntityTypes {
    fn new() -> Result<Self, PackError> {
        let name = |n: &str| EntityTypeName::from_str(n).map_err(|e| PackError::BadSchema(Box::new(e)));
        Ok(Self {
            employee: name("Clover::Employee")?,
            service: name("Clover::Service")?,
            data_subject: name("Clover::DataSubject")?,
            record: name("Clover::Record")?,
            subject: name("Clover::Subject")?,
            approval: name("Clover::Approval")?,
            boundary: name("Clover::Boundary")?,
            government_request: name("Clover::GovernmentRequest")?,
        })
    }
}

/// Splits `policies` by the schema's actions: a policy goes with every action its action scope
/// can match (any action; that action; a list holding the action or one of its groups), with
/// that scope made unconstrained, since it is known to hold.
fn by_action(schema: &Schema, policies: &PolicySet) -> Result<HashMap<String, ActionPolicies>, PackError> {
    let actions = schema.action_entities().map_err(|e| PackError::BadSchema(Box::new(e)))?;
    let mut out = HashMap::new();
    for action in schema.actions() {
        let mut groups: HashSet<&EntityUid> = actions.ancestors(action).into_iter().flatten().collect();
        groups.insert(action);
        let mut subset = PolicySet::new();
        for policy in policies.policies() {
            let applies = match policy.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(uid) => uid == *action,
                ActionConstraint::In(uids) => uids.iter().any(|uid| groups.contains(uid)),
            };
            if !applies {
                continue;
            }
            // Within this subset the request's action is always `action`, which the scope was
            // just shown to match: the scope's action test is dropped, so that Cedar does not
            // build and search the scope's list of actions on every evaluation.
            let refused = |source: Box<dyn std::error::Error + Send + Sync>| PackError::Refused {
                id: policy.id().to_string(),
                source,
            };
            let scoped = if matches!(policy.action_constraint(), ActionConstraint::Any) {
                policy.clone()
            } else {
                let mut json = policy.to_json().map_err(|e| refused(Box::new(e)))?;
                if let Some(scope) = json.get_mut("action") {
                    *scope = serde_json::json!({ "op": "All" });
                }
                Policy::from_json(Some(policy.id().clone()), json).map_err(|e| refused(Box::new(e)))?
            };
            subset.add(scoped).map_err(|e| refused(Box::new(e)))?;
        }
        out.insert(action.id().unescaped().to_owned(), ActionPolicies { uid: action.clone(), policies: subset });
    }
    Ok(out)
}

fn cedar_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl PolicyPack {
    /// The pack that ships with Clover (`policies/` in the repository).
    pub fn default_pack() -> Result<Self, PackError> {
        Self::from_sources(DEFAULT_SCHEMA, &[("default.cedar".to_owned(), DEFAULT_POLICIES.to_owned())])
    }

    /// SHA-256 (hex) of the text the pack was built from: its schema, then each policy file's
    /// name and text, each length-prefixed (8 bytes, big-endian), in the order given (a
    /// directory's files sorted by name). What the log records of a reload, so that the text in
    /// force can be checked against it.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Loads and validates the pack in `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self, PackError> {
        let read_err = |path: &Path| {
            let path = path.to_owned();
            move |cause| PackError::Read { path, cause }
        };
        let mut schemas = Vec::new();
        let mut files = Vec::new();
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(dir).map_err(read_err(dir))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for path in entries {
            match path.extension().and_then(|e| e.to_str()) {
                Some("cedarschema") => schemas.push(std::fs::read_to_string(&path).map_err(read_err(&path))?),
                Some("cedar") => {
                    let text = std::fs::read_to_string(&path).map_err(read_err(&path))?;
                    let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                    files.push((name, text));
                }
                _ => {}
            }
        }
        let [schema] = schemas.as_slice() else { return Err(PackError::Schema(dir.to_owned())) };
        Self::from_sources(schema, &files)
    }

    /// Builds a pack from a schema and named policy files.
    pub fn from_sources(schema: &str, files: &[(String, String)]) -> Result<Self, PackError> {
        let digest = sources_digest(schema, files);
        let (schema, _warnings) =
            Schema::from_cedarschema_str(schema).map_err(|e| PackError::BadSchema(Box::new(e)))?;
        let mut policies = PolicySet::new();
        let mut ids = BTreeSet::new();
        for (file, text) in files {
            let parsed = PolicySet::from_str(text)
                .map_err(|source| PackError::Parse { file: file.clone(), source: Box::new(source) })?;
            for policy in parsed.policies() {
                let Some(id) = policy.annotation("id") else {
                    return Err(PackError::Ids(format!("{file}: a policy has no @id(\"...\") annotation")));
                };
                if !ids.insert(id.to_owned()) {
                    return Err(PackError::Ids(format!("{file}: policy id {id:?} is used twice")));
                }
                policies
                    .add(policy.new_id(PolicyId::new(id)))
                    .map_err(|e| PackError::Refused { id: id.to_owned(), source: Box::new(e) })?;
            }
        }
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            return Err(PackError::Invalid(result.validation_errors().map(cedar_err).collect()));
        }
        let by_action = by_action(&schema, &policies)?;
        Ok(Self { policies, by_action, types: EntityTypes::new()?, authorizer: Authorizer::new(), digest })
    }

    /// The ids of the pack's policies.
    pub fn policy_ids(&self) -> Vec<String> {
        self.policies.policies().map(|p| p.id().to_string()).collect()
    }

    /// Decides a request about `subject`'s data: a [`Permit`] for that subject and action if it
    /// is allowed.
    pub fn verdict(&self, request: &PackRequest, subject: &SubjectId) -> Verdict {
        let decision = self.decide(request);
        match decision.outcome {
            Outcome::Allow(view) => {
                Verdict::Allowed(Permit { decision, subject: subject.clone(), action: request.action, view })
            }
            Outcome::Deny | Outcome::ApprovalRequired => Verdict::Denied(decision),
        }
    }

    /// Decides a request.
    pub fn decide(&self, request: &PackRequest) -> Decision {
        let prepared = match self.prepare(request) {
            Ok(prepared) => prepared,
            Err(e) => return error_decision(e),
        };
        match request.action {
            Action::Read => {
                let full = self.evaluate(&prepared, "read");
                if let Ok((true, permits)) = &full {
                    return Decision {
                        outcome: Outcome::Allow(View::Full),
                        policies: permits.clone(),
                        reason: "a full view is allowed".to_owned(),
                    };
                }
                let pseudonymised = self.evaluate(&prepared, "read_pseudonymised");
                if let Ok((true, permits)) = &pseudonymised {
                    return Decision {
                        outcome: Outcome::Allow(View::Pseudonymised),
                        policies: permits.clone(),
                        reason: "a pseudonymised view is allowed; a full view is not".to_owned(),
                    };
                }
                let mut forbids: Vec<String> = Vec::new();
                for result in [full, pseudonymised] {
                    match result {
                        Ok((false, reasons)) => forbids.extend(reasons),
                        Ok((true, _)) => {}
                        Err(e) => return error_decision(e),
                    }
                }
                self.refusal(forbids)
            }
            Action::Write
            | Action::Erase
            | Action::ListAccesses
            | Action::Approve
            | Action::Administer
            | Action::Repatriate
            | Action::Export
            | Action::ExportSubject
            | Action::CloseAccount
            | Action::HandleRequests
            | Action::RegisterGovernmentRequest
            | Action::HandleGovernmentRequests
            | Action::AnswerGovernmentRequest
            | Action::Disclose => match self.evaluate(&prepared, cedar_action(request.action)) {
                Ok((true, permits)) => Decision {
                    outcome: Outcome::Allow(View::Full),
                    policies: permits,
                    reason: format!("{} is allowed", request.action),
                },
                Ok((false, forbids)) => self.refusal(forbids),
                Err(e) => error_decision(e),
            },
        }
    }

    /// A refusal from the forbids that fired (none: no permit matched).
    fn refusal(&self, mut forbids: Vec<String>) -> Decision {
        forbids.sort();
        forbids.dedup();
        if forbids.is_empty() {
            return Decision {
                outcome: Outcome::Deny,
                policies: vec!["default-deny".to_owned()],
                reason: "no policy allows this request".to_owned(),
            };
        }
        let approval =
            forbids.iter().all(|id| self.policies.annotation(&PolicyId::new(id), "outcome") == Some("approval"));
        let reason = format!("refused by {}", forbids.join(", "));
        Decision {
            outcome: if approval { Outcome::ApprovalRequired } else { Outcome::Deny },
            policies: forbids,
            reason,
        }
    }

    /// Builds the entities and context of a request once, for one or two evaluations.
    fn prepare(&self, request: &PackRequest) -> Result<Prepared, String> {
        // Entities and context are built directly (no JSON, no schema check per request: the
        // policies were validated against the schema when the pack was loaded, and these shapes
        // are fixed here; a mismatch would surface as an evaluation error, which denies).
        let uid = |kind: &EntityTypeName, id: &str| EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id));
        let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let b = RestrictedExpression::new_bool;
        let kind = match request.principal.kind {
            clover_model::PrincipalKind::Employee => &self.types.employee,
            clover_model::PrincipalKind::Service => &self.types.service,
            clover_model::PrincipalKind::Subject => &self.types.data_subject,
        };
        let principal = uid(kind, &request.principal.id);
        let principal_entity = Entity::new(
            principal.clone(),
            HashMap::from([
                ("id".to_owned(), s(&request.principal.id)),
                ("home_region".to_owned(), s(&request.principal.home_region)),
                ("site".to_owned(), s(&request.principal.site)),
                ("roles".to_owned(), RestrictedExpression::new_set(request.principal.roles.iter().map(|r| s(r)))),
            ]),
            HashSet::new(),
        )
        .map_err(cedar_err)?;
        let (resource, attrs) = match &request.resource {
            PackResource::Record { id, category, sensitive, subject_minor, home_region } => (
                uid(&self.types.record, id),
                HashMap::from([
                    ("category".to_owned(), s(category)),
                    ("sensitive".to_owned(), b(*sensitive)),
                    ("subject_minor".to_owned(), b(*subject_minor)),
                    ("home_region".to_owned(), s(home_region)),
                ]),
            ),
            PackResource::Boundary { region } => {
                (uid(&self.types.boundary, region), HashMap::from([("region".to_owned(), s(region))]))
            }
            PackResource::Approval { id, requester } => {
                (uid(&self.types.approval, id), HashMap::from([("requester".to_owned(), s(requester))]))
            }
            PackResource::GovernmentRequest { id, country, instrument, recognised, approvals, minors } => (
                uid(&self.types.government_request, id),
                HashMap::from([
                    ("country".to_owned(), s(country)),
                    ("instrument".to_owned(), s(instrument)),
                    ("recognised".to_owned(), b(*recognised)),
                    ("approvals".to_owned(), RestrictedExpression::new_long(*approvals)),
                    ("minors".to_owned(), b(*minors)),
                ]),
            ),
            PackResource::Subject { id, minor, home_region } => (
                uid(&self.types.subject, id),
                HashMap::from([
                    ("id".to_owned(), s(id)),
                    ("minor".to_owned(), b(*minor)),
                    ("home_region".to_owned(), s(home_region)),
                ]),
            ),
        };
        let resource_entity = Entity::new(resource.clone(), attrs, HashSet::new()).map_err(cedar_err)?;
        let entities = Entities::from_entities([principal_entity, resource_entity], None).map_err(cedar_err)?;
        let (origin_site, origin_region) = request.origin.clone().unwrap_or_default();
        let destination = request.destination.clone().unwrap_or_default();
        let context = Context::from_pairs([
            ("boundary_region".to_owned(), s(&request.boundary_region)),
            ("origin_known".to_owned(), b(request.origin.is_some())),
            ("origin_region".to_owned(), s(&origin_region)),
            ("origin_site".to_owned(), s(&origin_site)),
            ("purpose".to_owned(), s(request.purpose.as_deref().unwrap_or_default())),
            ("purpose_declared".to_owned(), b(request.purpose_declared)),
            ("purpose_allowed_for_category".to_owned(), b(request.purpose_allowed_for_category)),
            ("purpose_allows_transfer".to_owned(), b(request.purpose_allows_transfer)),
            ("purpose_role_ok".to_owned(), b(request.purpose_role_ok)),
            ("category_role_ok".to_owned(), b(request.category_role_ok)),
            ("has_justification".to_owned(), b(request.has_justification)),
            ("approved".to_owned(), b(request.approved)),
            ("subjects_touched".to_owned(), RestrictedExpression::new_long(request.subjects_touched)),
            ("bulk_threshold".to_owned(), RestrictedExpression::new_long(request.bulk_threshold)),
            ("destination_known".to_owned(), b(request.destination.is_some())),
            ("destination_region".to_owned(), s(&destination.region)),
            ("destination_legal_basis".to_owned(), s(&destination.legal_basis)),
            ("purpose_allowed_for_destination".to_owned(), b(destination.purpose_allowed)),
        ])
        .map_err(cedar_err)?;
        Ok(Prepared { principal, resource, entities, context })
    }

    /// Evaluates one Cedar action on a prepared request; returns whether it is allowed and the
    /// deciding policies.
    fn evaluate(&self, prepared: &Prepared, action: &str) -> Result<(bool, Vec<String>), String> {
        let Some(scoped) = self.by_action.get(action) else {
            return Err(format!("the schema has no action {action:?}"));
        };
        let cedar_request = Request::new(
            prepared.principal.clone(),
            scoped.uid.clone(),
            prepared.resource.clone(),
            prepared.context.clone(),
            None,
        )
        .map_err(cedar_err)?;
        let response = self.authorizer.is_authorized(&cedar_request, &scoped.policies, &prepared.entities);
        if let Some(error) = response.diagnostics().errors().next() {
            return Err(cedar_err(error));
        }
        let mut reasons: Vec<String> = response.diagnostics().reason().map(ToString::to_string).collect();
        reasons.sort();
        Ok((response.decision() == CedarDecision::Allow, reasons))
    }
}

/// A request's Cedar entities and context, built once.
struct Prepared {
    principal: EntityUid,
    resource: EntityUid,
    entities: Entities,
    context: Context,
}

/// The Cedar action of a Clover action (reads have two, see [`PolicyPack::decide`]).
fn cedar_action(action: Action) -> &'static str {
    match action {
        Action::Read => "read",
        Action::Write => "write",
        Action::Erase => "erase",
        Action::ListAccesses => "list_accesses",
        Action::Approve => "approve",
        Action::Administer => "administer",
        Action::Repatriate => "repatriate",
        Action::Export => "export",
        Action::ExportSubject => "export_subject",
        Action::CloseAccount => "close_account",
        Action::HandleRequests => "handle_requests",
        Action::RegisterGovernmentRequest => "register_government_request",
        Action::HandleGovernmentRequests => "handle_government_requests",
        Action::AnswerGovernmentRequest => "answer_government_request",
        Action::Disclose => "disclose",
    }
}

/// A request the pack could not evaluate is denied, and says why.
fn error_decision(error: String) -> Decision {
    Decision {
        outcome: Outcome::Deny,
        policies: vec!["evaluation-error".to_owned()],
        reason: format!("the request could not be evaluated: {error}"),
    }
}

/// See [`PolicyPack::digest`].
fn sources_digest(schema: &str, files: &[(String, String)]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut part = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    part(schema.as_bytes());
    for (name, text) in files {
        part(name.as_bytes());
        part(text.as_bytes());
    }
    hex::encode(ctx.finish().as_ref())
}
