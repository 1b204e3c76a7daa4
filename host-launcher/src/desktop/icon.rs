//! VM-coloured icons: find an entry's original icon in its package and frame it in the VM colour.
//!
//! Lookup (the package's own files only; the host theme is not searched because the composed
//! icon must show the guest's picture):
//! 1. `Icon` is an absolute path: that file; if it doesn't exist on the build host, the same path
//!    with its `/usr/` or `/run/current-system/sw/` prefix re-rooted at the package;
//! 2. otherwise by name in the package's `share/icons/hicolor` tree (any size or context, never
//!    `symbolic`), preferring SVG (scalable), then the PNG with the largest width;
//! 3. then `share/pixmaps/<name>.svg|.png`;
//! 4. then the same in each extra icon directory given with `--icon-dir`.
//!
//! XPM is not supported (no SVG renderer embeds it). When nothing is found the icon is a letter
//! badge (the entry name's first character) in the frame, so the VM colour is always visible.
//!
//! The original is never pasted into our document as markup. PNGs and SVGs alike become an
//! `<image>` whose `href` is a base64 `data:` URI, clipped to the inner box, and the VM frame is
//! drawn *after* it, on top. Renderers treat an SVG referenced from `<image>` as a separate,
//! static picture (no scripts, no events, no access to our document's ids or styles), so a guest
//! icon can't paint over the frame, close our elements, or run anything, and malformed guest
//! markup only makes its own picture fail to render. Before encoding, an SVG is also refused
//! (letter badge instead) if it holds active content or references outside itself: `<script>`,
//! `<foreignObject>`, `on…=` event attributes, `javascript:`, CSS `@import`, external entities,
//! `href`s and `url()`s that aren't same-document `#…` or `data:image/png|jpeg` URIs, or any of
//! those hidden behind character references. Its root gets an explicit `viewBox` and a 256-unit
//! `width`/`height` so rasterising renderers draw it sharp.
//!
//! Display on the host: librsvg (`rsvg-convert`, GTK, and what our tests check) renders the
//! nested SVG as vectors. KDE draws icons with QtSvg, which decodes `<image>` data URIs with
//! `QImage::fromData`; SVG data is decoded there by the `qsvg` image-format plugin shipped with
//! QtSvg (so it renders whenever KDE can show SVG icons at all), rasterised at the root's
//! 256-unit size and scaled into the box. This path is by reading QtSvg's sources, not tested
//! here (no Qt on the test machine); if a Qt build lacked the plugin, the picture would be
//! blank but the VM frame would still show.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use palette::{Darken, IntoColor, Lighten, Okhsl, Srgb};

/// Icons bigger than this are ignored (hostile or broken packages must not blow up the output).
pub const MAX_ICON_BYTES: u64 = 4 * 1024 * 1024;
/// How deep the icon tree walk goes (hicolor is `<size>/<context>/<file>`).
const MAX_WALK_DEPTH: usize = 4;
/// Side of the composed icon canvas.
const CANVAS: f64 = 128.0;
/// Where the original sits inside the frame.
const INNER_OFFSET: f64 = 18.0;
const INNER_SIZE: f64 = 92.0;

/// An original icon found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IconSource {
    /// Its path.
    pub path: PathBuf,
    /// Its format.
    pub kind: IconKind,
}

/// Formats we can embed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IconKind {
    /// Scalable vector graphics, embedded as a data URI.
    Svg,
    /// PNG, embedded as a data URI.
    Png,
}

impl IconKind {
    fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "svg" => Some(Self::Svg),
            "png" => Some(Self::Png),
            _ => None,
        }
    }
}

