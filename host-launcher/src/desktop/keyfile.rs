//! Writing desktop-entry style key files (`.desktop`, `.directory`) with the spec's escaping.

/// An ordered key file: groups of `key=value` lines, written in insertion order so output is
/// stable and reviewable.
#[derive(Debug, Default, Clone)]
pub struct KeyFile {
    groups: Vec<(String, Vec<(String, String)>)>,
}

impl KeyFile {
    /// Start a new group; later `set*` calls add to it.
    pub fn group(&mut self, name: &str) -> &mut Self {
        self.groups.push((name.to_owned(), Vec::new()));
        self
    }

    /// Add a raw, already escaped value to the current group.
    fn push(&mut self, key: String, value: String) {
        if self.groups.is_empty() {
            self.groups.push(("Desktop Entry".to_owned(), Vec::new()));
        }
        if let Some((_, lines)) = self.groups.last_mut() {
            lines.push((key, value));
        }
    }

    /// Add a string value (escaped per the spec).
    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.push(key.to_owned(), escape_string(value));
        self
    }

    /// Add a localized string value `key[locale]=value`.
    pub fn set_localized(&mut self, key: &str, locale: &str, value: &str) -> &mut Self {
        self.push(format!("{key}[{locale}]"), escape_string(value));
        self
    }

    /// Add a list value (`;`-separated, each item escaped, trailing `;`).
    pub fn set_list<S: AsRef<str>>(&mut self, key: &str, items: &[S]) -> &mut Self {
        self.push(key.to_owned(), escape_list(items));
        self
    }

    /// Add a localized list value.
    pub fn set_list_localized<S: AsRef<str>>(
        &mut self,
        key: &str,
        locale: &str,
        items: &[S],
    ) -> &mut Self {
        self.push(format!("{key}[{locale}]"), escape_list(items));
        self
    }

    /// Render the file.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (i, (name, lines)) in self.groups.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push('[');
            out.push_str(name);
            out.push_str("]\n");
            for (k, v) in lines {
                out.push_str(k);
                out.push('=');
                out.push_str(v);
                out.push('\n');
            }
        }
        out
    }
}

/// Escape a `string`/`localestring` value: backslash, newline, tab, carriage return; a leading
/// space becomes `\s`; other control characters are dropped (they are invalid in key files).
pub fn escape_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' ' if i == 0 => out.push_str("\\s"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Escape a list value: each item string-escaped with `;` as `\;`, each followed by `;`.
pub fn escape_list<S: AsRef<str>>(items: &[S]) -> String {
    let mut out = String::new();
    for item in items {
        out.push_str(&escape_string(item.as_ref()).replace(';', "\\;"));
        out.push(';');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_values() {
        assert_eq!(escape_string(" a\\b\nc\td\u{7}"), "\\sa\\\\b\\nc\\td");
        assert_eq!(escape_list(&["a;b", "c"]), "a\\;b;c;");
    }

    #[test]
    fn renders_groups_in_order() {
        let mut kf = KeyFile::default();
        kf.group("Desktop Entry")
            .set("Name", "X")
            .set_localized("Name", "de", "Y");
        kf.group("Desktop Action a").set_list("K", &["1", "2"]);
        assert_eq!(
            kf.render(),
            "[Desktop Entry]\nName=X\nName[de]=Y\n\n[Desktop Action a]\nK=1;2;\n"
        );
    }
}
