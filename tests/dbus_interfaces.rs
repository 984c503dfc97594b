//! The members of systemd's D-Bus API that the typed proxies in `src/systemd/proxies.rs` use,
//! checked three ways: the proxies' own text (scanned, with the signatures their Rust types
//! give), the introspection data in `dbus/` (from systemd 252), and a live systemd manager in
//! a sandbox. A member added to a proxy without being declared in `dbus/`, or that the
//! installed systemd no longer offers with that signature, fails a test here.
//!
//! The XML is read by a small hand-written scan ([`parse_introspection`]) rather than an XML
//! crate: introspection data is flat and regular. Swapping in a real parser (zbus_xml or
//! quick-xml) means rewriting that one function; everything else works on [`Interfaces`].

mod support;

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;
use support::Sandbox;

const PROXIES_RS: &str = include_str!("../src/systemd/proxies.rs");

/// The introspection data the proxies follow, one file per interface.
const DBUS_XML: [(&str, &str); 4] = [
    (
        "dbus/org.freedesktop.systemd1.Manager.xml",
        include_str!("../dbus/org.freedesktop.systemd1.Manager.xml"),
    ),
    (
        "dbus/org.freedesktop.systemd1.Unit.xml",
        include_str!("../dbus/org.freedesktop.systemd1.Unit.xml"),
    ),
    (
        "dbus/org.freedesktop.systemd1.Service.xml",
        include_str!("../dbus/org.freedesktop.systemd1.Service.xml"),
    ),
    (
        "dbus/org.freedesktop.systemd1.Job.xml",
        include_str!("../dbus/org.freedesktop.systemd1.Job.xml"),
    ),
];

const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const SERVICE: &str = "org.freedesktop.systemd1.Service";
const JOB: &str = "org.freedesktop.systemd1.Job";

/// What the service needs from systemd, written out by hand: the scan of the proxies must
/// find at least these, with these signatures. A method's signature reads `IN -> OUT`.
const NEEDED: [(&str, Kind, &str, &str); 18] = [
    (MANAGER, Kind::Method, "Subscribe", " -> "),
    (MANAGER, Kind::Method, "RestartUnit", "ss -> o"),
    (MANAGER, Kind::Method, "LoadUnit", "s -> o"),
    (MANAGER, Kind::Signal, "JobRemoved", "uoss"),
    (MANAGER, Kind::Property, "Version", "s"),
    (UNIT, Kind::Property, "LoadState", "s"),
    (UNIT, Kind::Property, "ActiveState", "s"),
    (UNIT, Kind::Property, "SubState", "s"),
    (UNIT, Kind::Property, "StateChangeTimestamp", "t"),
    (UNIT, Kind::Property, "InvocationID", "ay"),
    (UNIT, Kind::Property, "Wants", "as"),
    (UNIT, Kind::Property, "Requires", "as"),
    (UNIT, Kind::Property, "ConsistsOf", "as"),
    (UNIT, Kind::Property, "Job", "(uo)"),
    (SERVICE, Kind::Property, "Result", "s"),
    (SERVICE, Kind::Property, "MainPID", "u"),
    (SERVICE, Kind::Property, "NRestarts", "u"),
    (JOB, Kind::Property, "State", "s"),
];

// --- the model -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Method,
    Signal,
    Property,
}

/// One member of an interface, as the proxies use it or as introspection declares it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Member {
    interface: String,
    kind: Kind,
    name: String,
    /// `IN -> OUT` for a method, the arguments for a signal, the type for a property.
    signature: String,
}

impl Member {
    fn new(interface: &str, kind: Kind, name: &str, signature: &str) -> Member {
        Member {
            interface: interface.to_owned(),
            kind,
            name: name.to_owned(),
            signature: signature.to_owned(),
        }
    }

    fn key(&self) -> (String, Kind, String) {
        (self.interface.clone(), self.kind, self.name.clone())
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {}.{} `{}`",
            self.kind, self.interface, self.name, self.signature
        )
    }
}