/// Find the original icon for `icon` (an `Icon` value) among `packages` and `extra_dirs`.
pub fn find_icon(icon: &str, packages: &[PathBuf], extra_dirs: &[PathBuf]) -> Option<IconSource> {
    if icon.is_empty() {
        return None;
    }
    let as_path = Path::new(icon);
    if as_path.is_absolute() {
        let kind = IconKind::from_path(as_path)?;
        let mut candidates = vec![as_path.to_path_buf()];
        for prefix in ["/usr/", "/run/current-system/sw/"] {
            if let Some(rest) = icon.strip_prefix(prefix) {
                candidates.extend(packages.iter().map(|p| p.join(rest)));
            }
        }
        return candidates
            .into_iter()
            .find(|p| usable_file(p))
            .map(|path| IconSource { path, kind });
    }
    // A name; some entries wrongly carry an extension.
    let name = icon
        .strip_suffix(".png")
        .or_else(|| icon.strip_suffix(".svg"))
        .or_else(|| icon.strip_suffix(".xpm"))
        .unwrap_or(icon);
    if name.contains('/') {
        return None;
    }
    let mut roots = Vec::new();
    for pkg in packages {
        roots.push((pkg.join("share/icons/hicolor"), true));
        roots.push((pkg.join("share/pixmaps"), false));
    }
    for dir in extra_dirs {
        roots.push((dir.clone(), true));
    }
    roots
        .iter()
        .find_map(|(root, recursive)| best_in(root, name, *recursive))
}

fn usable_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() <= MAX_ICON_BYTES)
}

/// The best icon called `name` under `root`: SVG first, then the widest PNG; ties by path.
fn best_in(root: &Path, name: &str, recursive: bool) -> Option<IconSource> {
    let mut found = Vec::new();
    collect(
        root,
        name,
        if recursive { MAX_WALK_DEPTH } else { 0 },
        &mut found,
    );
    found.sort();
    let svg = found
        .iter()
        .find(|p| IconKind::from_path(p) == Some(IconKind::Svg))
        .cloned();
    if let Some(path) = svg {
        return Some(IconSource {
            path,
            kind: IconKind::Svg,
        });
    }
    found
        .into_iter()
        .filter(|p| IconKind::from_path(p) == Some(IconKind::Png))
        .filter_map(|p| {
            let width = crate::files::read_regular(&p, MAX_ICON_BYTES)
                .ok()
                .and_then(|b| png_size(&b))
                .map(|(w, _)| w)?;
            Some((width, p))
        })
        // max_by_key keeps the last maximum; iterate in reverse so the first path wins ties.
        .rev()
        .max_by_key(|(w, _)| *w)
        .map(|(_, path)| IconSource {
            path,
            kind: IconKind::Png,
        })
}

fn collect(dir: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for ent in rd.flatten() {
        let path = ent.path();
        // Follow symlinks: Nix packages are often trees of links into other store paths.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let fname = ent.file_name();
        let fname = fname.to_string_lossy();
        if meta.is_dir() {
            if depth > 0 && !fname.contains("symbolic") {
                collect(&path, name, depth - 1, out);
            }
        } else if (fname == format!("{name}.svg") || fname == format!("{name}.png"))
            && usable_file(&path)
        {
            out.push(path);
        }
    }
}

/// Width and height of a PNG from its IHDR chunk, or None if it isn't a PNG.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 24 || !bytes.starts_with(SIG) || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    (w > 0 && h > 0).then_some((w, h))
}

/// Standard base64 (RFC 4648) with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Escape text for XML content and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// Shades derived from the VM colour for the frame.
#[derive(Debug, Clone)]
struct Shades {
    base: String,
    dark: String,
    tint: String,
}

fn shades(color: &str) -> Shades {
    let parsed: Option<Srgb<u8>> = color.parse().ok();
    let Some(rgb) = parsed else {
        return Shades {
            base: color.to_owned(),
            dark: color.to_owned(),
            tint: color.to_owned(),
        };
    };
    let ok: Okhsl = rgb.into_format::<f32>().into_color();
    let hex = |c: Okhsl| {
        let s: Srgb = c.into_color();
        let s: Srgb<u8> = s.into_format();
        format!("#{:02x}{:02x}{:02x}", s.red, s.green, s.blue)
    };
    Shades {
        base: color.to_owned(),
        dark: hex(ok.darken(0.35)),
        tint: hex(ok.lighten(0.8)),
    }
}

