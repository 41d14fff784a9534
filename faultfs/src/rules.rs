//! Fault rules: the operation names, the rule syntax of the control file, and matching.
//!
//! One rule per line: `OPS PATH_GLOB ACTION`, for example `write,fsync data/* errno=EIO`.
//! `#` starts a comment and blank lines are ignored. The first rule that matches a request
//! decides its fate.

use std::fmt;
use std::time::Duration;

use nix::errno::Errno;

/// A FUSE request type that rules can name and that faultfs counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Lookup,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Access,
    Create,
    Fallocate,
    Lseek,
}

impl Op {
    /// Every operation, in the order of the stats file.
    pub const ALL: [Op; 30] = [
        Op::Lookup,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Releasedir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Setxattr,
        Op::Getxattr,
        Op::Listxattr,
        Op::Removexattr,
        Op::Access,
        Op::Create,
        Op::Fallocate,
        Op::Lseek,
    ];

    /// Returns the lowercase name used in rules and in the stats file.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Releasedir => "releasedir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Setxattr => "setxattr",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Access => "access",
            Op::Create => "create",
            Op::Fallocate => "fallocate",
            Op::Lseek => "lseek",
        }
    }

    /// Parses an operation name as written in rules.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Position of the operation in [`Op::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Returns whether a full disk makes this operation fail with ENOSPC, which is the case
    /// for the operations that allocate blocks or inodes.
    pub fn needs_space(self) -> bool {
        matches!(
            self,
            Op::Write
                | Op::Create
                | Op::Mkdir
                | Op::Mknod
                | Op::Symlink
                | Op::Link
                | Op::Fallocate
                | Op::Setxattr
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of operations, one bit per [`Op`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpSet(u64);

impl OpSet {
    pub const ALL: OpSet = OpSet((1 << Op::ALL.len()) - 1);

    pub fn contains(self, op: Op) -> bool {
        self.0 & (1 << op.index()) != 0
    }

    fn insert(&mut self, op: Op) {
        self.0 |= 1 << op.index();
    }
}

impl fmt::Display for OpSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == OpSet::ALL {
            return f.write_str("*");
        }
        let names: Vec<&str> = Op::ALL
            .into_iter()
            .filter(|op| self.contains(*op))
            .map(Op::name)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// Effect of a rule on the requests it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Fail with this errno without touching the backing tree.
    Errno(Errno),
    /// Sleep this long, then pass the request through.
    Delay(Duration),
    /// Block until the rule is gone from the control file, then pass the request through.
    Hang,
    /// Fail operations that allocate space with ENOSPC; pass the others through.
    Full,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Errno(errno) => write!(f, "errno={errno:?}"),
            Action::Delay(delay) => write!(f, "delay={}", humantime::format_duration(*delay)),
            Action::Hang => f.write_str("hang"),
            Action::Full => f.write_str("full"),
        }
    }
}

/// One parsed line of the control file. Two rules are equal when their operations, glob and
/// action are equal, wherever they stand in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub ops: OpSet,
    pub glob: String,
    pub action: Action,
}

impl Rule {
    /// Returns whether the rule applies to `op` on any of `paths`, which are relative to the root of
    /// the mount ("" is the root itself). A request whose path is unknown passes an empty
    /// slice and matches only the glob `*`.
    pub fn matches(&self, op: Op, paths: &[&str]) -> bool {
        if !self.ops.contains(op) {
            return false;
        }
        if paths.is_empty() {
            return self.glob == "*";
        }
        paths.iter().any(|path| glob_matches(&self.glob, path))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.ops, self.glob, self.action)
    }
}

/// A line of the control file that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    /// Line number, starting at 1.
    pub line: usize,
    pub text: String,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} `{}`: {}", self.line, self.text, self.message)
    }
}

/// Parses the control file's text. Returns the valid rules in file order and one error per
/// malformed line. A malformed line is left out and does not affect the other lines.
pub fn parse_rules(text: &str) -> (Vec<Rule>, Vec<RuleError>) {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        match parse_rule(line) {
            Ok(rule) => rules.push(rule),
            Err(message) => errors.push(RuleError {
                line: index + 1,
                text: raw.trim().to_string(),
                message,
            }),
        }
    }
    (rules, errors)
}