/// A member as introspection declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Declared {
    signature: String,
    /// `read`, `write` or `readwrite` for a property; none otherwise.
    access: Option<String>,
}

/// Every member of every interface a document declares, by (interface, kind, name).
type Interfaces = BTreeMap<(String, Kind, String), Declared>;

fn needed() -> Vec<Member> {
    NEEDED
        .iter()
        .map(|(interface, kind, name, signature)| Member::new(interface, *kind, name, signature))
        .collect()
}

/// What is wrong with `used` against `declared`: members missing, declared with another
/// signature, or properties the proxies read but systemd does not let them read.
fn problems(used: &[Member], declared: &Interfaces) -> Vec<String> {
    let mut problems = Vec::new();
    for member in used {
        match declared.get(&member.key()) {
            None => problems.push(format!("{member}: not declared")),
            Some(d) if d.signature != member.signature => {
                problems.push(format!("{member}: declared as `{}`", d.signature))
            }
            Some(d)
                if member.kind == Kind::Property
                    && !d.access.as_deref().is_some_and(|a| a.contains("read")) =>
            {
                problems.push(format!("{member}: not readable (access {:?})", d.access))
            }
            Some(_) => {}
        }
    }
    problems
}

// --- the introspection XML -----------------------------------------------------------------

/// One tag of an XML document.
#[derive(Debug, PartialEq, Eq)]
struct Tag {
    name: String,
    attrs: Vec<(String, String)>,
    /// `</name>`.
    closing: bool,
    /// `<name ... />`.
    empty: bool,
}

impl Tag {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The tags of an XML document in order, without text, comments, `<!DOCTYPE>` or `<?xml?>`.
/// Quoted attribute values may hold `>` and `/`.
fn tags(xml: &str) -> Vec<Tag> {
    let mut tags = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        rest = &rest[start..];
        if let Some(comment) = rest.strip_prefix("<!--") {
            let end = comment.find("-->").expect("an XML comment ends with -->");
            rest = &comment[end + 3..];
            continue;
        }
        let end = tag_end(rest).unwrap_or_else(|| panic!("unterminated tag: {rest:.60}"));
        let body = &rest[1..end];
        rest = &rest[end + 1..];
        if body.starts_with('!') || body.starts_with('?') {
            continue;
        }
        tags.push(parse_tag(body));
    }
    tags
}

/// Where the `>` closing the tag that `text` starts with is, outside quotes.
fn tag_end(text: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// Parses what stands between `<` and `>`.
fn parse_tag(body: &str) -> Tag {
    let body = body.trim();
    let (closing, body) = match body.strip_prefix('/') {
        Some(rest) => (true, rest),
        None => (false, body),
    };
    let (empty, body) = match body.strip_suffix('/') {
        Some(rest) => (true, rest),
        None => (false, body),
    };
    let name_end = body.find(|c: char| c.is_whitespace()).unwrap_or(body.len());
    let name = body[..name_end].to_owned();

    // name="value" or name='value', any number of blanks around the `=`.
    let mut attrs = Vec::new();
    let mut rest = body[name_end..].trim_start();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .unwrap_or_else(|| panic!("attribute without a value in <{body}>"));
        let key = rest[..eq].trim().to_owned();
        let value = rest[eq + 1..].trim_start();
        let quote = value
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
            .unwrap_or_else(|| panic!("unquoted attribute value in <{body}>"));
        let close = value[1..]
            .find(quote)
            .unwrap_or_else(|| panic!("unterminated attribute value in <{body}>"));
        attrs.push((key, unescape(&value[1..1 + close])));
        rest = value[close + 2..].trim_start();
    }
    Tag {
        name,
        attrs,
        closing,
        empty,
    }
}

