//! `${VAR}` and `${VAR:-default}` interpolation of the raw config text, before YAML parsing.
//!
//! Done on the text (like docker-compose) so that secrets and addresses can come from the
//! environment anywhere a scalar is written, and so that line numbers stay those of the file.
//! `$$` writes a literal `$`. Comments are left alone, so a commented-out `${UNSET}` is no error.

use super::error::ConfigError;

pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> (String, Vec<ConfigError>, Vec<(usize, String)>) {
    let mut from_env = Vec::new();
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let line_no = idx + 1;
        let (code, comment) = split_comment(line);
        let mut rest = code;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
            } else if let Some(body) = after.strip_prefix('{') {
                let Some(end) = body.find('}') else {
                    errors.push(ConfigError::at_line(
                        line_no,
                        "unterminated `${` in variable reference (write `$$` for a literal `$`)",
                    ));
                    out.push('$');
                    rest = after;
                    break;
                };
                let expr = &body[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (expr, None),
                };
                if !is_var_name(name) {
                    out.push_str(&rest[pos..pos + end + 3]);
                    errors.push(ConfigError::at_line(
                        line_no,
                        format!("invalid variable reference `${{{expr}}}`: names are letters, digits and `_`"),
                    ));
                } else {
                    match (
                        lookup(name).filter(|v| !v.is_empty() || default.is_none()),
                        default,
                    ) {
                        (Some(v), _) => {
                            out.push_str(&v);
                            from_env.push((line_no, v));
                        }
                        (None, Some(d)) => out.push_str(d),
                        (None, None) => {
                            out.push_str(&rest[pos..pos + end + 3]);
                            errors.push(ConfigError::at_line(
                                line_no,
                                format!(
                                    "environment variable `{name}` is not set and has no default \
                                     (set it, or write `${{{name}:-value}}`)"
                                ),
                            ))
                        }
                    }
                }
                rest = &body[end + 1..];
            } else {
                // A lone `$` (e.g. in a regex or price) is kept as written.
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    (out, errors, from_env)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Split a line into its code and its YAML comment (a `#` at the start or after whitespace,
/// outside quotes).
fn split_comment(line: &str) -> (&str, &str) {
    let bytes = line.as_bytes();
    let (mut single, mut double) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => {
                return (&line[..i], &line[i..]);
            }
            _ => {}
        }
    }
    (line, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interpolate(
        text: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<String, Vec<ConfigError>> {
        match super::interpolate(text, lookup) {
            (out, e, _) if e.is_empty() => Ok(out),
            (_, e, _) => Err(e),
        }
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("10.0.0.1:80".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_values_and_defaults() {
        let out = interpolate("a: ${HOST}\nb: ${NOPE:-x:1}\nc: ${EMPTY:-d}\n", env).unwrap();
        assert_eq!(out, "a: 10.0.0.1:80\nb: x:1\nc: d\n");
    }

    #[test]
    fn dollar_escapes_and_lone_dollars_are_kept() {
        assert_eq!(
            interpolate("a: $${HOST} $5\n", env).unwrap(),
            "a: ${HOST} $5\n"
        );
    }

    #[test]
    fn comments_are_not_interpolated() {
        assert_eq!(
            interpolate("a: 1 # ${NOPE}\n# ${NOPE}\n", env).unwrap(),
            "a: 1 # ${NOPE}\n# ${NOPE}\n"
        );
    }

    #[test]
    fn unset_variable_is_an_error_with_its_line() {
        let errs = interpolate("a: 1\nb: ${MISSING}\nc: ${ALSO}\n", env).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].line, Some(2));
        assert!(
            errs[0].message.contains("`MISSING` is not set"),
            "{}",
            errs[0].message
        );
        assert_eq!(errs[1].line, Some(3));
    }

    #[test]
    fn unresolved_references_stay_as_written_so_parsing_goes_on() {
        let (out, errs, _) = super::interpolate("a: ${MISSING}\nb: ${HOST}\n", env);
        assert_eq!(out, "a: ${MISSING}\nb: 10.0.0.1:80\n");
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(interpolate("a: ${1X}\n", env).unwrap_err()[0]
            .message
            .contains("invalid variable"));
        assert!(interpolate("a: ${OPEN\n", env).unwrap_err()[0]
            .message
            .contains("unterminated"));
    }
}
