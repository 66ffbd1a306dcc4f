//! The mapping: how a source's rows become Clover records.
//!
//! A TOML file. `[[tables]]` describe a PostgreSQL source, one entry per table, read in the
//! order they are listed; `[file]` describes a JSON Lines or CSV file (the keys of each object,
//! or the header's columns). One mapping may hold both. Unknown keys are refused, so that a
//! misspelt key is an error rather than a column silently ignored.
//!
//! ```toml
//! max_record_bytes = 65536          # optional: larger records are unclassifiable
//!
//! [countries]                       # ISO 3166-1 alpha-2 code -> region
//! IE = "eu"
//! SG = "sg"
//!
//! [[tables]]
//! table = "people"                  # schema = "public" is optional
//! source_key = "id"                 # unique, stable; the read order
//! subject = "user_id"
//! country = "country"               # or: home_region = "region"
//! birth_date = "born"               # optional, YYYY-MM-DD
//! category = "profile"              # or: category_column = "kind"
//! fields = "data"                   # a JSON object column; or: field_columns = ["name", "email"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clover_model::{Category, Region};
use serde::Deserialize;

/// The default largest canonical record: 64 KiB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 * 1024;

/// Why a mapping cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The file could not be read.
    #[error("cannot read the mapping {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a mapping (TOML syntax, an unknown key, a wrong type).
    #[error("the mapping is not valid TOML of the expected shape")]
    Syntax(#[source] toml::de::Error),
    /// A part of the mapping breaks a rule.
    #[error("mapping {at}: {problem}")]
    Invalid {
        /// Where: `[[tables]] #2 ("people")`, `[file]`, `[countries]`.
        at: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The source needs a part the mapping lacks.
    #[error("the mapping has no {0} section for this source")]
    Missing(&'static str),
}

/// The mapping file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    #[serde(default)]
    max_record_bytes: Option<usize>,
    #[serde(default)]
    countries: BTreeMap<String, Region>,
    #[serde(default)]
    tables: Vec<ColumnsFile>,
    #[serde(default)]
    file: Option<ColumnsFile>,
}

/// One `[[tables]]` entry or the `[file]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnsFile {
    table: Option<String>,
    schema: Option<String>,
    source_key: String,
    subject: String,
    home_region: Option<String>,
    country: Option<String>,
    birth_date: Option<String>,
    category: Option<Category>,
    category_column: Option<String>,
    fields: Option<String>,
    field_columns: Option<Vec<String>>,
}

/// A checked mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Records whose canonical encoding is larger are unclassifiable.
    pub max_record_bytes: usize,
    /// ISO 3166-1 alpha-2 country codes (upper case) and the region each belongs to.
    pub countries: BTreeMap<String, Region>,
    /// The PostgreSQL tables, in reading order.
    pub tables: Vec<Columns>,
    /// The columns of a JSON Lines or CSV file.
    pub file: Option<Columns>,
}

/// Where a row's home comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A column holding the region itself (`eu`).
    HomeRegion(String),
    /// A column holding an ISO country code, mapped through `[countries]`.
    Country(String),
}

/// Where a row's category comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CategorySource {
    /// The same category for every row.
    Fixed(Category),
    /// A column.
    Column(String),
}

/// Where a row's fields come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldsSource {
    /// One column holding a JSON object (text or jsonb).
    Json(String),
    /// Several columns, each a field named after its column.
    Columns(Vec<String>),
}

/// A PostgreSQL table: its schema (optional) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// The schema, when not the search path's.
    pub schema: Option<String>,
    /// The table.
    pub name: String,
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema:?}.{:?}", self.name),
            None => write!(f, "{:?}", self.name),
        }
    }
}

