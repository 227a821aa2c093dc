//! Per-target template variables: the names a target carries (`rackcast
//! target vars`), their bounds, and the one-pass `{name}` substitution that
//! fills a job's cloud-init templates with them.

use std::collections::BTreeMap;

/// Names every target has, filled by rackcast; a target's own variables
/// may not take them.
pub const BUILTIN: [&str; 4] = ["hostname", "mac", "ip", "job"];
/// Most variables one target carries.
pub const MAX_VARS: usize = 64;
/// Longest variable name, in bytes.
pub const MAX_NAME: usize = 64;
/// Longest variable value, in bytes.
pub const MAX_VALUE: usize = 4096;

/// Whether `name` may name a target variable: 1 to [`MAX_NAME`] ASCII
/// letters, digits, `_` or `-`, starting with a letter, and not built in.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(format!(
            "variable name {name:?}: use 1 to {MAX_NAME} letters, digits, '_' or '-', starting with a letter"
        ));
    }
    if BUILTIN.contains(&name) {
        return Err(format!(
            "variable name {name:?} is built in ({}): rackcast fills it",
            BUILTIN.join(", ")
        ));
    }
    Ok(())
}

/// Applies `set` then `unset` to `vars`, checking names, values and the
/// count; on an error `vars` is unchanged.
pub fn update(
    vars: &mut BTreeMap<String, String>,
    set: &BTreeMap<String, String>,
    unset: &[String],
) -> Result<(), String> {
    let mut next = vars.clone();
    for (k, v) in set {
        check_name(k)?;
        if v.len() > MAX_VALUE || v.contains('\0') {
            return Err(format!(
                "variable {k}: values are at most {MAX_VALUE} bytes, without NUL"
            ));
        }
        next.insert(k.clone(), v.clone());
    }
    for k in unset {
        next.remove(k);
    }
    if next.len() > MAX_VARS {
        return Err(format!(
            "a target carries at most {MAX_VARS} variables ({} asked)",
            next.len()
        ));
    }
    *vars = next;
    Ok(())
}

/// `template` with every `{name}` that `value` knows replaced, in one pass:
/// a value is never scanned again, so a value holding `{ip}` stays as it
/// is. Unknown names and other braces (YAML flow maps, Jinja `{{ }}`) are
/// left alone.
pub fn fill<'a>(template: &str, value: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let known = after
            .find('}')
            .map(|close| (close, &after[..close]))
            .filter(|(_, name)| name.len() <= MAX_NAME)
            .and_then(|(close, name)| value(name).map(|v| (close, v)));
        match known {
            Some((close, v)) => {
                out.push_str(v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fills_known_names_once_and_leaves_the_rest() {
        let v = vars(&[("rack", "r12"), ("trap", "{rack}")]);
        let get = |n: &str| v.get(n).map(String::as_str);
        assert_eq!(fill("{rack}-{trap}", get), "r12-{rack}");
        assert_eq!(
            fill("a: {b: 1} {{ v1.x }} {unknown} {rack", get),
            "a: {b: 1} {{ v1.x }} {unknown} {rack"
        );
        assert_eq!(fill("{}{rack}{", get), "{}r12{");
        assert_eq!(fill("", get), "");
    }

    #[test]
    fn names_values_and_count_are_bounded_and_a_refusal_changes_nothing() {
        let mut t = vars(&[("rack", "r1")]);
        for bad in ["", "9a", "a b", "ip", "hostname", &"x".repeat(65)] {
            let e = update(&mut t, &vars(&[(bad, "v")]), &[]).unwrap_err();
            assert!(e.contains("variable name"), "{bad:?}: {e}");
        }
        assert!(update(&mut t, &vars(&[("big", &"v".repeat(4097))]), &[]).is_err());
        let many: BTreeMap<String, String> =
            (0..64).map(|i| (format!("v{i}"), String::new())).collect();
        assert!(update(&mut t, &many, &[])
            .unwrap_err()
            .contains("at most 64"));
        assert_eq!(t, vars(&[("rack", "r1")]));
        update(&mut t, &vars(&[("role", "db")]), &["rack".into()]).unwrap();
        assert_eq!(t, vars(&[("role", "db")]));
    }
}