/// Compose the host icon: the original (or a letter badge) with a rounded frame in `color` drawn
/// on top of it. Also returns why `source` could not be embedded, when a letter badge stands in
/// for it, for the caller to report.
pub fn compose_app_icon(
    source: Option<&IconSource>,
    color: &str,
    title: &str,
) -> (String, Option<String>) {
    let sh = shades(color);
    let (inner, problem) = match source.map(embed) {
        Some(Ok(inner)) => (Some(inner), None),
        Some(Err(why)) => (None, Some(why)),
        None => (None, None),
    };
    let body = inner.unwrap_or_else(|| letter_badge(title, &sh));
    let mut svg = String::new();
    svg.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" xmlns:xlink=\"http://www.w3.org/1999/xlink\" \
         version=\"1.1\" width=\"{CANVAS}\" height=\"{CANVAS}\" viewBox=\"0 0 {CANVAS} {CANVAS}\">"
    );
    let _ = writeln!(svg, "<title>{}</title>", xml_escape(title));
    let _ = writeln!(
        svg,
        "<defs><clipPath id=\"vmsilo-inner\"><rect x=\"{INNER_OFFSET}\" y=\"{INNER_OFFSET}\" \
         width=\"{INNER_SIZE}\" height=\"{INNER_SIZE}\"/></clipPath></defs>"
    );
    let _ = writeln!(
        svg,
        "<rect x=\"5\" y=\"5\" width=\"118\" height=\"118\" rx=\"22\" ry=\"22\" fill=\"{}\" \
         fill-opacity=\"0.35\"/>",
        sh.tint
    );
    svg.push_str(&body);
    // The frame comes last so nothing of the original can cover it.
    let _ = writeln!(
        svg,
        "<rect x=\"5\" y=\"5\" width=\"118\" height=\"118\" rx=\"22\" ry=\"22\" fill=\"none\" \
         stroke=\"{}\" stroke-width=\"10\"/>",
        sh.base
    );
    let _ = writeln!(
        svg,
        "<rect x=\"10\" y=\"10\" width=\"108\" height=\"108\" rx=\"17\" ry=\"17\" fill=\"none\" \
         stroke=\"{}\" stroke-width=\"1.5\" stroke-opacity=\"0.6\"/>",
        sh.dark
    );
    svg.push_str("</svg>\n");
    (svg, problem)
}

/// The per-VM menu folder icon: a folder in the VM colour.
pub fn compose_folder_icon(color: &str, title: &str) -> String {
    let sh = shades(color);
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{CANVAS}\" height=\"{CANVAS}\" \
         viewBox=\"0 0 {CANVAS} {CANVAS}\">\n\
         <title>{title}</title>\n\
         <path d=\"M10 26 Q10 18 18 18 L50 18 L60 30 L110 30 Q118 30 118 38 L118 44 L10 44 Z\" \
         fill=\"{dark}\"/>\n\
         <path d=\"M10 40 Q10 36 14 36 L114 36 Q118 36 118 40 L118 102 Q118 110 110 110 L18 110 \
         Q10 110 10 102 Z\" fill=\"{base}\" stroke=\"{dark}\" stroke-width=\"3\"/>\n\
         <rect x=\"22\" y=\"52\" width=\"84\" height=\"8\" rx=\"4\" fill=\"{tint}\" fill-opacity=\"0.7\"/>\n\
         </svg>\n",
        title = xml_escape(title),
        dark = sh.dark,
        base = sh.base,
        tint = sh.tint,
    )
}