fn unescape(value: &str) -> String {
    value
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The member being read, until its closing tag.
struct Open {
    kind: Kind,
    name: String,
    ins: String,
    outs: String,
    property: Option<Declared>,
}

/// Every method, signal and property of every interface in an introspection document. A
/// method's arguments are `in` unless they say otherwise, a signal's are all its own.
fn parse_introspection(xml: &str) -> Interfaces {
    let mut interfaces = Interfaces::new();
    let mut interface: Option<String> = None;
    let mut open: Option<Open> = None;

    for tag in tags(xml) {
        let kind = match tag.name.as_str() {
            "method" => Some(Kind::Method),
            "signal" => Some(Kind::Signal),
            "property" => Some(Kind::Property),
            _ => None,
        };
        match (tag.name.as_str(), kind) {
            ("interface", _) if tag.closing => interface = None,
            ("interface", _) => interface = tag.attr("name").map(str::to_owned),
            (_, Some(_)) if tag.closing => {}
            (_, Some(kind)) => {
                let name = tag.attr("name").expect("a member has a name").to_owned();
                let property = (kind == Kind::Property).then(|| Declared {
                    signature: tag.attr("type").expect("a property has a type").to_owned(),
                    access: tag.attr("access").map(str::to_owned),
                });
                open = Some(Open {
                    kind,
                    name,
                    ins: String::new(),
                    outs: String::new(),
                    property,
                });
            }
            ("arg", _) => {
                let member = open.as_mut().expect("an <arg> belongs to a member");
                let signature = tag.attr("type").expect("an <arg> has a type");
                let out = match member.kind {
                    Kind::Method => tag.attr("direction") == Some("out"),
                    _ => true,
                };
                if out {
                    member.outs.push_str(signature);
                } else {
                    member.ins.push_str(signature);
                }
            }
            _ => {}
        }

        // A member ends with its closing tag, or at once when its tag is empty.
        let ends_member = kind.is_some() && (tag.closing || tag.empty);
        if ends_member {
            let member = open.take().expect("a member closes after it opened");
            let interface = interface.clone().expect("a member belongs to an interface");
            let declared = match member.kind {
                Kind::Method => Declared {
                    signature: format!("{} -> {}", member.ins, member.outs),
                    access: None,
                },
                Kind::Signal => Declared {
                    signature: member.outs,
                    access: None,
                },
                Kind::Property => member.property.expect("a property has a type"),
            };
            interfaces.insert((interface, member.kind, member.name), declared);
        }
    }
    interfaces
}

/// All four files of `dbus/`, merged.
fn dbus_dir() -> Interfaces {
    let mut all = Interfaces::new();
    for (path, xml) in DBUS_XML {
        let interfaces = parse_introspection(xml);
        assert!(!interfaces.is_empty(), "{path} declares nothing");
        all.extend(interfaces);
    }
    all
}

// --- the proxies' source ---------------------------------------------------------------------

/// The source without comments (doc comments included); string literals are kept.
fn strip_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => out.extend(chars.next()),
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    out
}

/// The text between the bracket `text` starts with and its match, exclusive.
fn balanced(text: &str) -> &str {
    let open = text.chars().next().expect("balanced() needs a bracket");
    let close = match open {
        '(' => ')',
        '[' => ']',
        '{' => '}',
        '<' => '>',
        _ => panic!("{open} is no bracket"),
    };
    let mut depth = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => escaped = false,
            }
            continue;
        }
        if c == '"' {
            in_string = true;
        } else if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return &text[1..i];
            }
        }
    }
    panic!("no match for {open} in {text:.80}")
}

/// Splits at the commas that are not inside brackets.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' | '<' | '{' => depth += 1,
            // `->` is no bracket.
            '>' if i > 0 && bytes[i - 1] == b'-' => {}
            ')' | ']' | '>' | '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect()
}

/// The value of `key = "..."` in an attribute, if it has one.
fn string_setting<'a>(attribute: &'a str, key: &str) -> Option<&'a str> {
    split_top_level(attribute).into_iter().find_map(|setting| {
        let (name, value) = setting.split_once('=')?;
        (name.trim() == key).then(|| value.trim().trim_matches('"'))
    })
}