/// The columns of one table or file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// The table (PostgreSQL only).
    pub table: Option<TableName>,
    /// The column holding each row's stable, unique key.
    pub source_key: String,
    /// The column holding the subject id.
    pub subject: String,
    /// Where the home region comes from.
    pub place: Place,
    /// The column holding the birth date, if any.
    pub birth_date: Option<String>,
    /// Where the category comes from.
    pub category: CategorySource,
    /// Where the fields come from.
    pub fields: FieldsSource,
}

impl Mapping {
    /// Reads and checks a mapping file.
    pub fn load(path: &Path) -> Result<Self, MappingError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| MappingError::Read { path: path.to_owned(), source })?;
        Self::parse(&text)
    }

    /// Parses and checks a mapping.
    pub fn parse(text: &str) -> Result<Self, MappingError> {
        let file: MappingFile = toml::from_str(text).map_err(MappingError::Syntax)?;
        let max_record_bytes = file.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        if max_record_bytes == 0 {
            return Err(invalid("max_record_bytes", "must be at least 1"));
        }
        for code in file.countries.keys() {
            if code.len() != 2 || !code.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(invalid(
                    "[countries]",
                    format!("{code:?} is not an ISO 3166-1 alpha-2 code (two upper-case letters, such as \"IE\")"),
                ));
            }
        }
        let mut tables = Vec::with_capacity(file.tables.len());
        for (i, table) in file.tables.into_iter().enumerate() {
            let at = format!(
                "[[tables]] #{}{}",
                i + 1,
                table.table.as_deref().map(|t| format!(" ({t:?})")).unwrap_or_default()
            );
            let Some(name) = table.table.clone() else {
                return Err(invalid(at, "needs `table`, the table's name"));
            };
            let checked = check_columns(&at, table, !file.countries.is_empty())?;
            check_name(&at, "table", &name)?;
            tables.push(checked);
        }
        let file_columns = match file.file {
            Some(columns) => {
                if columns.table.is_some() || columns.schema.is_some() {
                    return Err(invalid("[file]", "`table` and `schema` are for [[tables]], not a file"));
                }
                Some(check_columns("[file]", columns, !file.countries.is_empty())?)
            }
            None => None,
        };
        Ok(Self { max_record_bytes, countries: file.countries, tables, file: file_columns })
    }

    /// The region of a country code (compared in upper case).
    pub fn region_of_country(&self, code: &str) -> Option<&Region> {
        self.countries.get(&code.trim().to_ascii_uppercase())
    }
}

fn invalid(at: impl Into<String>, problem: impl Into<String>) -> MappingError {
    MappingError::Invalid { at: at.into(), problem: problem.into() }
}

/// A column or table name: not empty, no NUL (which PostgreSQL cannot hold in a name).
fn check_name(at: &str, what: &str, name: &str) -> Result<(), MappingError> {
    if name.is_empty() || name.contains('\0') {
        return Err(invalid(at, format!("`{what}` must be a non-empty name without NUL characters")));
    }
    Ok(())
}

fn check_columns(at: &str, c: ColumnsFile, have_countries: bool) -> Result<Columns, MappingError> {
    let place = match (c.home_region, c.country) {
        (Some(column), None) => Place::HomeRegion(column),
        (None, Some(column)) => {
            if !have_countries {
                return Err(invalid(at, "`country` needs a [countries] table mapping country codes to regions"));
            }
            Place::Country(column)
        }
        _ => return Err(invalid(at, "give exactly one of `home_region` and `country`")),
    };
    let category = match (c.category, c.category_column) {
        (Some(fixed), None) => CategorySource::Fixed(fixed),
        (None, Some(column)) => CategorySource::Column(column),
        _ => return Err(invalid(at, "give exactly one of `category` (fixed) and `category_column`")),
    };
    let fields = match (c.fields, c.field_columns) {
        (Some(column), None) => FieldsSource::Json(column),
        (None, Some(columns)) => {
            if columns.is_empty() {
                return Err(invalid(at, "`field_columns` is empty"));
            }
            let mut seen = std::collections::BTreeSet::new();
            for column in &columns {
                if !seen.insert(column) {
                    return Err(invalid(at, format!("`field_columns` names {column:?} twice")));
                }
            }
            FieldsSource::Columns(columns)
        }
        _ => return Err(invalid(at, "give exactly one of `fields` (a JSON column) and `field_columns`")),
    };
    let columns = Columns {
        table: c.table.map(|name| TableName { schema: c.schema, name }),
        source_key: c.source_key,
        subject: c.subject,
        place,
        birth_date: c.birth_date,
        category,
        fields,
    };
    for (what, name) in columns.named() {
        check_name(at, what, name)?;
    }
    if let Some(TableName { schema: Some(schema), .. }) = &columns.table {
        check_name(at, "schema", schema)?;
    }
    Ok(columns)
}

