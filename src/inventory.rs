//! The inventory: the hosts RUNE may act on, their groups and how to reach them. Targets come only from here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

static HOST_NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$").unwrap_or_else(|_| unreachable!()));
static GROUP_NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$").unwrap_or_else(|_| unreachable!()));
/// Host names and IPv4/IPv6 literals: no brackets, commas, wildcards or spaces (they would corrupt known_hosts).
static ADDRESS_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9:][A-Za-z0-9.:-]{0,252}$").unwrap_or_else(|_| unreachable!()));
/// EC2 instance ids (`i-` and 8 or 17 hex digits) and hybrid managed instance ids (`mi-` and 17 hex digits).
static INSTANCE_ID_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(i-([0-9a-f]{8}|[0-9a-f]{17})|mi-[0-9a-f]{17})$").unwrap_or_else(|_| unreachable!())
});
/// AWS region names (`us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`).
static REGION_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$").unwrap_or_else(|_| unreachable!()));
/// SSM document names (the API's own pattern), or a document ARN.
static DOCUMENT_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([a-zA-Z0-9_.-]{3,128}|arn:aws[a-z-]*:ssm:[a-z0-9-]+:[0-9]{12}:document/[a-zA-Z0-9_.-]{3,128})$")
        .unwrap_or_else(|_| unreachable!())
});
/// S3 bucket names (general purpose buckets: 3–63 of lowercase letters, digits, dots and hyphens).
static BUCKET_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$").unwrap_or_else(|_| unreachable!()));
/// S3 key prefixes RUNE writes under: `/`-separated segments of `[A-Za-z0-9_.-]`, at most 200 characters (the
/// agent appends `<command id>/<instance id>/…`; no characters S3 or a URL would need to escape).
static KEY_PREFIX_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$").unwrap_or_else(|_| unreachable!()));
/// Document versions: a number, `$LATEST` or `$DEFAULT`.
static DOCUMENT_VERSION_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([1-9][0-9]{0,8}|\$LATEST|\$DEFAULT)$").unwrap_or_else(|_| unreachable!()));
static USER_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z_][a-z0-9_.-]{0,31}\$?$").unwrap_or_else(|_| unreachable!()));

/// The inventory used when no file is given: this machine, run as a local subprocess.
pub const EMBEDDED_DEFAULT: &str = "\
# Embedded default inventory: only this machine, reached as a local subprocess.
hosts:
  localhost:
    transport: local
    groups: [local]
";

/// How a host is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// A subprocess on the machine running RUNE.
    Local,
    /// OpenSSH-compatible server, through russh.
    Ssh,
    /// AWS Systems Manager Run Command (the host's `ssm` section names the managed instance).
    Ssm,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Local => "local",
            TransportKind::Ssh => "ssh",
            TransportKind::Ssm => "ssm",
        })
    }
}

/// What to do with a host key that is not in known_hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// Refuse unknown and changed keys (the default).
    #[default]
    Strict,
    /// Record an unknown key on first use; still refuse a changed key. Explicit opt-in only.
    AcceptNew,
}

/// Settings shared by all hosts unless a host overrides them (raw form).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DefaultsConfig {
    pub transport: Option<TransportKind>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub host_key_policy: Option<HostKeyPolicy>,
    pub sudo: Option<SudoSetting>,
    /// Where `rune plugin bundle` was installed, for `sudo: installed` (default [`crate::installed::DEFAULT_DIR`]).
    pub installed_dir: Option<String>,
    pub connect_timeout_s: Option<u64>,
    /// Region and document for every host's `ssm` section that does not name its own.
    pub ssm: Option<SsmDefaultsConfig>,
}

/// `defaults.ssm` as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SsmDefaultsConfig {
    pub region: Option<String>,
    pub document: Option<String>,
    pub document_version: Option<String>,
    pub output_s3_bucket: Option<String>,
    pub output_s3_key_prefix: Option<String>,
    pub output_s3_region: Option<String>,
}

/// A host's `ssm` section as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SsmHostConfig {
    pub instance_id: String,
    pub region: Option<String>,
    pub document: Option<String>,
    pub document_version: Option<String>,
    pub output_s3_bucket: Option<String>,
    pub output_s3_key_prefix: Option<String>,
    pub output_s3_region: Option<String>,
}

