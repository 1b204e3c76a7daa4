//! The `Exec` key: parsing per the Desktop Entry spec, rewriting field codes for a guest, and
//! quoting the host command line back.
//!
//! Field codes, and what a host entry does with each (the guest program runs in another file
//! system, so anything naming a host file is meaningless there):
//!
//! | code | host entry |
//! |---|---|
//! | `%u` `%U` | kept: the host launcher substitutes URLs, `vm-run` forwards them verbatim. Remote URLs work; a local file reaches the guest only if its path means the same there (the shared home). |
//! | `%f` `%F` | removed with the argument holding them: the launcher would pass host paths, which don't exist in the guest. The entry is then launched without files, and its file `MimeType`s are dropped so the host never offers it to open a file. |
//! | `%i` | replaced by `--icon <original Icon>`: the guest knows the original icon name, not our composed host icon. |
//! | `%c` | replaced by the original (untranslated) `Name`, which is what the guest program would have got. |
//! | `%k` | replaced by the guest path of the original desktop file (the package's store path is the same inside the guest). |
//! | `%d` `%D` `%n` `%N` `%v` `%m` | deprecated: dropped. |
//! | `%%` | a literal `%`. |

use thiserror::Error;

/// One piece of an `Exec` argument: literal text or a field code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text (quotes and escapes already undone).
    Lit(String),
    /// A field code letter, e.g. `'u'` for `%u`.
    Code(char),
}

/// One argument of an `Exec` command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Arg {
    /// The pieces, in order; adjacent literals are merged.
    pub pieces: Vec<Piece>,
}

impl Arg {
    /// An argument of plain text.
    pub fn lit(text: impl Into<String>) -> Self {
        Self {
            pieces: vec![Piece::Lit(text.into())],
        }
    }

    fn push_char(&mut self, c: char) {
        match self.pieces.last_mut() {
            Some(Piece::Lit(s)) => s.push(c),
            _ => self.pieces.push(Piece::Lit(c.to_string())),
        }
    }

    fn push_str(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        match self.pieces.last_mut() {
            Some(Piece::Lit(s)) => s.push_str(text),
            _ => self.pieces.push(Piece::Lit(text.to_owned())),
        }
    }

    fn has_code(&self, codes: &[char]) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Code(c) if codes.contains(c)))
    }

    /// The argument's text if it holds no field code.
    pub fn as_literal(&self) -> Option<String> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Code(_) => return None,
            }
        }
        Some(out)
    }
}

/// Why an `Exec` value cannot be used.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ExecError {
    /// A double quote was opened and never closed.
    #[error("unterminated double quote")]
    UnterminatedQuote,
    /// A `%` ended the value.
    #[error("a lone '%' ends the command line")]
    TrailingPercent,
    /// `%X` where X is not a field code of the spec.
    #[error("unknown field code '%{0}'")]
    UnknownFieldCode(char),
    /// The command line is empty (or only field codes).
    #[error("the command line names no program")]
    Empty,
    /// The program itself is a field code.
    #[error("the program position holds a field code")]
    ProgramIsFieldCode,
    /// A URL field code sits inside an argument whose text needs quoting, which the spec leaves
    /// undefined.
    #[error("field code '%{0}' inside an argument that needs quoting")]
    CodeInQuotedText(char),
    /// The guest command line can't fit one `vm-run` request (see [`check_limits`]).
    #[error("{0}")]
    TooBig(String),
}

/// Refuse a guest command line `vm-run` could never send: the command protocol carries at most
/// [`vmsilo_protocol::MAX_LIST_LEN`] argv entries in one frame of at most
/// [`vmsilo_protocol::MAX_FRAME_LEN`] bytes (each entry costs its length plus a 4-byte length
/// prefix). A `%u`/`%U` argument counts as one entry of its literal text; URLs the launcher
/// substitutes later are `vm-run`'s to check.
pub fn check_limits(args: &[Arg]) -> Result<(), ExecError> {
    use vmsilo_protocol::{MAX_FRAME_LEN, MAX_LIST_LEN};
    if args.len() > MAX_LIST_LEN {
        return Err(ExecError::TooBig(format!(
            "{} arguments, more than the {MAX_LIST_LEN} vm-run can send",
            args.len()
        )));
    }
    // Frame tag, argv count, then each entry's length prefix and bytes.
    let bytes: usize = 1
        + 4
        + args
            .iter()
            .map(|a| {
                4 + a
                    .pieces
                    .iter()
                    .map(|p| match p {
                        Piece::Lit(s) => s.len(),
                        Piece::Code(_) => 0,
                    })
                    .sum::<usize>()
            })
            .sum::<usize>();
    if bytes > MAX_FRAME_LEN {
        return Err(ExecError::TooBig(format!(
            "command line of {bytes} bytes, more than the {MAX_FRAME_LEN} a vm-run request holds"
        )));
    }
    Ok(())
}