/// Cuts a comment: `#` at the start of the line or after whitespace starts one, so a glob
/// such as `a#b` keeps its `#`.
fn strip_comment(line: &str) -> &str {
    let mut previous_is_space = true;
    for (position, c) in line.char_indices() {
        if c == '#' && previous_is_space {
            return &line[..position];
        }
        previous_is_space = c.is_whitespace();
    }
    line
}

/// Parses one rule line that has no comment.
pub fn parse_rule(line: &str) -> Result<Rule, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [ops, glob, action] = fields[..] else {
        return Err(format!(
            "expected 3 fields `OPS PATH_GLOB ACTION`, found {}",
            fields.len()
        ));
    };
    Ok(Rule {
        ops: parse_ops(ops)?,
        glob: glob.trim_start_matches('/').to_string(),
        action: parse_action(action)?,
    })
}

fn parse_ops(text: &str) -> Result<OpSet, String> {
    if text == "*" {
        return Ok(OpSet::ALL);
    }
    let mut ops = OpSet(0);
    for name in text.split(',') {
        if name == "*" {
            return Ok(OpSet::ALL);
        }
        let op = Op::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = Op::ALL.into_iter().map(Op::name).collect();
            format!(
                "unknown operation `{name}`; use `*` or one of {}",
                known.join(", ")
            )
        })?;
        ops.insert(op);
    }
    Ok(ops)
}

fn parse_action(text: &str) -> Result<Action, String> {
    if text == "hang" {
        return Ok(Action::Hang);
    }
    if text == "full" {
        return Ok(Action::Full);
    }
    if let Some(name) = text.strip_prefix("errno=") {
        return parse_errno(name).map(Action::Errno);
    }
    if let Some(value) = text.strip_prefix("delay=") {
        return parse_delay(value).map(Action::Delay);
    }
    Err(format!(
        "unknown action `{text}`; use errno=NAME, delay=DURATION, hang or full"
    ))
}

/// Parses an errno name such as `EIO` (any name that nix defines, plus the aliases
/// EWOULDBLOCK, EDEADLOCK and ENOTSUP) or a positive number.
pub fn parse_errno(name: &str) -> Result<Errno, String> {
    if let Ok(number) = name.parse::<i32>() {
        if number > 0 {
            return Ok(Errno::from_raw(number));
        }
        return Err(format!("errno `{name}` is not a positive number"));
    }
    let canonical = match name {
        "EWOULDBLOCK" => "EAGAIN",
        "EDEADLOCK" => "EDEADLK",
        "ENOTSUP" => "EOPNOTSUPP",
        other => other,
    };
    // nix's Debug output of an errno is its name, so every errno nix defines is accepted.
    (1..4096)
        .map(Errno::from_raw)
        .find(|errno| *errno != Errno::UnknownErrno && format!("{errno:?}") == canonical)
        .ok_or_else(|| format!("unknown errno `{name}`; use a name such as EIO or ENOSPC"))
}

/// Parses a delay: a plain number is milliseconds, anything else goes to humantime
/// (`5ms`, `1s`, `1m 30s`).
pub fn parse_delay(text: &str) -> Result<Duration, String> {
    if let Ok(millis) = text.parse::<u64>() {
        return Ok(Duration::from_millis(millis));
    }
    humantime::parse_duration(text)
        .map_err(|err| format!("invalid delay `{text}` ({err}); write e.g. 50ms or 2s"))
}