/// How the SSM transport reaches a host: the managed instance, and where its API lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SsmTarget {
    /// `i-…` (EC2) or `mi-…` (hybrid activation).
    pub instance_id: String,
    /// None: the SDK's own (environment, profile).
    pub region: Option<String>,
    /// The Run Command document; `AWS-RunShellScript` unless set.
    pub document: String,
    /// The document version to run (a number, `$LATEST`, `$DEFAULT`); None: the document's default version.
    pub document_version: Option<String>,
    /// Where the agent uploads the full output; None: only the inline output (24,000 characters) comes back.
    pub output: Option<S3Output>,
}

impl SsmTarget {
    /// What hosts must share to go out in one `SendCommand`: region, document and version, output bucket.
    pub fn command_key(&self) -> (Option<String>, String, Option<String>, Option<S3Output>) {
        (self.region.clone(), self.document.clone(), self.document_version.clone(), self.output.clone())
    }
}

/// The S3 output bucket of SSM runs (`SendCommand`'s `OutputS3BucketName`, `OutputS3KeyPrefix`,
/// `OutputS3Region`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct S3Output {
    pub bucket: String,
    /// Without leading or trailing `/`; None: the bucket's root.
    pub key_prefix: Option<String>,
    /// The bucket's region; None: the instance's (the host's `ssm.region`, else the SDK's own).
    pub region: Option<String>,
}

/// The document used when neither the host nor the defaults name one.
pub const DEFAULT_SSM_DOCUMENT: &str = "AWS-RunShellScript";

/// One host as written (raw form).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub address: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub host_key_policy: Option<HostKeyPolicy>,
    pub transport: Option<TransportKind>,
    pub sudo: Option<SudoSetting>,
    pub installed_dir: Option<String>,
    pub connect_timeout_s: Option<u64>,
    /// The managed instance behind this host, for `transport: ssm` (or `--use-ssm`).
    pub ssm: Option<SsmHostConfig>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// `sudo` as written: `true`, `false` or `installed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SudoSetting {
    Off,
    Shell,
    Installed,
}

impl<'de> Deserialize<'de> for SudoSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SudoSetting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or `installed`")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<SudoSetting, E> {
                Ok(if v { SudoSetting::Shell } else { SudoSetting::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SudoSetting, E> {
                match v {
                    "installed" => Ok(SudoSetting::Installed),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// How a host runs plugins that declare `needs_root` when RUNE does not log in as root (docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sudo {
    /// No sudo: such a plugin is `precondition_failed` before connecting.
    Off,
    /// `sudo -n bash`, the runner and the plugin on its stdin (the plugin travels with the run): root for RUNE's
    /// user, one sudoers line for everything.
    Shell,
    /// `sudo -n <dir>/run <plugin>`: the plugins installed on the host (`rune plugin bundle`), one sudoers line
    /// per plugin.
    Installed(PathBuf),
}

impl Sudo {
    pub fn is_off(&self) -> bool {
        *self == Sudo::Off
    }
}

/// `false`, `true`, or `{"installed": "<dir>"}`.
impl Serialize for Sudo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Sudo::Off => s.serialize_bool(false),
            Sudo::Shell => s.serialize_bool(true),
            Sudo::Installed(dir) => {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("installed", dir)?;
                map.end()
            }
        }
    }
}

/// The inventory file as written (raw form).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InventoryConfig {
    #[serde(default)]
    pub defaults: DefaultsConfig,
    #[serde(default)]
    pub hosts: BTreeMap<String, HostConfig>,
}

/// A validated host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub key: Option<PathBuf>,
    pub known_hosts: PathBuf,
    pub host_key_policy: HostKeyPolicy,
    pub transport: TransportKind,
    /// How plugins that declare `needs_root` run when the login user is not root.
    pub sudo: Sudo,
    #[serde(rename = "connect_timeout_s", serialize_with = "serialize_secs")]
    pub connect_timeout: Duration,
    /// The managed instance, when the host has an `ssm` section.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssm: Option<SsmTarget>,
    pub groups: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