const KNOWN_CODES: &[char] = &[
    'f', 'F', 'u', 'U', 'd', 'D', 'n', 'N', 'i', 'c', 'k', 'v', 'm',
];
const DEPRECATED_CODES: &[char] = &['d', 'D', 'n', 'N', 'v', 'm'];

/// Split an `Exec` value (general string escapes already undone) into arguments.
pub fn parse(exec: &str) -> Result<Vec<Arg>, ExecError> {
    let mut args = Vec::new();
    let mut cur: Option<Arg> = None;
    let mut chars = exec.chars().peekable();
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' => in_quotes = false,
                '\\' => match chars.peek() {
                    Some(&n @ ('"' | '`' | '$' | '\\')) => {
                        chars.next();
                        cur.get_or_insert_with(Arg::default).push_char(n);
                    }
                    // Not an escape the spec defines: keep the backslash, as launchers do.
                    _ => cur.get_or_insert_with(Arg::default).push_char('\\'),
                },
                '%' => push_percent(&mut chars, cur.get_or_insert_with(Arg::default))?,
                _ => cur.get_or_insert_with(Arg::default).push_char(c),
            }
            continue;
        }
        match c {
            ' ' | '\t' | '\n' => {
                if let Some(arg) = cur.take() {
                    args.push(arg);
                }
            }
            '"' => {
                in_quotes = true;
                cur.get_or_insert_with(Arg::default);
            }
            '%' => push_percent(&mut chars, cur.get_or_insert_with(Arg::default))?,
            _ => cur.get_or_insert_with(Arg::default).push_char(c),
        }
    }
    if in_quotes {
        return Err(ExecError::UnterminatedQuote);
    }
    if let Some(arg) = cur.take() {
        args.push(arg);
    }
    Ok(args)
}

fn push_percent(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    arg: &mut Arg,
) -> Result<(), ExecError> {
    match chars.next() {
        None => Err(ExecError::TrailingPercent),
        Some('%') => {
            arg.push_char('%');
            Ok(())
        }
        Some(code) if KNOWN_CODES.contains(&code) => {
            arg.pieces.push(Piece::Code(code));
            Ok(())
        }
        Some(other) => Err(ExecError::UnknownFieldCode(other)),
    }
}

/// What the rewrite substitutes for `%i`, `%c` and `%k`.
#[derive(Debug, Clone, Default)]
pub struct Substitutions {
    /// The original `Icon` value, if any.
    pub icon: Option<String>,
    /// The original untranslated `Name`.
    pub name: String,
    /// The original desktop file's path as the guest sees it.
    pub guest_entry_path: String,
}

/// The guest command line after rewriting, and which URL/file codes it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// Arguments for the guest; only `%u`/`%U` codes remain.
    pub args: Vec<Arg>,
    /// Whether `%u` or `%U` is present (the entry can take URLs).
    pub takes_urls: bool,
    /// Whether the original took files through `%f`/`%F` (now removed).
    pub dropped_files: bool,
}

/// Rewrite a parsed guest command line per the table in the module docs.
pub fn rewrite(args: &[Arg], subs: &Substitutions) -> Result<Rewritten, ExecError> {
    let mut out = Vec::new();
    let mut dropped_files = false;
    for arg in args {
        if arg.has_code(&['f', 'F']) {
            dropped_files = true;
            continue;
        }
        if arg.pieces == [Piece::Code('i')] {
            if let Some(icon) = subs.icon.as_deref().filter(|i| !i.is_empty()) {
                out.push(Arg::lit("--icon"));
                out.push(Arg::lit(icon));
            }
            continue;
        }
        let mut new = Arg::default();
        let mut only_codes = true;
        for piece in &arg.pieces {
            match piece {
                Piece::Lit(s) => {
                    only_codes = false;
                    new.push_str(s);
                }
                Piece::Code(c @ ('u' | 'U')) => new.pieces.push(Piece::Code(*c)),
                Piece::Code('i') => new.push_str(subs.icon.as_deref().unwrap_or("")),
                Piece::Code('c') => {
                    only_codes = false;
                    new.push_str(&subs.name);
                }
                Piece::Code('k') => {
                    only_codes = false;
                    new.push_str(&subs.guest_entry_path);
                }
                Piece::Code(c) if DEPRECATED_CODES.contains(c) => {}
                Piece::Code(c) => return Err(ExecError::UnknownFieldCode(*c)),
            }
        }
        if new.pieces.is_empty() && only_codes {
            // The argument was only deprecated codes (or an empty %i): it expands to nothing.
            continue;
        }
        out.push(new);
    }
    let first = out.first().ok_or(ExecError::Empty)?;
    if first.as_literal().is_none() {
        return Err(ExecError::ProgramIsFieldCode);
    }
    check_limits(&out)?;
    let takes_urls = out.iter().any(|a| a.has_code(&['u', 'U']));
    Ok(Rewritten {
        args: out,
        takes_urls,
        dropped_files,
    })
}