/// Matches `path` against `glob`, where `*` matches any run of characters including `/` and
/// `?` matches one character. Every other character matches itself.
pub fn glob_matches(glob: &str, path: &str) -> bool {
    let glob: Vec<char> = glob.chars().collect();
    let path: Vec<char> = path.chars().collect();
    let (mut g, mut p) = (0, 0);
    // Position of the last `*` in the glob and the path position it was tried at.
    let mut backtrack: Option<(usize, usize)> = None;
    while p < path.len() {
        if g < glob.len() && (glob[g] == '?' || (glob[g] != '*' && glob[g] == path[p])) {
            g += 1;
            p += 1;
        } else if g < glob.len() && glob[g] == '*' {
            backtrack = Some((g, p));
            g += 1;
        } else if let Some((star, tried)) = backtrack {
            // Let the last `*` swallow one more character and retry.
            g = star + 1;
            p = tried + 1;
            backtrack = Some((star, tried + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|c| *c == '*')
}

/// Returns the first rule that applies to `op` on `paths`.
pub fn first_match<'a>(rules: &'a [Rule], op: Op, paths: &[&str]) -> Option<&'a Rule> {
    rules.iter().find(|rule| rule.matches(op, paths))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_star_and_prefix() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*", "a/b/c"));
        assert!(glob_matches("dir*", "dir"));
        assert!(glob_matches("dir*", "dir/file"));
        assert!(glob_matches("dir*", "directory"));
        assert!(!glob_matches("dir*", "other/dir"));
        assert!(glob_matches("*.txt", "a/b.txt"));
        assert!(!glob_matches("*.txt", "a/b.txt.bak"));
        assert!(glob_matches("a/*/c", "a/b/c"));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "ac"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exact2"));
        assert!(glob_matches("*a*b", "xxaxxb"));
        assert!(!glob_matches("*a*b", "xxbxxa"));
    }

    #[test]
    fn parse_valid_rules() {
        let text = "\
# comment line

write * errno=EIO
read,write data/* delay=5ms   # trailing comment
* /logs* hang
create,mkdir tmp* full
getattr x delay=20
fsync * errno=ENOTSUP
";
        let (rules, errors) = parse_rules(text);
        assert!(errors.is_empty(), "unexpected errors: {errors:?}");
        assert_eq!(rules.len(), 6);
        assert_eq!(rules[0].action, Action::Errno(Errno::EIO));
        assert!(rules[0].ops.contains(Op::Write));
        assert!(!rules[0].ops.contains(Op::Read));
        assert_eq!(rules[1].glob, "data/*");
        assert_eq!(rules[1].action, Action::Delay(Duration::from_millis(5)));
        assert_eq!(rules[2].ops, OpSet::ALL);
        assert_eq!(rules[2].glob, "logs*");
        assert_eq!(rules[2].action, Action::Hang);
        assert_eq!(rules[3].action, Action::Full);
        assert_eq!(rules[4].action, Action::Delay(Duration::from_millis(20)));
        assert_eq!(rules[5].action, Action::Errno(Errno::EOPNOTSUPP));
    }

    #[test]
    fn parse_reports_malformed_lines() {
        let text = "write * errno=EIO\nwrite *\nfrobnicate * hang\nread * errno=ENOPE\nread * delay=soon\nread * explode\nread * hang\n";
        let (rules, errors) = parse_rules(text);
        assert_eq!(rules.len(), 2);
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6]);
        assert!(errors[1].message.contains("frobnicate"));
        assert!(errors[2].message.contains("ENOPE"));
    }

    #[test]
    fn errno_names_and_numbers() {
        for (name, errno) in [
            ("EIO", Errno::EIO),
            ("ENOSPC", Errno::ENOSPC),
            ("EDQUOT", Errno::EDQUOT),
            ("ESTALE", Errno::ESTALE),
            ("EACCES", Errno::EACCES),
            ("EPERM", Errno::EPERM),
            ("ETIMEDOUT", Errno::ETIMEDOUT),
            ("EWOULDBLOCK", Errno::EAGAIN),
            ("5", Errno::EIO),
        ] {
            assert_eq!(parse_errno(name), Ok(errno), "errno {name}");
        }
        assert!(parse_errno("eio").is_err());
        assert!(parse_errno("0").is_err());
    }

    #[test]
    fn first_matching_rule_wins() {
        let (rules, _) = parse_rules("write a* errno=EIO\nwrite * errno=ENOSPC\n");
        let rule = first_match(&rules, Op::Write, &["a/b"]).unwrap();
        assert_eq!(rule.action, Action::Errno(Errno::EIO));
        let rule = first_match(&rules, Op::Write, &["b"]).unwrap();
        assert_eq!(rule.action, Action::Errno(Errno::ENOSPC));
        assert!(first_match(&rules, Op::Read, &["a"]).is_none());
    }

    #[test]
    fn unknown_path_matches_only_star() {
        let (rules, _) = parse_rules("read a* errno=EIO\nread * errno=ENOSPC\n");
        let rule = first_match(&rules, Op::Read, &[]).unwrap();
        assert_eq!(rule.action, Action::Errno(Errno::ENOSPC));
    }

    #[test]
    fn rule_display_round_trips() {
        let (rules, errors) =
            parse_rules("read,write a* errno=EIO\n* * delay=50ms\nmkdir x hang\n* * full\n");
        assert!(errors.is_empty());
        for rule in rules {
            assert_eq!(parse_rule(&rule.to_string()), Ok(rule.clone()), "{rule}");
        }
    }
}