/// `job_removed` -> `JobRemoved`, as zbus names a member without a `name` override.
fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// The D-Bus signature of a Rust type as zbus marshals it. Panics on a type it does not
/// know, so that a new kind of type in the proxies is added here rather than skipped.
fn signature_of(ty: &str) -> String {
    let ty = ty.trim();
    if let Some(inner) = ty.strip_prefix('&') {
        // `&str`, `&'a str`, `&[u8]`.
        let inner = inner.trim_start();
        let inner = match inner.strip_prefix('\'') {
            Some(lifetime) => lifetime.split_once(' ').map_or("", |(_, t)| t),
            None => inner,
        };
        if let Some(element) = inner.strip_prefix('[') {
            return format!("a{}", signature_of(element.trim_end_matches(']')));
        }
        return signature_of(inner);
    }
    if ty.starts_with('(') {
        let elements: Vec<String> = split_top_level(balanced(ty))
            .into_iter()
            .map(signature_of)
            .collect();
        return if elements.is_empty() {
            String::new()
        } else {
            format!("({})", elements.concat())
        };
    }

    let (path, generics) = match ty.find('<') {
        Some(i) => (&ty[..i], split_top_level(balanced(&ty[i..]))),
        None => (ty, Vec::new()),
    };
    let name = path.rsplit("::").next().unwrap_or(path).trim();
    match (name, generics.as_slice()) {
        ("String" | "str" | "OwnedStr" | "Str", _) => "s".to_owned(),
        ("bool", []) => "b".to_owned(),
        ("u8", []) => "y".to_owned(),
        ("i16", []) => "n".to_owned(),
        ("u16", []) => "q".to_owned(),
        ("i32", []) => "i".to_owned(),
        ("u32", []) => "u".to_owned(),
        ("i64", []) => "x".to_owned(),
        ("u64", []) => "t".to_owned(),
        ("f64", []) => "d".to_owned(),
        ("OwnedObjectPath" | "ObjectPath", _) => "o".to_owned(),
        ("OwnedSignature" | "Signature", _) => "g".to_owned(),
        ("OwnedValue" | "Value", _) => "v".to_owned(),
        ("OwnedFd" | "Fd", _) => "h".to_owned(),
        ("Vec", [element]) => format!("a{}", signature_of(element)),
        ("HashMap" | "BTreeMap", [key, value]) => {
            format!("a{{{}{}}}", signature_of(key), signature_of(value))
        }
        _ => panic!("no D-Bus signature known for the Rust type `{ty}`; teach signature_of"),
    }
}

/// The `T` of `zbus::Result<T>` (or `Result<T, E>`).
fn result_value(ty: &str) -> &str {
    let ty = ty.trim();
    let i = ty
        .find('<')
        .unwrap_or_else(|| panic!("a proxy member returns a Result, not `{ty}`"));
    assert!(
        ty[..i].ends_with("Result"),
        "a proxy member returns a Result, not `{ty}`"
    );
    split_top_level(balanced(&ty[i..]))[0]
}

/// Every member declared in the `#[proxy(interface = ...)]` traits of `source`, named and
/// typed as zbus derives them: a `#[zbus(name = ...)]` overrides the PascalCase of the
/// function's name; `#[zbus(signal)]` and `#[zbus(property)]` mark signals and properties.
fn proxy_members(source: &str) -> Vec<Member> {
    let source = strip_comments(source);
    let mut members = Vec::new();
    let mut rest = source.as_str();
    while let Some(at) = rest.find("#[proxy(") {
        rest = &rest[at + "#[proxy".len()..];
        let settings = balanced(rest);
        let interface = string_setting(settings, "interface")
            .expect("a #[proxy] names its interface")
            .to_owned();
        let trait_at = rest.find("trait ").expect("a #[proxy] sits on a trait");
        rest = &rest[trait_at..];
        let body_at = rest.find('{').expect("a trait has a body");
        let body = balanced(&rest[body_at..]);
        for item in body.split(';') {
            if let Some(member) = proxy_member(&interface, item) {
                members.push(member);
            }
        }
        rest = &rest[body_at + body.len()..];
    }
    members
}