impl Columns {
    /// Every column the mapping names, with the key that names it.
    pub fn named(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![("source_key", self.source_key.as_str()), ("subject", self.subject.as_str())];
        match &self.place {
            Place::HomeRegion(c) => out.push(("home_region", c)),
            Place::Country(c) => out.push(("country", c)),
        }
        if let Some(c) = &self.birth_date {
            out.push(("birth_date", c));
        }
        if let CategorySource::Column(c) = &self.category {
            out.push(("category_column", c));
        }
        match &self.fields {
            FieldsSource::Json(c) => out.push(("fields", c)),
            FieldsSource::Columns(cs) => out.extend(cs.iter().map(|c| ("field_columns", c.as_str()))),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [countries]
        IE = "eu"
        SG = "sg"

        [[tables]]
        table = "people"
        source_key = "id"
        subject = "user_id"
        country = "country"
        birth_date = "born"
        category = "profile"
        fields = "data"

        [file]
        source_key = "id"
        subject = "user_id"
        home_region = "region"
        category_column = "kind"
        field_columns = ["name", "email"]
    "#;

    #[test]
    fn a_good_mapping_is_read() {
        let m = Mapping::parse(GOOD).unwrap();
        assert_eq!(m.max_record_bytes, DEFAULT_MAX_RECORD_BYTES);
        assert_eq!(m.tables.len(), 1);
        assert_eq!(m.tables[0].place, Place::Country("country".into()));
        assert_eq!(m.region_of_country("ie").map(Region::as_str), Some("eu"));
        let file = m.file.unwrap();
        assert_eq!(file.fields, FieldsSource::Columns(vec!["name".into(), "email".into()]));
        assert_eq!(file.category, CategorySource::Column("kind".into()));
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (GOOD.replace("birth_date = \"born\"", "birthdate = \"born\""), "birthdate"),
            (
                GOOD.replace("country = \"country\"", "country = \"country\"\nhome_region = \"r\""),
                "exactly one of `home_region`",
            ),
            (GOOD.replace("category = \"profile\"", "category = \"Profile!\""), "category"),
            (GOOD.replace("fields = \"data\"", ""), "exactly one of `fields`"),
            (GOOD.replace("IE = \"eu\"", "Ireland = \"eu\""), "alpha-2"),
            (GOOD.replace("table = \"people\"", ""), "needs `table`"),
            (GOOD.replace("[\"name\", \"email\"]", "[\"name\", \"name\"]"), "twice"),
            (GOOD.replace("subject = \"user_id\"\n        country", "subject = \"\"\n        country"), "non-empty"),
            (format!("max_record_bytes = 0\n{GOOD}"), "at least 1"),
        ];
        for (text, needle) in cases {
            let error = Mapping::parse(&text).unwrap_err();
            let message = format!("{error} {:?}", std::error::Error::source(&error).map(ToString::to_string));
            assert!(message.contains(needle), "{needle}: {message}");
        }
        let no_countries = GOOD.replace("IE = \"eu\"\n        SG = \"sg\"", "");
        assert!(Mapping::parse(&no_countries).unwrap_err().to_string().contains("[countries]"));
    }
}