impl Host {
    /// This host reached through `transport` instead (`--use-ssm`, a rule's `transport: ssm`). Only SSM can stand
    /// in for a host's own transport, and only with an `ssm` section: `local` would run on RUNE's machine while
    /// reporting the host's name, and SSH needs an address and user the host may not have. None otherwise (its
    /// own transport is always fine).
    pub fn via(&self, transport: TransportKind) -> Option<Host> {
        match transport {
            t if t == self.transport => Some(self.clone()),
            TransportKind::Ssm if self.ssm.is_some() => Some(Host { transport, ..self.clone() }),
            _ => None,
        }
    }
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// A problem in the inventory file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("{path}: cannot read: {message}")]
    Read { path: String, message: String },
    #[error("{path}:{line}:{column}: {message}")]
    Parse { path: String, line: u64, column: u64, message: String },
    #[error("{path}: host `{host}`: {message}")]
    Host { path: String, host: String, message: String },
}

/// The most characters of a host name, and of a message, in an [`InventoryError`]: errors quote the file, and a
/// name or value in it may be a megabyte long.
const NAME_CHARS: usize = 80;
const MESSAGE_CHARS: usize = 1024;

/// `text` cut to `max` characters, with `…` when cut.
fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", text.get(..end).unwrap_or_default()),
        None => text.to_owned(),
    }
}

/// Why a target selection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("unknown host `{0}`: targets must be listed in the inventory")]
    UnknownHost(String),
    #[error("unknown group `{0}`")]
    UnknownGroup(String),
    #[error("no target given: use --host, --hosts or --group")]
    Empty,
}

/// Validates a host's `ssm` section over the defaults' (None: the host has none).
fn ssm_target(host: Option<&SsmHostConfig>, defaults: Option<&SsmDefaultsConfig>) -> Result<Option<SsmTarget>, String> {
    let Some(h) = host else { return Ok(None) };
    if !INSTANCE_ID_RE.is_match(&h.instance_id) {
        return Err(format!(
            "ssm.instance_id `{}` is not an instance id (`i-` + 8 or 17 hex digits, or `mi-` + 17)",
            h.instance_id
        ));
    }
    let region = h.region.clone().or_else(|| defaults.and_then(|d| d.region.clone()));
    if let Some(r) = region.as_deref().filter(|r| !REGION_RE.is_match(r)) {
        return Err(format!("ssm.region `{r}` is not a region name (like `eu-west-1`)"));
    }
    let document = h
        .document
        .clone()
        .or_else(|| defaults.and_then(|d| d.document.clone()))
        .unwrap_or_else(|| DEFAULT_SSM_DOCUMENT.to_owned());
    if !DOCUMENT_RE.is_match(&document) {
        return Err(format!("ssm.document `{document}` is not a document name or ARN"));
    }
    let or_default = |own: &Option<String>, default: fn(&SsmDefaultsConfig) -> &Option<String>| {
        own.clone().or_else(|| defaults.and_then(|d| default(d).clone()))
    };
    let document_version = or_default(&h.document_version, |d| &d.document_version);
    if let Some(v) = document_version.as_deref().filter(|v| !DOCUMENT_VERSION_RE.is_match(v)) {
        return Err(format!("ssm.document_version `{v}` is not a version (a number, `$LATEST` or `$DEFAULT`)"));
    }
    let key_prefix = or_default(&h.output_s3_key_prefix, |d| &d.output_s3_key_prefix);
    let output_region = or_default(&h.output_s3_region, |d| &d.output_s3_region);
    let output = match or_default(&h.output_s3_bucket, |d| &d.output_s3_bucket) {
        None if key_prefix.is_some() || output_region.is_some() => {
            return Err("ssm.output_s3_key_prefix and ssm.output_s3_region need ssm.output_s3_bucket".into());
        }
        None => None,
        Some(bucket) => {
            if !BUCKET_RE.is_match(&bucket) || bucket.contains("..") {
                return Err(format!("ssm.output_s3_bucket `{bucket}` is not an S3 bucket name"));
            }
            let key_prefix = key_prefix.map(|p| p.trim_matches('/').to_owned());
            if let Some(p) = key_prefix.as_deref().filter(|p| p.len() > 200 || !KEY_PREFIX_RE.is_match(p)) {
                return Err(format!(
                    "ssm.output_s3_key_prefix `{p}` must be `/`-separated segments of [A-Za-z0-9_.-], at most 200 \
                     characters"
                ));
            }
            if let Some(r) = output_region.as_deref().filter(|r| !REGION_RE.is_match(r)) {
                return Err(format!("ssm.output_s3_region `{r}` is not a region name (like `eu-west-1`)"));
            }
            Some(S3Output { bucket, key_prefix, region: output_region })
        }
    };
    Ok(Some(SsmTarget { instance_id: h.instance_id.clone(), region, document, document_version, output }))
}