/// One `#[...] fn name(&self, ...) -> zbus::Result<T>` of a proxy trait.
fn proxy_member(interface: &str, item: &str) -> Option<Member> {
    let mut item = item.trim();
    if item.is_empty() {
        return None;
    }
    assert!(
        !item.contains('{'),
        "a proxy member with a body is not scanned: {item}"
    );

    let mut kind = Kind::Method;
    let mut name = None;
    while let Some(attribute) = item.strip_prefix('#') {
        let inner = balanced(attribute);
        item = attribute[inner.len() + 2..].trim_start();
        let Some(settings) = inner.trim().strip_prefix("zbus") else {
            continue;
        };
        let settings = balanced(settings.trim_start());
        for setting in split_top_level(settings) {
            let word = setting
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .next()
                .unwrap_or("");
            match word {
                "signal" => kind = Kind::Signal,
                "property" => kind = Kind::Property,
                _ => {}
            }
        }
        if let Some(n) = string_setting(settings, "name") {
            name = Some(n.to_owned());
        }
    }

    let item = item.strip_prefix("async ").unwrap_or(item).trim_start();
    let item = item
        .strip_prefix("fn ")
        .unwrap_or_else(|| panic!("a proxy trait holds only functions: {item}"));
    let paren = item.find('(').expect("a function has parameters");
    let fn_name = item[..paren].trim();
    let params = balanced(&item[paren..]);
    let after = &item[paren + params.len() + 2..];
    let returns = after
        .trim()
        .strip_prefix("->")
        .map(str::trim)
        .unwrap_or("()");

    let args: String = split_top_level(params)
        .into_iter()
        .filter(|param| !param.ends_with("self"))
        .map(|param| {
            let (_, ty) = param
                .split_once(':')
                .unwrap_or_else(|| panic!("parameter without a type: {param}"));
            signature_of(ty)
        })
        .collect();
    let value = result_value(returns);
    let signature = match kind {
        Kind::Method => {
            // zbus sends a returned tuple as several out arguments.
            let outs = if value.starts_with('(') {
                split_top_level(balanced(value))
                    .into_iter()
                    .map(signature_of)
                    .collect()
            } else {
                signature_of(value)
            };
            format!("{args} -> {outs}")
        }
        Kind::Signal => args,
        Kind::Property => {
            assert!(
                args.is_empty(),
                "property setters are not scanned: {fn_name}"
            );
            signature_of(value)
        }
    };
    let name = name.unwrap_or_else(|| pascal_case(fn_name));
    Some(Member::new(interface, kind, &name, &signature))
}

fn scanned() -> Vec<Member> {
    let members = proxy_members(PROXIES_RS);
    let mut keys: Vec<_> = members.iter().map(Member::key).collect();
    keys.sort();
    let before = keys.len();
    keys.dedup();
    assert_eq!(
        before,
        keys.len(),
        "a member is declared twice: {members:#?}"
    );
    members
}

// --- the live manager ------------------------------------------------------------------------