fn letter_badge(title: &str, sh: &Shades) -> String {
    let letter: String = title
        .chars()
        .find(|c| c.is_alphanumeric())
        .map(|c| c.to_uppercase().collect())
        .unwrap_or_else(|| "?".to_owned());
    format!(
        "<circle cx=\"64\" cy=\"64\" r=\"40\" fill=\"{}\"/>\n\
         <text x=\"64\" y=\"82\" font-family=\"sans-serif\" font-size=\"52\" font-weight=\"bold\" \
         text-anchor=\"middle\" fill=\"{}\">{}</text>\n",
        sh.dark,
        sh.tint,
        xml_escape(&letter)
    )
}

/// The original as an `<image>` element clipped to the inner box.
fn embed(source: &IconSource) -> Result<String, String> {
    let bytes =
        crate::files::read_regular(&source.path, MAX_ICON_BYTES).map_err(|e| e.to_string())?;
    let uri = match source.kind {
        IconKind::Png => {
            png_size(&bytes).ok_or("not a PNG file")?;
            format!("data:image/png;base64,{}", base64(&bytes))
        }
        IconKind::Svg => {
            let text = String::from_utf8(bytes).map_err(|_| "SVG is not UTF-8")?;
            let doc = standalone_svg(&text)?;
            format!("data:image/svg+xml;base64,{}", base64(doc.as_bytes()))
        }
    };
    Ok(format!(
        "<image x=\"{INNER_OFFSET}\" y=\"{INNER_OFFSET}\" width=\"{INNER_SIZE}\" \
         height=\"{INNER_SIZE}\" preserveAspectRatio=\"xMidYMid meet\" \
         clip-path=\"url(#vmsilo-inner)\" xlink:href=\"{uri}\"/>\n"
    ))
}

/// Side, in user units, given to an embedded SVG's root so rasterising renderers draw it sharp.
const EMBED_SIZE: f64 = 256.0;

/// The guest SVG as a document of its own for a data URI: refused if it holds active content or
/// outside references ([`active_content`]); its root start tag rebuilt with an explicit
/// `viewBox` and [`EMBED_SIZE`] width/height, everything else kept as it was.
fn standalone_svg(text: &str) -> Result<String, String> {
    if let Some(what) = active_content(text) {
        return Err(format!("SVG holds {what}"));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (prolog_end, _) = skip_prolog(text)?;
    let rest = &text[prolog_end..];
    let tag_body = rest
        .strip_prefix("<svg")
        .ok_or("root element is not <svg>")?;
    let (attrs, consumed, self_closing) = parse_attrs(tag_body)?;
    let start_of_content = prolog_end + 4 + consumed;
    let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let (minx, miny, vw, vh) = if let Some(vb) = get("viewBox") {
        let nums: Vec<f64> = vb
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("bad viewBox {vb:?}"))?;
        match nums.as_slice() {
            [a, b, c, d] => (*a, *b, *c, *d),
            _ => return Err(format!("bad viewBox {vb:?}")),
        }
    } else {
        let w = get("width").and_then(leading_number).unwrap_or(CANVAS);
        let h = get("height").and_then(leading_number).unwrap_or(CANVAS);
        (0.0, 0.0, w, h)
    };
    let finite = [minx, miny, vw, vh].iter().all(|v| v.is_finite());
    if !(finite && vw > 0.0 && vh > 0.0) {
        return Err("icon has an empty canvas".into());
    }
    if !self_closing && !text[start_of_content..].contains("</svg") {
        return Err("no closing </svg>".into());
    }
    let scale = EMBED_SIZE / vw.max(vh);
    let mut out = String::with_capacity(text.len() + 128);
    let prolog = &text[..prolog_end];
    if !prolog.trim_start().starts_with("<?xml") {
        // QImage picks the SVG decoder by sniffing the first bytes for `<?xml` or `<svg`.
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    }
    out.push_str(prolog);
    let _ = write!(
        out,
        "<svg viewBox=\"{} {} {} {}\" width=\"{}\" height=\"{}\"",
        fmt_num(minx),
        fmt_num(miny),
        fmt_num(vw),
        fmt_num(vh),
        fmt_num(vw * scale),
        fmt_num(vh * scale)
    );
    for (name, value) in &attrs {
        if !matches!(name.as_str(), "viewBox" | "width" | "height") {
            let _ = write!(out, " {name}=\"{}\"", xml_escape(value));
        }
    }
    if !attrs.iter().any(|(n, _)| n == "xmlns") {
        out.push_str(" xmlns=\"http://www.w3.org/2000/svg\"");
    }
    out.push_str(if self_closing { "/>" } else { ">" });
    out.push_str(&text[start_of_content..]);
    Ok(out)
}