/// Characters that force an argument into double quotes (Desktop Entry spec, "reserved").
fn needs_quoting(s: &str) -> bool {
    s.is_empty()
        || s.chars().any(|c| {
            matches!(
                c,
                ' ' | '\t'
                    | '\n'
                    | '"'
                    | '\''
                    | '\\'
                    | '>'
                    | '<'
                    | '~'
                    | '|'
                    | '&'
                    | ';'
                    | '$'
                    | '*'
                    | '?'
                    | '#'
                    | '('
                    | ')'
                    | '`'
            )
        })
}

/// Quote one argument for an `Exec` value (before the general string escaping of the file).
pub fn quote_arg(arg: &Arg) -> Result<String, ExecError> {
    if let [Piece::Code(c)] = arg.pieces.as_slice() {
        return Ok(format!("%{c}"));
    }
    let literal: String = arg
        .pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Lit(s) => Some(s.as_str()),
            Piece::Code(_) => None,
        })
        .collect();
    let has_code = arg.pieces.iter().any(|p| matches!(p, Piece::Code(_)));
    if has_code {
        if needs_quoting(&literal) && !literal.is_empty() {
            let code = arg
                .pieces
                .iter()
                .find_map(|p| match p {
                    Piece::Code(c) => Some(*c),
                    Piece::Lit(_) => None,
                })
                .unwrap_or('?');
            return Err(ExecError::CodeInQuotedText(code));
        }
        let mut s = String::new();
        for p in &arg.pieces {
            match p {
                Piece::Lit(t) => s.push_str(&t.replace('%', "%%")),
                Piece::Code(c) => {
                    s.push('%');
                    s.push(*c);
                }
            }
        }
        return Ok(s);
    }
    let escaped_percent = literal.replace('%', "%%");
    if !needs_quoting(&literal) {
        return Ok(escaped_percent);
    }
    let mut s = String::with_capacity(escaped_percent.len() + 2);
    s.push('"');
    for c in escaped_percent.chars() {
        if matches!(c, '"' | '`' | '$' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    Ok(s)
}

/// Join arguments into an `Exec` value (before the general string escaping of the file).
pub fn join(args: &[Arg]) -> Result<String, ExecError> {
    let quoted = args.iter().map(quote_arg).collect::<Result<Vec<_>, _>>()?;
    Ok(quoted.join(" "))
}

/// Expand the command line with no URLs or files, for launching an entry directly (the tray).
pub fn expand_without_files(args: &[Arg]) -> Vec<String> {
    args.iter()
        .filter(|a| !a.has_code(&['u', 'U', 'f', 'F']) || a.as_literal().is_some())
        .filter_map(|a| a.as_literal())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn lits(args: &[Arg]) -> Vec<String> {
        args.iter()
            .map(|a| join(std::slice::from_ref(a)).unwrap())
            .collect()
    }

    fn subs() -> Substitutions {
        Substitutions {
            icon: Some("firefox-esr".into()),
            name: "Firefox ESR".into(),
            guest_entry_path: "/nix/store/x-firefox/share/applications/firefox.desktop".into(),
        }
    }

    #[test]
    fn parses_quotes_and_escapes() {
        let args = parse(r#"prog "a b" "q\"uote" "d\$x" "back\\slash" plain"#).unwrap();
        let texts: Vec<_> = args.iter().map(|a| a.as_literal().unwrap()).collect();
        assert_eq!(
            texts,
            ["prog", "a b", "q\"uote", "d$x", "back\\slash", "plain"]
        );
    }

    #[test]
    fn parses_field_codes_and_percent() {
        let args = parse("prog --x=100%% %U bluray://%f").unwrap();
        assert_eq!(args[1].as_literal().unwrap(), "--x=100%");
        assert_eq!(args[2].pieces, [Piece::Code('U')]);
        assert_eq!(
            args[3].pieces,
            [Piece::Lit("bluray://".into()), Piece::Code('f')]
        );
    }

    #[test]
    fn rejects_bad_lines() {
        assert_eq!(
            parse("prog \"open").unwrap_err(),
            ExecError::UnterminatedQuote
        );
        assert_eq!(parse("prog %").unwrap_err(), ExecError::TrailingPercent);
        assert_eq!(
            parse("prog %z").unwrap_err(),
            ExecError::UnknownFieldCode('z')
        );
        assert_eq!(
            rewrite(&parse("%F").unwrap(), &subs()).unwrap_err(),
            ExecError::Empty
        );
        assert_eq!(
            rewrite(&parse("%U x").unwrap(), &subs()).unwrap_err(),
            ExecError::ProgramIsFieldCode
        );
    }

    #[test]
    fn rewrites_codes() {
        let r = rewrite(&parse("prog %i %c %k %d %m --url=%u").unwrap(), &subs()).unwrap();
        assert_eq!(
            lits(&r.args),
            [
                "prog",
                "--icon",
                "firefox-esr",
                "\"Firefox ESR\"",
                "/nix/store/x-firefox/share/applications/firefox.desktop",
                "--url=%u"
            ]
        );
        assert!(r.takes_urls);
        assert!(!r.dropped_files);
    }

    #[test]
    fn drops_file_codes_with_their_argument() {
        let r = rewrite(
            &parse("vlc --started-from-file bluray://%f %F").unwrap(),
            &subs(),
        )
        .unwrap();
        assert_eq!(lits(&r.args), ["vlc", "--started-from-file"]);
        assert!(r.dropped_files);
        assert!(!r.takes_urls);
    }

    #[test]
    fn icon_code_without_icon_expands_to_nothing() {
        let mut s = subs();
        s.icon = None;
        let r = rewrite(&parse("prog %i x").unwrap(), &s).unwrap();
        assert_eq!(lits(&r.args), ["prog", "x"]);
    }

    #[test]
    fn quoting_round_trips() {
        let nasty = [
            "plain",
            "with space",
            "dq\"",
            "back\\slash",
            "$HOME",
            "`cmd`",
            "semi;colon",
            "100%",
            "",
            "tab\there",
            "'single'",
        ];
        let args: Vec<Arg> = nasty.iter().map(|s| Arg::lit(*s)).collect();
        let joined = join(&args).unwrap();
        let back = parse(&joined).unwrap();
        let texts: Vec<_> = back.iter().map(|a| a.as_literal().unwrap()).collect();
        assert_eq!(texts, nasty);
    }

    #[test]
    fn code_inside_text_needing_quotes_is_refused() {
        let arg = Arg {
            pieces: vec![Piece::Lit("a b=".into()), Piece::Code('u')],
        };
        assert_eq!(
            quote_arg(&arg).unwrap_err(),
            ExecError::CodeInQuotedText('u')
        );
    }

    #[test]
    fn refuses_command_lines_vm_run_cannot_send() {
        let many = format!("prog{}", " a".repeat(vmsilo_protocol::MAX_LIST_LEN));
        let err = rewrite(&parse(&many).unwrap(), &subs()).unwrap_err();
        assert!(
            matches!(err, ExecError::TooBig(ref m) if m.contains("4097 arguments")),
            "{err}"
        );
        let fits = format!("prog{}", " a".repeat(vmsilo_protocol::MAX_LIST_LEN - 1));
        assert_eq!(
            rewrite(&parse(&fits).unwrap(), &subs()).unwrap().args.len(),
            4096
        );
        let long = format!("prog {}", "x".repeat(vmsilo_protocol::MAX_FRAME_LEN));
        let err = rewrite(&parse(&long).unwrap(), &subs()).unwrap_err();
        assert!(
            matches!(err, ExecError::TooBig(ref m) if m.contains("bytes")),
            "{err}"
        );
        // %c expanding a long Name counts too.
        let mut s = subs();
        s.name = "n".repeat(vmsilo_protocol::MAX_FRAME_LEN);
        assert!(rewrite(&parse("prog %c").unwrap(), &s).is_err());
    }

    #[test]
    fn expands_without_files() {
        let args = parse("prog --new %U").unwrap();
        assert_eq!(expand_without_files(&args), ["prog", "--new"]);
    }
}