/// `busctl --user ARGS` in the sandbox; panics unless it succeeds.
fn busctl(sandbox: &Sandbox, args: &[&str]) -> String {
    let output = sandbox
        .command("busctl")
        .arg("--user")
        .args(args)
        .output()
        .expect("cannot run busctl");
    assert!(
        output.status.success(),
        "busctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `busctl --json=short ARGS`, the `data` of its answer.
fn busctl_data(sandbox: &Sandbox, args: &[&str]) -> Value {
    let mut all = vec!["--json=short"];
    all.extend_from_slice(args);
    let text = busctl(sandbox, &all);
    let answer: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("busctl {args:?} did not answer JSON ({e}): {text}"));
    answer["data"].clone()
}

fn introspect(sandbox: &Sandbox, path: &str) -> Interfaces {
    let xml = busctl(
        sandbox,
        &[
            "introspect",
            "--xml-interface",
            "org.freedesktop.systemd1",
            path,
        ],
    );
    parse_introspection(&xml)
}

/// The object path of a loaded unit.
fn unit_path(sandbox: &Sandbox, unit: &str) -> String {
    let data = busctl_data(
        sandbox,
        &[
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            MANAGER,
            "GetUnit",
            "s",
            unit,
        ],
    );
    data[0]
        .as_str()
        .unwrap_or_else(|| panic!("GetUnit answered {data}"))
        .to_owned()
}

/// Starts a unit whose start job lasts a minute, and returns that job's path.
fn slow_start_job(sandbox: &Sandbox) -> String {
    let unit = "dbus-interfaces-slow-start.service";
    // A oneshot service's start job lasts until its ExecStart= ends.
    let output = sandbox
        .command("systemd-run")
        .args(["--user", "--no-block", "--quiet", "--collect"])
        .arg(format!("--unit={unit}"))
        .args(["--property=Type=oneshot", "/bin/sleep", "60"])
        .output()
        .expect("cannot run systemd-run");
    assert!(
        output.status.success(),
        "systemd-run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let path = unit_path(sandbox, unit);
    let job = busctl_data(
        sandbox,
        &[
            "get-property",
            "org.freedesktop.systemd1",
            &path,
            UNIT,
            "Job",
        ],
    );
    assert_ne!(job[0], 0, "{unit} has no start job: {job}");
    job[1]
        .as_str()
        .unwrap_or_else(|| panic!("the Job property is {job}"))
        .to_owned()
}

// --- the tests -------------------------------------------------------------------------------

#[test]
fn scan_of_the_proxies_finds_every_member_the_service_needs() {
    let scanned = scanned();
    let by_key: BTreeMap<_, _> = scanned.iter().map(|m| (m.key(), m)).collect();
    for member in needed() {
        match by_key.get(&member.key()) {
            Some(found) => assert_eq!(
                found.signature, member.signature,
                "{member}: the proxy's Rust types give `{}`",
                found.signature
            ),
            None => panic!("{member}: not found by the scan of proxies.rs; found {scanned:#?}"),
        }
    }
}

#[test]
fn dbus_dir_declares_every_member_the_proxies_use() {
    let declared = dbus_dir();
    let mut used = scanned();
    used.extend(needed());
    let found = problems(&used, &declared);
    assert!(
        found.is_empty(),
        "dbus/ does not match the proxies:\n{}",
        found.join("\n")
    );
}

#[test]
fn live_manager_offers_every_member_the_proxies_use() {
    let sandbox = Sandbox::builder().api(false).start();

    // The manager, a service unit, and a job that lasts long enough to be looked at.
    let job = slow_start_job(&sandbox);
    let paths = [
        "/org/freedesktop/systemd1".to_owned(),
        "/org/freedesktop/systemd1/unit/galaxy_2eservice".to_owned(),
        job,
    ];
    let mut live = Interfaces::new();
    for path in &paths {
        let interfaces = introspect(&sandbox, path);
        for (key, declared) in interfaces {
            if let Some(other) = live.get(&key) {
                assert_eq!(other, &declared, "{key:?} differs between objects");
            }
            live.insert(key, declared);
        }
    }
    for interface in [MANAGER, UNIT, SERVICE, JOB] {
        assert!(
            live.keys().any(|(i, _, _)| i == interface),
            "no object of {paths:?} offers {interface}"
        );
    }

    let mut used = scanned();
    used.extend(needed());
    let found = problems(&used, &live);
    let version = busctl(
        &sandbox,
        &[
            "get-property",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            MANAGER,
            "Version",
        ],
    );
    assert!(
        found.is_empty(),
        "the live manager (Version {}) does not offer what the proxies use:\n{}",
        version.trim(),
        found.join("\n")
    );
}

/// The guard works: a proxy member that `dbus/` does not declare is reported.
#[test]
fn a_new_proxy_member_without_xml_is_reported() {
    let anchor = "pub trait Unit {";
    assert!(PROXIES_RS.contains(anchor), "proxies.rs has no `{anchor}`");
    let extended = PROXIES_RS.replacen(
        anchor,
        &format!(
            "{anchor}\n    #[zbus(property, name = \"NotInSystemd\")]\n    \
             fn not_in_systemd(&self) -> zbus::Result<u64>;\n    \
             fn frobnicate_unit(&self, name: &str, flags: u32) -> zbus::Result<()>;\n"
        ),
        1,
    );
    let found = problems(&proxy_members(&extended), &dbus_dir());
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].contains("Unit.NotInSystemd `t`: not declared"));
    assert!(found[1].contains("Unit.FrobnicateUnit `su -> `: not declared"));

    // And a member declared with another signature than the proxy's.
    let retyped = PROXIES_RS.replacen(
        "fn main_pid(&self) -> zbus::Result<u32>;",
        "fn main_pid(&self) -> zbus::Result<u64>;",
        1,
    );
    assert_ne!(retyped, PROXIES_RS, "proxies.rs has no main_pid() -> u32");
    let found = problems(&proxy_members(&retyped), &dbus_dir());
    assert_eq!(
        found,
        ["Property org.freedesktop.systemd1.Service.MainPID `t`: declared as `u`"]
    );
}