/// What in an SVG could run code or reach outside the file, if anything (see the module docs).
/// Deliberately coarse: an icon that trips it only loses its picture to a letter badge.
fn active_content(text: &str) -> Option<&'static str> {
    let lower = text.to_ascii_lowercase();
    if lower.contains("&#") {
        // Character references can spell out any of the below; icons have no need for them.
        return Some("character references");
    }
    for (needle, what) in [
        ("<script", "a <script>"),
        ("foreignobject", "a <foreignObject>"),
        ("javascript:", "a javascript: URI"),
        ("@import", "a CSS @import"),
        ("<!entity", "an entity declaration"),
        ("xi:include", "an XInclude"),
        ("<iframe", "an <iframe>"),
        ("<embed", "an <embed>"),
        ("<object", "an <object>"),
        ("<handler", "a <handler>"),
        ("<listener", "a <listener>"),
    ] {
        if needle == "<!entity" && lower.contains(needle) {
            // Internal text entities (Illustrator's namespace shorthands) are harmless;
            // SYSTEM/PUBLIC ones load files, and markup in an entity smuggles elements.
            let decls = lower.split("<!entity").skip(1);
            for d in decls {
                let d = d.split('>').next().unwrap_or("");
                if d.contains("system") || d.contains("public") || d.contains('<') {
                    return Some("an external or markup entity");
                }
            }
            continue;
        }
        if lower.contains(needle) {
            return Some(what);
        }
    }
    let b = lower.as_bytes();
    // Event attributes: whitespace, `on` + letters, optional whitespace, `=`.
    for (i, _) in lower.match_indices("on") {
        if i == 0 || !b[i - 1].is_ascii_whitespace() {
            continue;
        }
        let mut j = i + 2;
        let letters = j;
        while j < b.len() && b[j].is_ascii_alphabetic() {
            j += 1;
        }
        if j == letters {
            continue;
        }
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if b.get(j) == Some(&b'=') {
            return Some("an event attribute");
        }
    }
    let local_ref = |v: &str| {
        let v = v.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '"' || c == '\'');
        v.starts_with('#')
            || v.starts_with("data:image/png;")
            || v.starts_with("data:image/jpeg;")
            || v.starts_with("data:image/jpg;")
    };
    // href / xlink:href attribute values.
    for (i, _) in lower.match_indices("href") {
        let mut j = i + 4;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if b.get(j) != Some(&b'=') {
            continue;
        }
        if !local_ref(&lower[j + 1..]) {
            return Some("an external href");
        }
    }
    for (i, _) in lower.match_indices("url(") {
        if !local_ref(&lower[i + 4..]) {
            return Some("an external url()");
        }
    }
    None
}

fn fmt_num(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

fn leading_number(s: &str) -> Option<f64> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e'))
        .unwrap_or(s.len());
    s[..end].parse().ok()
}