/// The validated inventory.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    hosts: BTreeMap<String, Arc<Host>>,
    source: String,
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"))
}

impl Inventory {
    /// The embedded default (localhost, local transport).
    pub fn embedded_default() -> Result<Inventory, Vec<InventoryError>> {
        Inventory::parse(EMBEDDED_DEFAULT, "<embedded default inventory>", None)
    }

    /// Loads a YAML inventory file. Relative key and known_hosts paths are relative to the file's folder.
    pub fn load(path: &Path) -> Result<Inventory, Vec<InventoryError>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![InventoryError::Read { path: path.display().to_string(), message: e.to_string() }])?;
        Inventory::parse(&text, &path.display().to_string(), path.parent())
    }

    /// Parses and validates inventory text; every problem is reported.
    pub fn parse(text: &str, source: &str, base: Option<&Path>) -> Result<Inventory, Vec<InventoryError>> {
        let options = serde_saphyr::options! { strict_booleans: true, budget: yaml_budget() };
        let raw: InventoryConfig = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
            vec![InventoryError::Parse {
                path: source.to_owned(),
                line,
                column,
                message: excerpt(e.to_string().lines().next().unwrap_or("invalid inventory"), MESSAGE_CHARS),
            }]
        })?;
        let resolve = |p: &Path| -> PathBuf {
            let expanded = match p.strip_prefix("~") {
                Ok(rest) => home().join(rest),
                Err(_) => p.to_owned(),
            };
            match base {
                Some(b) if expanded.is_relative() => b.join(expanded),
                _ => expanded,
            }
        };
        let d = &raw.defaults;
        let mut errors = Vec::new();
        let mut hosts = BTreeMap::new();
        for (name, h) in &raw.hosts {
            let mut fail = |message: String| {
                errors.push(InventoryError::Host {
                    path: source.to_owned(),
                    host: excerpt(name, NAME_CHARS),
                    message: excerpt(&message, MESSAGE_CHARS),
                })
            };
            if !HOST_NAME_RE.is_match(name) {
                fail(format!("host name must match {}", HOST_NAME_RE.as_str()));
                continue;
            }
            let transport = h.transport.or(d.transport).unwrap_or(TransportKind::Ssh);
            let address = h.address.clone().unwrap_or_else(|| name.clone());
            if !ADDRESS_RE.is_match(&address) {
                fail(format!("address `{address}` must be a host name or an IP address ({})", ADDRESS_RE.as_str()));
                continue;
            }
            // Explicit beats magic: with no user in the file, the operator's own login name, never a guessed `root`.
            let user = match h.user.clone().or_else(|| d.user.clone()).or_else(|| std::env::var("USER").ok()) {
                Some(u) => u,
                None if transport == TransportKind::Ssh => {
                    fail("no `user` set (here or in defaults) and $USER is unset".into());
                    continue;
                }
                None => String::from("-"),
            };
            if transport == TransportKind::Ssh && !USER_RE.is_match(&user) {
                fail(format!("user `{user}` is not a valid login name"));
                continue;
            }
            let port = h.port.or(d.port).unwrap_or(22);
            if port == 0 {
                fail("port must be 1..=65535".into());
                continue;
            }
            let timeout = h.connect_timeout_s.or(d.connect_timeout_s).unwrap_or(10);
            if timeout == 0 || timeout > 600 {
                fail("connect_timeout_s must be within 1..=600".into());
                continue;
            }
            let sudo = match h.sudo.or(d.sudo).unwrap_or(SudoSetting::Off) {
                SudoSetting::Off | SudoSetting::Shell if h.installed_dir.is_some() => {
                    fail("`installed_dir` is only used with `sudo: installed`".into());
                    continue;
                }
                SudoSetting::Off => Sudo::Off,
                SudoSetting::Shell => Sudo::Shell,
                SudoSetting::Installed => {
                    let dir = h.installed_dir.as_deref().or(d.installed_dir.as_deref());
                    match crate::installed::check_dir(dir.unwrap_or(crate::installed::DEFAULT_DIR)) {
                        Ok(dir) => Sudo::Installed(dir),
                        Err(message) => {
                            fail(format!("installed_dir: {message}"));
                            continue;
                        }
                    }
                }
            };
            let mut bad_group = false;
            for g in &h.groups {
                if !GROUP_NAME_RE.is_match(g) {
                    fail(format!("group `{g}` must match {}", GROUP_NAME_RE.as_str()));
                    bad_group = true;
                }
            }
            if bad_group {
                continue;
            }
            let ssm = match ssm_target(h.ssm.as_ref(), d.ssm.as_ref()) {
                Ok(t) => t,
                Err(message) => {
                    fail(message);
                    continue;
                }
            };
            if transport == TransportKind::Ssm && ssm.is_none() {
                fail("`transport: ssm` needs an `ssm` section with the `instance_id`".into());
                continue;
            }
            let key = h.key.as_deref().or(d.key.as_deref()).map(resolve);
            let known_hosts = h
                .known_hosts
                .as_deref()
                .or(d.known_hosts.as_deref())
                .map(resolve)
                .unwrap_or_else(|| home().join(".ssh/known_hosts"));
            hosts.insert(
                name.clone(),
                Arc::new(Host {
                    name: name.clone(),
                    address,
                    port,
                    user,
                    key,
                    known_hosts,
                    host_key_policy: h.host_key_policy.or(d.host_key_policy).unwrap_or_default(),
                    transport,
                    sudo,
                    connect_timeout: Duration::from_secs(timeout),
                    ssm,
                    groups: h.groups.clone(),
                    tags: h.tags.clone(),
                }),
            );
        }
        if errors.is_empty() { Ok(Inventory { hosts, source: source.to_owned() }) } else { Err(errors) }
    }

    /// Where this inventory came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every host, by name.
    pub fn hosts(&self) -> impl Iterator<Item = &Arc<Host>> {
        self.hosts.values()
    }

    /// One host by its inventory name.
    pub fn get(&self, name: &str) -> Option<&Arc<Host>> {
        self.hosts.get(name)
    }

    /// Resolves a target selection into known hosts (deduplicated, in the order given, groups by name).
    /// Any unknown name refuses the whole selection: nothing is guessed.
    pub fn select(&self, hosts: &[String], groups: &[String]) -> Result<Vec<Arc<Host>>, Vec<TargetError>> {
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for name in hosts {
            match self.hosts.get(name) {
                Some(h) => {
                    if seen.insert(h.name.clone()) {
                        out.push(h.clone());
                    }
                }
                None => errors.push(TargetError::UnknownHost(name.clone())),
            }
        }
        for group in groups {
            let members: Vec<&Arc<Host>> =
                self.hosts.values().filter(|h| h.groups.iter().any(|g| g == group)).collect();
            if members.is_empty() {
                errors.push(TargetError::UnknownGroup(group.clone()));
            }
            for h in members {
                if seen.insert(h.name.clone()) {
                    out.push(h.clone());
                }
            }
        }
        if errors.is_empty() && out.is_empty() {
            errors.push(TargetError::Empty);
        }
        if errors.is_empty() { Ok(out) } else { Err(errors) }
    }
}