#[test]
fn xml_scan_reads_members_however_written() {
    let xml = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<!-- a comment with <method name="Fake"/> inside -->
<node>
 <interface name="a.b.C">
  <method name="Empty"/>
  <method name="Spread">
  </method>
  <method name="Call">
   <arg direction="in" name="x" type="s"/>
   <arg type='u' name='y'/>
   <arg name="z" type="a{sv}" direction="out"/>
   <annotation name="org.freedesktop.DBus.Deprecated" value="a > b"/>
  </method>
  <signal name="Happened">
   <arg type="u" name="id"/>
   <arg type="o" name="path"/>
  </signal>
  <property name="P" type="(uo)" access="read">
   <annotation name="org.freedesktop.DBus.Property.EmitsChangedSignal" value="false"/>
  </property>
  <property type="ay" name="Q" access="readwrite"/>
 </interface>
 <node name="child"/>
</node>"#;
    let got = parse_introspection(xml);
    let expect = |kind, name: &str, signature: &str, access: Option<&str>| {
        let key = ("a.b.C".to_owned(), kind, name.to_owned());
        let declared = Declared {
            signature: signature.to_owned(),
            access: access.map(str::to_owned),
        };
        assert_eq!(got.get(&key), Some(&declared), "{name} in {got:#?}");
    };
    expect(Kind::Method, "Empty", " -> ", None);
    expect(Kind::Method, "Spread", " -> ", None);
    expect(Kind::Method, "Call", "su -> a{sv}", None);
    expect(Kind::Signal, "Happened", "uo", None);
    expect(Kind::Property, "P", "(uo)", Some("read"));
    expect(Kind::Property, "Q", "ay", Some("readwrite"));
    assert_eq!(got.len(), 6, "{got:#?}");
}

#[test]
fn rust_types_map_to_dbus_signatures() {
    for (ty, signature) in [
        ("&str", "s"),
        ("&'a str", "s"),
        ("String", "s"),
        ("u32", "u"),
        ("u64", "t"),
        ("bool", "b"),
        ("Vec<u8>", "ay"),
        ("&[u8]", "ay"),
        ("Vec<String>", "as"),
        ("OwnedObjectPath", "o"),
        ("zbus::zvariant::OwnedObjectPath", "o"),
        ("ObjectPath<'_>", "o"),
        ("(u32, OwnedObjectPath)", "(uo)"),
        ("Vec<(String, u32)>", "a(su)"),
        ("HashMap<String, OwnedValue>", "a{sv}"),
        ("()", ""),
    ] {
        assert_eq!(signature_of(ty), signature, "{ty}");
    }
    assert_eq!(
        result_value("zbus::Result<(u32, OwnedObjectPath)>"),
        "(u32, OwnedObjectPath)"
    );
    assert_eq!(
        pascal_case("state_change_timestamp"),
        "StateChangeTimestamp"
    );
}