/// Skip the XML declaration, comments, processing instructions, whitespace and a DOCTYPE.
/// Returns where the root element starts and the DOCTYPE if it declares entities.
fn skip_prolog(text: &str) -> Result<(usize, String), String> {
    let mut i = 0;
    let mut doctype = String::new();
    let b = text.as_bytes();
    // Byte order mark.
    if text.starts_with('\u{feff}') {
        i += 3;
    }
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let rest = &text[i..];
        if rest.starts_with("<?") {
            i += rest
                .find("?>")
                .ok_or("unterminated processing instruction")?
                + 2;
        } else if rest.starts_with("<!--") {
            i += rest.find("-->").ok_or("unterminated comment")? + 3;
        } else if rest.starts_with("<!DOCTYPE") {
            // An internal subset in [...] may contain '>'.
            let end = match (rest.find('['), rest.find('>')) {
                (Some(open), Some(gt)) if open < gt => {
                    let close = rest[open..].find("]").ok_or("unterminated DOCTYPE")? + open;
                    rest[close..].find('>').ok_or("unterminated DOCTYPE")? + close + 1
                }
                (_, Some(gt)) => gt + 1,
                _ => return Err("unterminated DOCTYPE".into()),
            };
            if rest[..end].contains("<!ENTITY") {
                doctype = format!("{}\n", &rest[..end]);
            }
            i += end;
        } else if rest.starts_with('<') {
            return Ok((i, doctype));
        } else {
            return Err("no root element".into());
        }
    }
}

type Attrs = Vec<(String, String)>;

/// Parse attributes after `<svg` up to and including `>` or `/>`.
/// Returns them, the bytes consumed and whether the tag closed itself.
fn parse_attrs(s: &str) -> Result<(Attrs, usize, bool), String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut attrs = Vec::new();
    if !b
        .first()
        .is_some_and(|c| c.is_ascii_whitespace() || *c == b'>' || *c == b'/')
    {
        return Err("root element is not <svg>".into());
    }
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        match b.get(i) {
            None => return Err("unterminated <svg> tag".into()),
            Some(b'>') => return Ok((attrs, i + 1, false)),
            Some(b'/') if b.get(i + 1) == Some(&b'>') => return Ok((attrs, i + 2, true)),
            _ => {}
        }
        let name_start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'>' {
            i += 1;
        }
        let name = &s[name_start..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err(format!("attribute {name:?} has no value"));
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let quote = *b.get(i).ok_or("unterminated <svg> tag")?;
        if quote != b'"' && quote != b'\'' {
            return Err(format!("attribute {name:?} is not quoted"));
        }
        let vstart = i + 1;
        let vend = s[vstart..]
            .find(char::from(quote))
            .ok_or("unterminated attribute value")?
            + vstart;
        attrs.push((name.to_owned(), xml_unescape(&s[vstart..vend])));
        i = vend + 1;
    }
}