/// The YAML parser's budget, tighter than its default in one place: anchors may retain at most 50,000 events
/// (default 1,000,000, about 150 MB: a 1.4 KB alias bomb held that much before the parser refused it). No
/// hand-written configuration file comes near it.
fn yaml_budget() -> Option<serde_saphyr::Budget> {
    serde_saphyr::budget! { max_recorded_anchor_events: 50_000 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INV: &str = "
defaults:
  user: ops
  key: keys/id_ed25519
  known_hosts: known_hosts
hosts:
  web-1:
    address: 127.0.0.1
    port: 2201
    groups: [web]
  web-2:
    address: 127.0.0.1
    port: 2202
    groups: [web]
  db-1:
    address: 127.0.0.1
    user: dba
    host_key_policy: accept-new
";

    #[test]
    fn parses_and_applies_defaults() {
        let inv = Inventory::parse(INV, "inv.yaml", Some(Path::new("/etc/rune"))).expect("valid");
        let db = inv.get("db-1").expect("db-1");
        assert_eq!(db.user, "dba");
        assert_eq!(db.port, 22);
        assert_eq!(db.key.as_deref(), Some(Path::new("/etc/rune/keys/id_ed25519")));
        assert_eq!(db.host_key_policy, HostKeyPolicy::AcceptNew);
        assert_eq!(inv.get("web-1").expect("web-1").host_key_policy, HostKeyPolicy::Strict);
    }

    #[test]
    fn unknown_targets_are_refused() {
        let inv = Inventory::parse(INV, "inv.yaml", None).expect("valid");
        let sel = inv.select(&["db-1".into()], &["web".into()]).expect("valid selection");
        assert_eq!(sel.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["db-1", "web-1", "web-2"]);
        let err = inv.select(&["db-1".into(), "evil.example".into()], &["nope".into()]).expect_err("refused");
        assert_eq!(err.len(), 2);
        assert_eq!(inv.select(&[], &[]).expect_err("empty"), vec![TargetError::Empty]);
    }

    #[test]
    fn addresses_that_could_corrupt_known_hosts_are_refused() {
        for bad in ["a,b", "*.example.com", "[::1]:22", "host name", "-oProxyCommand=x"] {
            let text = format!("hosts:\n  h:\n    address: \"{bad}\"\n    user: ops\n");
            assert!(Inventory::parse(&text, "inv.yaml", None).is_err(), "{bad} must be refused");
        }
        let ok = "hosts:\n  h:\n    address: \"::1\"\n    user: ops\n";
        assert!(Inventory::parse(ok, "inv.yaml", None).is_ok());
    }

    #[test]
    fn errors_quote_long_names_and_values_in_part() {
        // Regression (hostile-input property tests): a long host name or unknown `transport` value came back whole.
        let long = "x".repeat(100_000);
        for text in [format!("hosts:\n  {long}:\n    user: ops\n"), format!("hosts:\n  h:\n    transport: {long}\n")] {
            let errors = Inventory::parse(&text, "inv.yaml", None).expect_err("invalid");
            for e in errors {
                assert!(e.to_string().len() < 2048, "an error of {} bytes", e.to_string().len());
            }
        }
    }

    #[test]
    fn sudo_is_off_true_or_installed_in_a_checked_dir() {
        let text = "
defaults:
  user: ops
  sudo: installed
hosts:
  a: {}
  b: { installed_dir: /opt/rune-plugins }
  c: { sudo: true }
  d: { sudo: false }
";
        let inv = Inventory::parse(text, "inv.yaml", None).expect("valid");
        let sudo = |h: &str| inv.get(h).expect(h).sudo.clone();
        assert_eq!(sudo("a"), Sudo::Installed(PathBuf::from(crate::installed::DEFAULT_DIR)));
        assert_eq!(sudo("b"), Sudo::Installed(PathBuf::from("/opt/rune-plugins")));
        assert_eq!((sudo("c"), sudo("d")), (Sudo::Shell, Sudo::Off));
        assert_eq!(
            serde_json::to_value(sudo("b")).expect("json"),
            serde_json::json!({"installed": "/opt/rune-plugins"})
        );
        for (bad, why) in [
            ("sudo: yes", "true, false or `installed`"),
            ("sudo: installed\n    installed_dir: relative/dir", "installed_dir"),
            ("sudo: installed\n    installed_dir: /opt/../etc", "installed_dir"),
            ("sudo: installed\n    installed_dir: \"/opt/x; id\"", "installed_dir"),
            ("sudo: true\n    installed_dir: /opt/rune", "only used with `sudo: installed`"),
        ] {
            let text = format!("hosts:\n  h:\n    user: ops\n    {bad}\n");
            let err = Inventory::parse(&text, "inv.yaml", None).expect_err(bad);
            assert!(err[0].to_string().contains(why), "{bad}: {err:?}");
        }
    }

    #[test]
    fn reports_position_of_bad_yaml() {
        let err = Inventory::parse("hosts:\n  a:\n    colour: red\n", "inv.yaml", None).expect_err("invalid");
        match &err[0] {
            InventoryError::Parse { line, .. } => assert_eq!(*line, 3),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ssm_sections_are_validated_and_take_the_defaults() {
        let text = "
defaults:
  user: ops
  ssm: { region: eu-west-1, output_s3_bucket: rune-output, output_s3_key_prefix: /runs/prod/ }
hosts:
  web-1:
    transport: ssm
    ssm: { instance_id: i-0123456789abcdef0 }
  web-2:
    ssm: { instance_id: mi-0123456789abcdef0, region: us-east-1, document: Rune-Run, document_version: 3 }
";
        let inv = Inventory::parse(text, "inv.yaml", None).expect("valid");
        let w1 = inv.get("web-1").expect("web-1");
        assert_eq!(w1.transport, TransportKind::Ssm);
        let t = w1.ssm.as_ref().expect("ssm");
        assert_eq!((t.region.as_deref(), t.document.as_str()), (Some("eu-west-1"), DEFAULT_SSM_DOCUMENT));
        let output = S3Output { bucket: "rune-output".into(), key_prefix: Some("runs/prod".into()), region: None };
        assert_eq!((t.document_version.as_deref(), t.output.as_ref()), (None, Some(&output)));
        let w2 = inv.get("web-2").expect("web-2");
        assert_eq!(w2.transport, TransportKind::Ssh, "an ssm section alone does not switch the transport");
        assert_eq!(w2.via(TransportKind::Ssm).map(|h| h.transport), Some(TransportKind::Ssm));
        assert_eq!(w2.ssm.as_ref().map(|t| t.document.as_str()), Some("Rune-Run"));
        assert_eq!(w2.ssm.as_ref().and_then(|t| t.document_version.as_deref()), Some("3"));
        for (bad, why) in [
            ("transport: ssm", "needs an `ssm` section"),
            ("ssm: { instance_id: i-123 }", "not an instance id"),
            ("ssm: { instance_id: \"i-0123456789abcdef0; rm\" }", "not an instance id"),
            ("ssm: { instance_id: i-0123456789abcdef0, region: \"us-east-1.evil\" }", "not a region"),
            ("ssm: { instance_id: i-0123456789abcdef0, document: \"a b\" }", "not a document"),
            ("ssm: { instance_id: i-0123456789abcdef0, document_version: \"1; x\" }", "not a version"),
            ("ssm: { instance_id: i-0123456789abcdef0, output_s3_bucket: Bad_Bucket }", "not an S3 bucket"),
            ("ssm: { instance_id: i-0123456789abcdef0, output_s3_bucket: a..b }", "not an S3 bucket"),
            ("ssm: { instance_id: i-0123456789abcdef0, output_s3_key_prefix: runs }", "need ssm.output_s3_bucket"),
            (
                "ssm: { instance_id: i-0123456789abcdef0, output_s3_bucket: ok-b, output_s3_key_prefix: \"a b\" }",
                "segments",
            ),
            (
                "ssm: { instance_id: i-0123456789abcdef0, output_s3_bucket: ok-b, output_s3_key_prefix: \"a//b\" }",
                "segments",
            ),
            (
                "ssm: { instance_id: i-0123456789abcdef0, output_s3_bucket: ok-b, output_s3_region: mars }",
                "not a region",
            ),
        ] {
            let text = format!("hosts:\n  h:\n    user: ops\n    {bad}\n");
            let err = Inventory::parse(&text, "inv.yaml", None).expect_err(bad);
            assert!(err[0].to_string().contains(why), "{bad}: {}", err[0]);
        }
        let plain = Inventory::parse(INV, "inv.yaml", None).expect("valid");
        assert_eq!(plain.get("web-1").and_then(|h| h.via(TransportKind::Ssm)), None, "no ssm section");
    }

    #[test]
    fn embedded_default_has_localhost() {
        let inv = Inventory::embedded_default().expect("valid");
        assert_eq!(inv.get("localhost").expect("localhost").transport, TransportKind::Local);
    }
}
