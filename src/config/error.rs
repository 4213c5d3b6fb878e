//! Config problems: each names where it is (YAML path, line when known) and what is wrong.

use std::fmt;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// YAML path of the offending value, like `routes[2].upstream`. Empty for file-level problems.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// 1-based column, when known (syntax errors).
    pub column: Option<usize>,
    /// What is wrong, and where possible how to fix it.
    pub message: String,
}

impl ConfigError {
    /// A problem at a YAML path; its line is filled in later from the location index.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    /// A problem on a line, with no YAML path (interpolation, syntax).
    pub fn at_line(line: usize, message: impl Into<String>) -> Self {
        ConfigError {
            path: String::new(),
            line: Some(line),
            column: None,
            message: message.into(),
        }
    }

    /// A problem with the file as a whole (missing, unreadable).
    pub fn file(message: impl Into<String>) -> Self {
        ConfigError::at("", message)
    }
}

impl fmt::Display for ConfigError {
    /// `LINE:COL: PATH: message`, each part only when known.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}:{c}: ")?,
            (Some(l), None) => write!(f, "line {l}: ")?,
            _ => {}
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// All problems of one config file, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The file they were found in (or `<inline>`).
    pub origin: String,
    /// The problems; never empty.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    /// One line per problem, `nginx -t` style: `FILE:LINE: PATH: message`, then a count.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for e in &self.errors {
            match (e.line, e.column) {
                (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: ", self.origin)?,
                (Some(l), None) => write!(f, "{}:{l}: ", self.origin)?,
                _ => write!(f, "{}: ", self.origin)?,
            }
            if !e.path.is_empty() {
                write!(f, "{}: ", e.path)?;
            }
            writeln!(f, "{}", e.message)?;
        }
        let n = self.errors.len();
        write!(
            f,
            "{}: {n} problem{} found, configuration rejected",
            self.origin,
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for ConfigErrors {}