fn xml_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (i, o) in cases {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn standalone_svg_gets_a_sized_root_and_keeps_the_rest() {
        let svg = r#"<?xml version="1.0"?>
<!-- c -->
<svg xmlns="http://www.w3.org/2000/svg" xmlns:foo="urn:foo" viewBox="0 0 10 20" fill="none" foo:bar="1" width="10mm">
<path d="M0 0"/></svg>"#;
        let doc = standalone_svg(svg).unwrap();
        assert!(doc.starts_with("<?xml version=\"1.0\"?>\n<!-- c -->\n<svg viewBox=\"0 0 10 20\" width=\"128\" height=\"256\" xmlns=\"http://www.w3.org/2000/svg\" xmlns:foo=\"urn:foo\" fill=\"none\" foo:bar=\"1\">"), "{doc}");
        assert!(doc.ends_with("<path d=\"M0 0\"/></svg>"));
        let bare = standalone_svg("<svg width=\"16\" height=\"16\"/>").unwrap();
        assert!(bare.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg viewBox=\"0 0 16 16\" width=\"256\" height=\"256\" xmlns=\"http://www.w3.org/2000/svg\"/>"), "{bare}");
        let ent = "<!DOCTYPE svg [<!ENTITY ns \"x\">]><svg width=\"4\" height=\"4\"><g/></svg>";
        assert!(standalone_svg(ent).unwrap().contains("<!ENTITY ns"));
    }

    #[test]
    fn refuses_non_svg() {
        assert!(standalone_svg("<html></html>").is_err());
        assert!(standalone_svg("<svg viewBox=\"0 0 0 0\"></svg>").is_err());
        assert!(standalone_svg("<svg width=\"3\" ").is_err());
        assert!(standalone_svg("<svg width=\"3\"><g>").is_err());
    }

    #[test]
    fn refuses_active_content_and_outside_references() {
        let ok = [
            "<svg><use xlink:href=\"#a\"/><rect fill=\"url(#g)\"/></svg>",
            "<svg><image href=\"data:image/png;base64,AAAA\"/><text>one = two</text></svg>",
            "<!DOCTYPE svg [<!ENTITY ns_svg \"http://www.w3.org/2000/svg\">]><svg xmlns=\"&ns_svg;\"/>",
        ];
        for svg in ok {
            assert_eq!(active_content(svg), None, "{svg}");
        }
        let bad = [
            "<svg><script>alert(1)</script></svg>",
            "<svg><SCRIPT/></svg>",
            "<svg onload=\"alert(1)\"/>",
            "<svg><rect\nonclick = \"x\"/></svg>",
            "<svg><foreignObject><div/></foreignObject></svg>",
            "<svg><image href=\"https://evil.example/x.png\"/></svg>",
            "<svg><image xlink:href = '/etc/passwd'/></svg>",
            "<svg><image href=\"data:image/svg+xml;base64,AAAA\"/></svg>",
            "<svg><a href=\"javascript:alert(1)\"/></svg>",
            "<svg><rect fill=\"url(https://evil.example/p)\"/></svg>",
            "<svg><style>@import 'x.css';</style></svg>",
            "<svg><image href=\"&#104;ttps://x\"/></svg>",
            "<!DOCTYPE svg [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><svg>&x;</svg>",
            "<!DOCTYPE svg [<!ENTITY x \"<script>1</script>\">]><svg>&x;</svg>",
        ];
        for svg in bad {
            assert!(active_content(svg).is_some(), "{svg}");
        }
    }

    #[test]
    fn lookup_follows_symlinks_and_prefers_svg_then_widest_png() {
        let pkg = tempfile::tempdir().unwrap();
        let real = tempfile::tempdir().unwrap();
        let png = |w: u32| {
            let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
            b.extend_from_slice(&w.to_be_bytes());
            b.extend_from_slice(&w.to_be_bytes());
            b
        };
        std::fs::create_dir_all(real.path().join("apps")).unwrap();
        std::fs::write(real.path().join("apps/app.png"), png(256)).unwrap();
        let hicolor = pkg.path().join("share/icons/hicolor");
        std::fs::create_dir_all(hicolor.join("32x32/apps")).unwrap();
        std::fs::write(hicolor.join("32x32/apps/app.png"), png(32)).unwrap();
        std::os::unix::fs::symlink(real.path(), hicolor.join("256x256")).unwrap();
        let pkgs = [pkg.path().to_path_buf()];
        let found = find_icon("app", &pkgs, &[]).unwrap();
        assert_eq!(found.path, hicolor.join("256x256/apps/app.png"));
        std::fs::create_dir_all(hicolor.join("symbolic/apps")).unwrap();
        std::fs::write(hicolor.join("symbolic/apps/app.svg"), "<svg/>").unwrap();
        assert_eq!(
            find_icon("app", &pkgs, &[]).unwrap().kind,
            IconKind::Png,
            "symbolic ignored"
        );
        std::fs::create_dir_all(hicolor.join("scalable/apps")).unwrap();
        std::fs::write(hicolor.join("scalable/apps/app.svg"), "<svg/>").unwrap();
        assert_eq!(find_icon("app", &pkgs, &[]).unwrap().kind, IconKind::Svg);
        assert!(find_icon("missing", &pkgs, &[]).is_none());
        assert!(find_icon("../../etc/passwd", &pkgs, &[]).is_none());
    }

    #[test]
    fn shades_come_from_the_colour() {
        let s = shades("#2ecc71");
        assert_eq!(s.base, "#2ecc71");
        assert_ne!(s.dark, s.base);
        assert_ne!(s.tint, s.base);
    }
}
